//! Batching: the decisions a lane asks of one master while its previous call is out go together
//! as the next call, one script call deciding many keys.
//!
//! Each [lane](super::lanes) pool (a gRPC thread's pool for one master, or for the single server)
//! has a [`Batcher`]: a queue, a turn to send it, and a task on the lane's runtime. A caller
//! encodes its slot runs for the master ([`Encoded`]) and queues them. If no call of the lane is
//! out, it takes the turn and sends them itself as one `EVALSHA`, awaiting the reply in its own
//! task: a lone decision costs no wake-up beyond its reply's. Otherwise they wait in the queue.
//! When a call returns with decisions queued behind it, the turn passes to the lane's
//! task, which sends all that queued as the next call and hands each decision its share of the
//! reply, until the queue is found empty and the lane idle. A caller dropped mid-call (its
//! deadline) passes its turn the same way, so nothing queued is stranded. No timer is involved: a
//! batch is exactly what piled up during one round trip, so batches grow with the load and stay
//! empty without it.
//!
//! Each decision stays what it was alone: the script decides the counters of each one in turn,
//! each key's decision atomic and exact, and an all-or-none group stays one group. Keys of one
//! call must be one slot's in a Cluster, so there a batch is split by slot, the calls of one batch
//! going out together. A failed call fails each of its decisions with its error (each caller then
//! takes its own fallback, through its partition's breaker); a call the master redirects
//! (`MOVED`/`ASK`) is sent again decision by decision through the cluster pool, which follows
//! redirections, as is every decision while the lane's pool has no connection. The store deadline
//! stays with the caller: a caller that gives up while its decision is queued takes it out of the
//! next call, so a stall's backlog costs Redis nothing once its callers have moved on; one that
//! gives up during its call leaves its decision there (the script may run anyway, as with a
//! command timed out today) and its answer is dropped.

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

/// What sends a lane's batches: its [`Route`] (tests stand in their own).
pub(super) trait Sends: Send + Sync + 'static {
    /// Sends `batch`, answering each of its decisions.
    fn send_all(&self, batch: Vec<Queued>) -> impl Future<Output = ()> + Send;
}

/// One lane's queue for one master and who sends it; see the module docs.
pub(super) struct Batcher<S = Route> {
    lane: Mutex<Turns>,
    /// Hands the turn to the sender task ([`Batcher::run`]).
    wake: Notify,
    sends: S,
}

/// A lane's queue, and whether one of its calls is out (someone holds the turn to send).
#[derive(Default)]
struct Turns {
    queue: Vec<Queued>,
    out: bool,
}

/// The turn of a caller sending its own decisions; when its call returns, or its caller gives up
/// mid-call, the lane is idle again or what queued meanwhile goes to the sender task.
struct Turn<'a, S: Sends>(&'a Batcher<S>);

impl<S: Sends> Drop for Turn<'_, S> {
    fn drop(&mut self) {
        let mut lane = self.0.lane.lock();
        lane.out = !lane.queue.is_empty();
        if lane.out {
            drop(lane);
            self.0.wake.notify_one();
        }
    }
}

impl<S: Sends> Batcher<S> {
    pub(super) fn new(sends: S) -> Self {
        Batcher {
            lane: Mutex::default(),
            wake: Notify::new(),
            sends,
        }
    }

    /// Decides `calls` (each the counters of its slot) in the lane's next script call, queued
    /// together, and answers each in order. On an idle lane the caller sends them itself and
    /// awaits the call; otherwise they wait for the call that is out to return.
    pub(super) async fn decide(
        &self,
        calls: impl IntoIterator<Item = (u16, Encoded)>,
    ) -> SmallVec<[Reply; 4]> {
        let mut answers: SmallVec<[oneshot::Receiver<Reply>; 4]> = SmallVec::new();
        let mine = {
            let mut lane = self.lane.lock();
            for (slot, call) in calls {
                let (reply, answer) = oneshot::channel();
                lane.queue.push(Queued { slot, call, reply });
                answers.push(answer);
            }
            (!lane.out).then(|| {
                lane.out = true;
                std::mem::take(&mut lane.queue)
            })
        };
        if let Some(batch) = mine {
            let _turn = Turn(self);
            self.sends.send_all(batch).await;
        }
        let mut replies = SmallVec::new();
        for answer in answers {
            replies.push(
                answer
                    .await
                    .unwrap_or_else(|_| Err(fred::error::Error::new_canceled())),
            );
        }
        replies
    }

    /// The sender task: each time a caller's call returns with decisions queued behind it, takes
    /// the turn and sends what is queued, one batch at a time, until the lane is idle. Runs on the
    /// lane's runtime; the lane pool's owner aborts it.
    pub(super) async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            while let Some(batch) = self.next() {
                self.sends.send_all(batch).await;
            }
        }
    }

    /// What is queued, or `None` (and the lane idle) if nothing is.
    fn next(&self) -> Option<Vec<Queued>> {
        let mut lane = self.lane.lock();
        lane.queue.retain(|q| !q.reply.is_closed());
        lane.out = !lane.queue.is_empty();
        lane.out.then(|| std::mem::take(&mut lane.queue))
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

impl Sends for Route {
    /// Sends `batch`: as one call, or in a Cluster one call per slot, all at once.
    async fn send_all(&self, batch: Vec<Queued>) {
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
}

impl Route {
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
            let reply = alone(&self.shared, &self.sha, q.slot, &q.call, 3).await;
            let _ = q.reply.send(reply);
        }))
        .await;
    }
}

/// Decides `call` (the counters of `slot`) in a script call of its own through `pool`, following
/// up to `redirects` `MOVED`/`ASK` answers (see [`options`]).
pub(super) async fn alone(
    pool: &Pool,
    sha: &str,
    slot: u16,
    call: &Encoded,
    redirects: u32,
) -> Reply {
    let client = pool.next_connected().with_options(&options(redirects));
    let args = script::call_args(sha, &[call], 1);
    let reply = script::eval(&client, slot, SCRIPT, &args).await;
    reply.and_then(|v| v.convert::<Vec<i64>>())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;
    use tokio::time::{Instant, timeout};

    use super::*;

    /// A lane's route stand-in: records each batch's size, and answers it once `gate` lets it.
    struct Gated {
        gate: Arc<Semaphore>,
        sizes: Arc<Mutex<Vec<usize>>>,
    }

    impl Sends for Gated {
        fn send_all(&self, batch: Vec<Queued>) -> impl Future<Output = ()> + Send {
            self.sizes.lock().push(batch.len());
            let gate = self.gate.clone();
            async move {
                gate.acquire().await.map(|p| p.forget()).unwrap();
                for q in batch {
                    let _ = q.reply.send(Ok(vec![1, 2, 3, 4]));
                }
            }
        }
    }

    /// A batcher sending through [`Gated`], and the sizes of its batches. Its sender task runs
    /// only if the test spawns it.
    fn gated(gate: &Arc<Semaphore>) -> (Arc<Batcher<Gated>>, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = gate.clone();
        let batcher = Arc::new(Batcher::new(Gated {
            gate,
            sizes: sizes.clone(),
        }));
        (batcher, sizes)
    }

    async fn ask(batcher: &Batcher<Gated>) -> Reply {
        let mut replies = batcher.decide([(1, Encoded::default())]).await;
        assert_eq!(replies.len(), 1);
        replies.remove(0)
    }

    /// Tasks asking one decision each, spawned in one turn of the scheduler.
    fn ask_from_tasks(
        batcher: &Arc<Batcher<Gated>>,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Reply>> {
        (0..n)
            .map(|_| {
                let batcher = batcher.clone();
                tokio::spawn(async move { ask(&batcher).await })
            })
            .collect()
    }

    /// With the clock paused, any timer the batcher waited on would move it (tokio advances a
    /// paused clock to the next timer whenever the runtime idles): a lone decision is sent and
    /// answered at the instant it was asked.
    #[tokio::test(start_paused = true)]
    async fn a_lone_decision_is_sent_at_once() {
        let (batcher, sizes) = gated(&Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)));
        tokio::spawn(batcher.clone().run());
        for _ in 0..3 {
            let asked = Instant::now();
            let reply = ask(&batcher).await.unwrap();
            assert_eq!(reply, [1, 2, 3, 4]);
            assert_eq!(Instant::now(), asked, "no time passed");
        }
        assert_eq!(*sizes.lock(), [1, 1, 1], "each went alone");
    }

    /// On an idle lane the caller's own task sends: no sender task runs here, and each decision
    /// (or a caller's several, together) is answered at once.
    #[tokio::test(start_paused = true)]
    async fn the_caller_sends_on_an_idle_lane() {
        let (batcher, sizes) = gated(&Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)));
        for _ in 0..2 {
            let reply = timeout(Duration::from_secs(1), ask(&batcher)).await;
            assert_eq!(reply.expect("sent by its caller").unwrap(), [1, 2, 3, 4]);
        }
        let calls = (0..3).map(|slot| (slot, Encoded::default()));
        let replies = timeout(Duration::from_secs(1), batcher.decide(calls)).await;
        assert_eq!(replies.expect("sent by its caller").len(), 3);
        assert_eq!(*sizes.lock(), [1, 1, 3], "a caller's decisions go together");
    }

    #[tokio::test(start_paused = true)]
    async fn decisions_asked_while_a_call_is_out_go_together_as_the_next() {
        let gate = Arc::new(Semaphore::new(0));
        let (batcher, sizes) = gated(&gate);
        tokio::spawn(batcher.clone().run());
        // The first goes at once, alone; the others of its turn queue behind its call.
        let first = ask_from_tasks(&batcher, 3);
        tokio::task::yield_now().await;
        assert_eq!(*sizes.lock(), [1]);
        let second = ask_from_tasks(&batcher, 5);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *sizes.lock(),
            [1],
            "nothing more is sent while a call is out"
        );
        // When it returns, all that queued goes as one call, and what queues meanwhile as the next.
        gate.add_permits(1);
        tokio::task::yield_now().await;
        let third = ask_from_tasks(&batcher, 2);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*sizes.lock(), [1, 7]);
        gate.add_permits(2);
        for answer in first.into_iter().chain(second).chain(third) {
            assert!(answer.await.unwrap().is_ok());
        }
        assert_eq!(*sizes.lock(), [1, 7, 2]);
        // Then the lane is idle again: the next goes at once, from its caller.
        gate.add_permits(1);
        assert!(ask(&batcher).await.is_ok());
        assert_eq!(*sizes.lock(), [1, 7, 2, 1]);
    }

    /// A caller that gives up while its own call is out (the store deadline) leaves nothing
    /// stranded: what queued behind its call goes out next.
    #[tokio::test(start_paused = true)]
    async fn a_caller_giving_up_mid_call_passes_its_turn() {
        let gate = Arc::new(Semaphore::new(0));
        let (batcher, sizes) = gated(&gate);
        tokio::spawn(batcher.clone().run());
        let impatient = {
            let batcher = batcher.clone();
            tokio::spawn(async move { timeout(Duration::from_millis(50), ask(&batcher)).await })
        };
        tokio::task::yield_now().await;
        let queued = ask_from_tasks(&batcher, 2);
        tokio::task::yield_now().await;
        assert_eq!(*sizes.lock(), [1]);
        assert!(impatient.await.unwrap().is_err(), "gave up at its deadline");
        gate.add_permits(1);
        for answer in queued {
            let reply = timeout(Duration::from_secs(1), answer).await;
            assert!(reply.expect("not stranded").unwrap().is_ok());
        }
        assert_eq!(*sizes.lock(), [1, 2]);
    }

    /// A decision whose caller gave up while it was queued is left out of the next call; fails if
    /// a stall's backlog of abandoned decisions is still sent.
    #[tokio::test(start_paused = true)]
    async fn a_decision_abandoned_in_the_queue_is_not_sent() {
        let gate = Arc::new(Semaphore::new(0));
        let (batcher, sizes) = gated(&gate);
        tokio::spawn(batcher.clone().run());
        let first = ask_from_tasks(&batcher, 1);
        tokio::task::yield_now().await;
        let impatient = {
            let batcher = batcher.clone();
            tokio::spawn(async move { timeout(Duration::from_millis(50), ask(&batcher)).await })
        };
        let patient = ask_from_tasks(&batcher, 2);
        assert!(impatient.await.unwrap().is_err(), "gave up at its deadline");
        gate.add_permits(2);
        for answer in first.into_iter().chain(patient) {
            assert!(answer.await.unwrap().is_ok());
        }
        assert_eq!(*sizes.lock(), [1, 2], "the abandoned one stayed out");
        // A backlog of only abandoned decisions leaves the lane idle.
        let held = ask_from_tasks(&batcher, 1);
        tokio::task::yield_now().await;
        let gone = {
            let batcher = batcher.clone();
            tokio::spawn(async move { timeout(Duration::from_millis(50), ask(&batcher)).await })
        };
        assert!(gone.await.unwrap().is_err());
        gate.add_permits(2);
        assert!(held.into_iter().next().unwrap().await.unwrap().is_ok());
        assert!(ask(&batcher).await.is_ok());
        assert_eq!(*sizes.lock(), [1, 2, 1, 1]);
    }
}
