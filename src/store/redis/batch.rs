//! Batching: the decisions a lane asks of one master while its previous call is out go together
//! as the next call, one script call deciding many keys.
//!
//! Each [lane](super::lanes) pool (a gRPC thread's pool for one master, or for the single server)
//! has a [`Batcher`]: a queue and one task on the lane's runtime that sends it. A decision encodes
//! its slot run ([`Encoded`]), queues it and wakes the task, which takes everything queued, sends
//! it as one `EVALSHA`, and hands each decision its share of the reply; decisions that arrive
//! meanwhile wait in the queue and go out together as soon as the call returns. No timer is
//! involved: a lone decision is sent as soon as the task runs (the next turn of the thread's
//! scheduler, behind what was already ready), and a batch is exactly what piled up during one
//! round trip, so the batches grow with the load and stay empty without it.
//!
//! Each decision stays what it was alone: the script decides the counters of each one in turn,
//! each key's decision atomic and exact, and an all-or-none group stays one group. Keys of one
//! call must be one slot's in a Cluster, so there a batch is split by slot, the calls of one batch
//! going out together. A failed call fails each of its decisions with its error (each caller then
//! takes its own fallback, through its partition's breaker); a call the master redirects
//! (`MOVED`/`ASK`) is sent again decision by decision through the cluster pool, which follows
//! redirections, as is every decision while the lane's pool has no connection. The store deadline
//! stays with the caller: a caller that gives up leaves its decision in the call (the script may
//! run anyway, as with a command timed out today) and its answer is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fred::prelude::{ClientLike, Options, Pool};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::{Notify, oneshot};

use super::error::redirected;
use super::lanes::connected;
use super::script::{self, CROSS_SLOT_SCRIPT, Encoded, SCRIPT};
use crate::store::join_all;

/// The script's refusal of a batch holding a key this node does not serve (see its header).
const NOT_LOCAL: &str = "TOLLGATE_NOT_LOCAL";

/// One decision's reply: its counters' values, in order.
pub(super) type Reply = Result<Vec<i64>, fred::error::Error>;

/// A queued decision: its slot, its encoded counters and where its reply goes.
pub(super) struct Queued {
    slot: u16,
    call: Encoded,
    reply: oneshot::Sender<Reply>,
}

/// What a lane's sender needs besides its queue.
pub(super) struct Route {
    /// The lane's pool for its master (or the single server).
    pub(super) lane: Pool,
    /// The store's own pool: the cluster pool in a Cluster, which follows redirections.
    pub(super) shared: Pool,
    pub(super) sha: String,
    /// Keys of one call must share a slot (a Cluster)...
    pub(super) clustered: bool,
    /// ... unless the Cluster runs the flagged script (`CROSS_SLOT_SCRIPT`, hash `cross_sha`):
    /// then one call takes a batch of any slots of the master.
    pub(super) cross_slot: Arc<AtomicBool>,
    pub(super) cross_sha: String,
    /// Set on a redirection, so the store rebuilds its slot table.
    pub(super) changed: Arc<AtomicBool>,
}

/// One lane's queue for one master; see the module docs.
#[derive(Default)]
pub(super) struct Batcher {
    queue: Mutex<Vec<Queued>>,
    wake: Notify,
}

impl Batcher {
    /// Queues `call` (counters of `slot`) for the lane's next script call and waits for its reply.
    pub(super) async fn decide(&self, slot: u16, call: Encoded) -> Reply {
        let (reply, answer) = oneshot::channel();
        self.queue.lock().push(Queued { slot, call, reply });
        self.wake.notify_one();
        answer
            .await
            .unwrap_or_else(|_| Err(fred::error::Error::new_canceled()))
    }

    /// The sender: forever takes what is queued and hands it to `send`, one batch at a time. Runs
    /// on the lane's runtime; the lane pool's owner aborts it.
    pub(super) async fn run<F: Future<Output = ()>>(
        self: Arc<Self>,
        send: impl Fn(Vec<Queued>) -> F,
    ) {
        loop {
            self.wake.notified().await;
            loop {
                let queued = std::mem::take(&mut *self.queue.lock());
                if queued.is_empty() {
                    break;
                }
                send(queued).await;
            }
        }
    }
}

/// Failing fast: a decision is never written again after its connection failed, since the script
/// may have run. Beyond the first write, `redirects` more follow `MOVED`/`ASK` answers (after which
/// the script has not run; fred counts a redirection's resend as more than one write).
fn options(redirects: u32) -> Options {
    Options {
        fail_fast: true,
        max_attempts: Some(1 + redirects),
        ..Options::default()
    }
}

impl Route {
    /// Sends `batch`: as one call, or in a Cluster one call per slot, all at once.
    pub(super) async fn send_all(&self, batch: Vec<Queued>) {
        if !self.clustered {
            return self.send(batch, SCRIPT, &self.sha, usize::MAX).await;
        }
        if self.cross_slot.load(Ordering::Relaxed) {
            return self
                .send(batch, CROSS_SLOT_SCRIPT, &self.cross_sha, 1)
                .await;
        }
        let mut by_slot: Vec<Vec<Queued>> = Vec::new();
        for q in batch {
            let same = |b: &&mut Vec<Queued>| b.first().is_some_and(|f| f.slot == q.slot);
            match by_slot.iter_mut().find(same) {
                Some(b) => b.push(q),
                None => by_slot.push(vec![q]),
            }
        }
        join_all(
            by_slot
                .into_iter()
                .map(|b| self.send(b, SCRIPT, &self.sha, usize::MAX)),
        )
        .await;
    }

    /// Sends `batch` as one call of `script` (of hash `sha`) through the lane's pool, its first
    /// `declared` decisions' keys declared, and each decision its share of the reply; see the
    /// module docs for failures.
    async fn send(&self, batch: Vec<Queued>, script: &'static str, sha: &str, declared: usize) {
        let Some(first) = batch.first() else {
            return;
        };
        let slot = first.slot;
        let Some(client) = connected(&self.lane) else {
            return self.one_by_one(batch).await;
        };
        let args = {
            let calls: SmallVec<[&Encoded; 8]> = batch.iter().map(|q| &q.call).collect();
            script::call_args(sha, &calls, declared)
        };
        let reply = script::eval(&client.with_options(&options(0)), slot, script, &args).await;
        match reply.and_then(|v| v.convert::<Vec<i64>>()) {
            Ok(values) => {
                let mut values = values.into_iter();
                for q in batch {
                    let mine = values.by_ref().take(q.call.reply_len()).collect();
                    let _ = q.reply.send(Ok(mine));
                }
            }
            Err(e) if redirected(&e) || e.details().starts_with(NOT_LOCAL) => {
                self.changed.store(true, Ordering::Release);
                self.one_by_one(batch).await;
            }
            Err(e) => {
                for q in batch {
                    let _ = q.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Sends each decision of `batch` alone through the store's own pool.
    async fn one_by_one(&self, batch: Vec<Queued>) {
        join_all(batch.into_iter().map(|q| async move {
            let client = self.shared.next_connected().with_options(&options(3));
            let args = script::call_args(&self.sha, &[&q.call], 1);
            let reply = script::eval(&client, q.slot, SCRIPT, &args).await;
            let _ = q.reply.send(reply.and_then(|v| v.convert::<Vec<i64>>()));
        }))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::Semaphore;
    use tokio::time::Instant;

    use super::*;

    /// A batcher whose sender records each batch's size and answers it once `gate` lets it.
    fn gated(gate: Arc<Semaphore>) -> (Arc<Batcher>, Arc<Mutex<Vec<usize>>>) {
        let batcher = Arc::new(Batcher::default());
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let sent = sizes.clone();
        tokio::spawn(batcher.clone().run(move |batch: Vec<Queued>| {
            sent.lock().push(batch.len());
            let gate = gate.clone();
            async move {
                gate.acquire().await.map(|p| p.forget()).unwrap();
                for q in batch {
                    let _ = q.reply.send(Ok(vec![1, 2, 3, 4]));
                }
            }
        }));
        (batcher, sizes)
    }

    /// With the clock paused, any timer the batcher waited on would move it (tokio advances a
    /// paused clock to the next timer whenever the runtime idles): a lone decision is sent and
    /// answered at the instant it was asked.
    #[tokio::test(start_paused = true)]
    async fn a_lone_decision_is_sent_at_once() {
        let (batcher, sizes) = gated(Arc::new(Semaphore::new(usize::MAX >> 4)));
        for _ in 0..3 {
            let asked = Instant::now();
            let reply = batcher.decide(7, Encoded::default()).await.unwrap();
            assert_eq!(reply, [1, 2, 3, 4]);
            assert_eq!(Instant::now(), asked, "no time passed");
        }
        assert_eq!(*sizes.lock(), [1, 1, 1], "each went alone");
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_asked_while_a_call_is_out_go_together_as_the_next() {
        let gate = Arc::new(Semaphore::new(0));
        let (batcher, sizes) = gated(gate.clone());
        let ask = |n: usize| {
            (0..n)
                .map(|_| {
                    let batcher = batcher.clone();
                    tokio::spawn(async move { batcher.decide(1, Encoded::default()).await })
                })
                .collect::<Vec<_>>()
        };
        // Asked in one turn of the scheduler: one call.
        let first = ask(3);
        tokio::task::yield_now().await;
        assert_eq!(*sizes.lock(), [3]);
        // Asked while it is out: queued, then sent together when it returns.
        let second = ask(5);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *sizes.lock(),
            [3],
            "nothing more is sent while a call is out"
        );
        gate.add_permits(1);
        for answer in first {
            assert!(answer.await.unwrap().is_ok());
        }
        tokio::task::yield_now().await;
        assert_eq!(*sizes.lock(), [3, 5]);
        gate.add_permits(1);
        for answer in second {
            assert!(answer.await.unwrap().is_ok());
        }
    }
}
