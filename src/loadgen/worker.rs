//! The load threads and their workers: each thread connects its share of the connections, then
//! runs its share of the workers on its own single-threaded runtime; a worker sends, waits for
//! the answer (or its timeout) and counts it, paced by the thread's pacer in an open loop.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use tokio::time::Instant;

use super::client::{self, Client};
use super::pacer::{self, Pacer};
use super::plan::share;
use super::schedule::Shared;
use super::tally::Tally;
use super::{Config, LoadgenError};

async fn connect(config: &Config) -> Result<Vec<Client>, LoadgenError> {
    let uri = client::method_uri(&config.target)?;
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let client = Client::connect(&uri)
            .await
            .map_err(|reason| LoadgenError::Connect {
                target: config.target.clone(),
                reason,
            })?;
        clients.push(client);
    }
    Ok(clients)
}

/// Sends requests until the run is over, recording into its thread's `tally` (a borrow never
/// spans an await).
async fn worker(
    shared: Arc<Shared>,
    mut client: Client,
    pacer: Rc<Pacer>,
    tally: Rc<RefCell<Tally>>,
) {
    let timeout = shared.config.timeout;
    // One timer per worker, pushed back for each request: moving a deadline later does not touch
    // the timer wheel, where a fresh `tokio::time::timeout` per request registers and removes
    // an entry every time.
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut buf = BytesMut::new();
    while let Some((i, due)) = shared.claim() {
        if shared.config.rate.is_some() {
            pacer.until_released(i).await;
        }
        let request = shared.request(i);
        deadline.as_mut().reset(Instant::now() + timeout);
        let answer = tokio::select! {
            biased;
            answer = client.call(&request, &mut buf) => Some(answer),
            () = &mut deadline => None,
        };
        let mut tally = tally.borrow_mut();
        match answer {
            Some(Ok(response)) => {
                let code = response.overall_code;
                if code == Code::Ok as i32 {
                    tally.allowed += 1;
                } else if code == Code::OverLimit as i32 {
                    tally.denied += 1;
                } else {
                    tally.error(format!("answer with overall code {code}"));
                    continue;
                }
                let micros = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(micros.max(1));
            }
            Some(Err(e)) => tally.error(e.to_string()),
            None => tally.error(format!("no answer within {timeout:?}")),
        }
    }
}

/// One load thread: connects its share of the connections and makes its histogram, reports
/// ready, waits for the common start, then runs its share of the workers on its own
/// single-threaded runtime. The workers share the thread's histogram: one per worker cost 64
/// allocations of 0.4 MB, and their first writes ran inside the measured run.
pub(super) fn load_thread(
    config: Config,
    index: usize,
    threads: usize,
    ready: tokio::sync::mpsc::Sender<Result<(), LoadgenError>>,
    go: tokio::sync::oneshot::Receiver<Arc<Shared>>,
) -> Result<Tally, LoadgenError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadgenError::Thread(e.to_string()))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut config = config;
        config.connections = share(config.connections, threads, index);
        let (clients, tally) = match (connect(&config).await, Tally::new()) {
            (Ok(clients), Ok(tally)) => (clients, Rc::new(RefCell::new(tally))),
            (Err(e), _) | (_, Err(e)) => {
                let _ = ready.send(Err(e)).await;
                return Tally::new();
            }
        };
        if ready.send(Ok(())).await.is_err() {
            return Tally::new();
        }
        drop(ready);
        let Ok(shared) = go.await else {
            return Tally::new();
        };
        let pacer = Rc::new(Pacer::default());
        let paced = shared.config.rate.map(|rate| {
            let (shared, pacer) = (shared.clone(), pacer.clone());
            tokio::task::spawn_local(async move {
                pacer::pace(&pacer, shared.start, rate, |i| shared.due(i)).await
            })
        });
        let workers = share(config.concurrency, threads, index);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let client = clients[w % clients.len()].clone();
            handles.push(tokio::task::spawn_local(worker(
                shared.clone(),
                client,
                pacer.clone(),
                tally.clone(),
            )));
        }
        let mut failed = Vec::new();
        for handle in handles {
            if let Err(e) = handle.await {
                failed.push(format!("a worker failed: {e}"));
            }
        }
        // Its schedule has ended once every worker has found no request left to claim.
        if let Some(paced) = paced {
            match paced.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(format!("the pacer's timer failed: {e}")),
                Err(e) => failed.push(format!("the pacer failed: {e}")),
            }
        }
        let mut total = Rc::try_unwrap(tally)
            .map_err(|_| LoadgenError::Thread("a worker outlived its run".into()))?
            .into_inner();
        failed.into_iter().for_each(|e| total.error(e));
        Ok(total)
    })
}
