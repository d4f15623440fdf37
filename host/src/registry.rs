//! The task registry of one worker: Sanic's `app.tasks`, per worker.
//!
//! A task is registered before its instance exists (so a name is taken at
//! once and a duplicate is refused synchronously) and stays listed after it
//! ends, until purged. Readers get snapshots, never live views, so listing
//! while tasks come and go is always safe.

use crate::bindings::GuestError;
use crate::config::{Limit, LimitUnit};
use crate::grace::GraceClock;
use crate::task::{
    CancelPolicy, CancelSignal, Outcome, TaskId, TaskIdent, TaskInfo, TaskState, WorkerId,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Ids come from one counter per process, so they are unique across every
/// worker and every host in it, and never reused.
static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh task id, from one counter per process: unique across every worker
/// and host in it, never reused.
pub fn next_task_id() -> TaskId {
    NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed)
}

/// Why a task could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Another task of this worker, live or ended but not purged, has the name.
    #[error("a task named {0:?} already exists on this worker")]
    DuplicateName(String),
    /// A bound of `[limits]` (live tasks, argument size) or a name's length.
    #[error(transparent)]
    Limit(#[from] Limit),
}

/// Why `add_task` did not start a task.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AddTaskError {
    /// The submission named a worker this host does not have.
    #[error("no worker {0}")]
    NoWorker(WorkerId),
    /// No plugin of that name is loaded.
    #[error("no plugin named `{0}`")]
    UnknownPlugin(String),
    /// The registry refused it: a duplicate name or a `[limits]` bound.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The factory refused the task before it ran (unknown factory, bad
    /// arguments), or its instance could not be created.
    #[error("{}", crate::bindings::describe(.0))]
    Refused(GuestError),
    /// The request itself does not hold together (an idempotency key
    /// without `durable`, say).
    #[error("{0}")]
    Invalid(String),
    /// A durable task could not be recorded, so it was not started.
    #[error("{0}")]
    Storage(String),
    /// The store of durable tasks cannot be reached now (a cluster's NATS
    /// is away): the same submission may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// The idempotency key names a durable task running on another host.
    #[error("{0}")]
    Elsewhere(String),
    /// The queue named is draining: it takes no new task.
    #[error("{0}")]
    Draining(String),
}

/// A task `add_task` answered for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The worker it runs on.
    pub worker: WorkerId,
    /// Its id on this host.
    pub id: TaskId,
    /// Its name: the one asked for, or `durable-N` for an unnamed durable task;
    /// none for an unnamed task.
    pub name: Option<String>,
    /// False when a durable submission's idempotency key named a task
    /// that already existed: that task is the answer, nothing started.
    pub created: bool,
}

/// A way to watch and stop one registered task.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    /// The task's id on this host.
    pub id: TaskId,
    /// Its cancel, and the state it ended in once it has: kept by every
    /// handle, so a waiter learns how the task ended even when it is
    /// purged before the waiter looks it up.
    signal: Arc<CancelSignal>,
    policy: Arc<CancelPolicy>,
}

impl TaskHandle {
    /// The one way to cancel a task. It is asked to stop at once
    /// (cooperatively: its blocked host calls return `cancelled`), and
    /// interrupted if it has not ended a grace period (`cancel_grace_ms`)
    /// after it first ran again (see [`TaskHandle::supervise`]). The time
    /// from this call to the task's end is recorded as its cancel latency.
    ///
    /// Returns at once; the forcing happens in the task's own future, so
    /// it happens even if nobody waits for [`TaskHandle::ended`].
    /// Cancelling a task that has ended, or one already being cancelled,
    /// does nothing: the first cancel's grace period stands. A task
    /// cancelled before its factory starts never runs it and ends
    /// `cancelled`.
    pub fn cancel(&self) {
        self.cancel_within(self.policy.grace);
    }

    /// [`TaskHandle::cancel`] with a grace period of `grace` instead of
    /// the worker's; zero forces the task at once.
    pub fn cancel_within(&self, grace: Duration) {
        if self.is_ended() || self.signal.is_cancelled() {
            return;
        }
        self.signal.cancel_with_grace(grace);
        if grace.is_zero() {
            self.signal.force();
        }
    }

    /// Runs `task`, the whole life of this handle's task, and enforces its
    /// cancellation: once cancelled, the task is forced when its grace
    /// period has passed, counted from the moment the task first runs after
    /// the cancel, not from the cancel itself.
    ///
    /// Why from then: when thousands of tasks of one worker are cancelled
    /// at once (shutdown, a hot-load draining, a mass cancel), they run
    /// their cleanup one after another on the worker's thread; counted from
    /// the cancel, the last ones would be forced before they had run at
    /// all. Counted from their first turn, each gets the whole grace period
    /// for its cleanup, and a task that ignores the cancel is still forced
    /// one grace period after its turn came. The cancel wakes this future
    /// (it waits on the signal) whatever the task is blocked in, so its turn
    /// always comes. Nor does the time the task then waits for later turns
    /// count ([`crate::grace`]).
    ///
    /// Takes the task pinned where its caller holds it: an `async fn` that
    /// takes a future by value and pins it keeps two copies of it in its
    /// own state (measured: 3,080 bytes per task for a 1,320-byte task, on
    /// the heap of every live task).
    pub(crate) async fn supervise<F: Future>(&self, mut task: std::pin::Pin<&mut F>) -> F::Output {
        let signal = &self.signal;
        let clock = OnceLock::new();
        let enforce = async {
            signal.cancelled().await;
            // The task's turn: this future is being polled.
            let clock = clock.get_or_init(GraceClock::started);
            let grace = signal.asked().map_or(self.policy.grace, |(_, grace)| grace);
            loop {
                let left = clock.left(grace);
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left).await;
            }
            signal.force();
            std::future::pending::<()>().await
        };
        let task = std::future::poll_fn(|cx| match clock.get() {
            Some(clock) => clock.poll(task.as_mut(), cx),
            None => task.as_mut().poll(cx),
        });
        let output = tokio::select! {
            biased;
            () = enforce => unreachable!("enforcing a cancel never ends"),
            output = task => output,
        };
        if let Some((asked, _)) = signal.asked() {
            self.policy.latency.observe(asked.elapsed().as_secs_f64());
        }
        output
    }

    /// How long a cancel waits before it forces the task.
    pub(crate) fn grace(&self) -> Duration {
        self.policy.grace
    }

    /// Whether the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// The raw signal, for the task's own store and host calls.
    pub(crate) fn signal(&self) -> &Arc<CancelSignal> {
        &self.signal
    }

    /// Resolves once the task has ended (at once if it already has).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the end is a state, not a message, so a later call
    /// still sees it.
    pub async fn ended(&mut self) {
        // An entry dropped before its task ended (withdrawn, or its
        // registry dropped) says so too: nothing is left to wait for.
        self.signal.ended().await
    }

    /// Whether the task has ended, without waiting (see [`TaskHandle::ended`]).
    pub fn is_ended(&self) -> bool {
        self.signal.end_state().is_some()
    }

    /// The state the task ended in; none while it runs.
    pub fn end_state(&self) -> Option<TaskState> {
        self.signal.end_state()
    }
}

struct Entry {
    info: TaskInfo,
    signal: Arc<CancelSignal>,
}

impl Drop for Entry {
    /// Who waits for the task's end hears that there will be none it can
    /// see (a no-op once it ended).
    fn drop(&mut self) {
        self.signal.set_ended(None);
    }
}

impl TaskRegistry {
    fn handle(&self, entry: &Entry) -> TaskHandle {
        TaskHandle {
            id: entry.info.ident.id,
            signal: entry.signal.clone(),
            policy: self.cancel.clone(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// By id. A hash map, not a B-tree: ids come in rising order, which
    /// leaves a B-tree's nodes about half full (224 B an entry, against
    /// about 160 here); a listing sorts instead.
    tasks: HashMap<TaskId, Entry>,
    names: HashMap<String, TaskId>,
    /// Its durable tasks by record number, so a record (an idempotency
    /// key's, a cluster's cancel) finds the task listed for it. Kept with
    /// `tasks`: an index kept elsewhere had to be swept of purged tasks.
    durable: HashMap<u64, TaskId>,
    /// Registered tasks that have not ended: kept as a count so the
    /// per-worker cap costs nothing per spawn.
    live: usize,
    /// Ended tasks and when they ended, oldest end first, for dropping the
    /// oldest past the retention cap or age. May hold ids already
    /// forgotten; `stale` counts them.
    ended: VecDeque<(TaskId, Option<Instant>)>,
    /// Ids in `ended` whose tasks were forgotten since: they must not count
    /// against the cap, or every forgotten task (one per closed websocket
    /// connection) would push a listed one out early.
    stale: usize,
}

impl Inner {
    /// Drops the ended tasks that ended longest ago while more than
    /// `retention` are listed, and those that ended `keep_for` ago or more.
    fn evict(&mut self, retention: usize, keep_for: Option<Duration>) {
        let now = keep_for.map(|_| Instant::now());
        while let Some(&(oldest, ended_at)) = self.ended.front() {
            let over = self.ended.len() - self.stale > retention;
            let old = match (keep_for, now, ended_at) {
                (Some(keep_for), Some(now), Some(ended_at)) => {
                    now.saturating_duration_since(ended_at) >= keep_for
                }
                _ => false,
            };
            if !over && !old {
                break;
            }
            self.ended.pop_front();
            if self.tasks.contains_key(&oldest) {
                self.remove(oldest);
            } else {
                self.stale = self.stale.saturating_sub(1);
            }
        }
    }

    /// Drops task `id`'s entry; whether it counted as live (its room is
    /// free now).
    fn remove(&mut self, id: TaskId) -> bool {
        let Some(entry) = self.tasks.remove(&id) else {
            return false;
        };
        let live = !entry.info.state.is_ended() && entry.info.state != TaskState::Queued;
        if live {
            self.live -= 1;
        }
        if let Some(name) = &entry.info.ident.name
            && self.names.get(name) == Some(&id)
        {
            self.names.remove(name);
        }
        if let Some(seq) = entry.info.ident.durable
            && self.durable.get(&seq) == Some(&id)
        {
            self.durable.remove(&seq);
        }
        live
    }

    /// Takes `ident`'s name and record number (both free: checked first).
    fn index(&mut self, ident: &TaskIdent) {
        if let Some(name) = &ident.name {
            self.names.insert(name.clone(), ident.id);
        }
        if let Some(seq) = ident.durable {
            self.durable.insert(seq, ident.id);
        }
    }
}

/// What lists tasks in a [`TaskRegistry`] (a worker), as a wait for a
/// task's end reads it back (`crate::joins`).
pub(crate) trait Listing: Send + Sync {
    /// The registry that lists its tasks.
    fn registry(&self) -> &TaskRegistry;
}

/// The tasks of one worker (or of the main scope).
pub struct TaskRegistry {
    worker: WorkerId,
    /// How its tasks are cancelled.
    cancel: Arc<CancelPolicy>,
    /// How many ended tasks stay listed (`[limits] ended_tasks_per_worker`).
    retention: usize,
    /// How long an ended task stays listed (`[limits] keep_ended`); none:
    /// until the count drops it or a purge.
    keep_for: Option<Duration>,
    inner: Mutex<Inner>,
    /// Told when a live task ends: a queued task waiting for room on the
    /// worker (`tasks_per_worker`) tries again.
    freed: tokio::sync::Notify,
}

impl TaskRegistry {
    /// The registry of `worker`'s tasks: it keeps at most `retention` ended
    /// tasks listed (`[limits] ended_tasks_per_worker`, at least 1) and cancels
    /// by `cancel`.
    pub fn new(worker: WorkerId, retention: usize, cancel: CancelPolicy) -> TaskRegistry {
        TaskRegistry {
            worker,
            cancel: Arc::new(cancel),
            retention: retention.max(1),
            keep_for: None,
            inner: Mutex::default(),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// This registry, dropping ended tasks `keep_for` after they ended
    /// (`[limits] keep_ended`): they are gone from every listing, and their
    /// names free, from then on.
    pub fn keeping_ended_for(mut self, keep_for: Option<Duration>) -> TaskRegistry {
        self.keep_for = keep_for;
        self
    }

    /// The lock, with the ended tasks past `keep_ended` dropped first, for
    /// reads that list or find tasks.
    fn current(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        if self.keep_for.is_some() {
            inner.evict(self.retention, self.keep_for);
        }
        inner
    }

    /// The worker whose tasks it holds.
    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it half-updated (every
        // update is a single insert/remove), so poisoning carries no meaning.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new task in state `pending`, unless the worker already
    /// holds `max_live` live tasks.
    pub fn register(
        &self,
        ident: Arc<TaskIdent>,
        max_live: usize,
    ) -> Result<TaskHandle, RegisterError> {
        self.insert(ident, Some(max_live))
    }

    /// Registers `ident`: live (`pending`, counted against `max_live`) or,
    /// without a bound, `queued` (not counted).
    fn insert(
        &self,
        ident: Arc<TaskIdent>,
        max_live: Option<usize>,
    ) -> Result<TaskHandle, RegisterError> {
        let mut inner = self.current();
        if let Some(max_live) = max_live
            && inner.live >= max_live
        {
            return Err(RegisterError::Limit(Limit {
                what: format!("the live tasks of worker {}", self.worker),
                max: max_live as u64,
                got: max_live as u64 + 1,
                unit: LimitUnit::Tasks,
                setting: Some("tasks_per_worker"),
            }));
        }
        if let Some(name) = &ident.name
            && inner.names.contains_key(name)
        {
            return Err(RegisterError::DuplicateName(name.clone()));
        }
        inner.index(&ident);
        let signal = Arc::new(CancelSignal::default());
        let id = ident.id;
        if max_live.is_some() {
            inner.live += 1;
        }
        inner.tasks.insert(
            id,
            Entry {
                info: TaskInfo {
                    ident,
                    state: match max_live {
                        Some(_) => TaskState::Pending,
                        None => TaskState::Queued,
                    },
                    created_at: SystemTime::now(),
                    started_at: None,
                    ended_at: None,
                    outcome: None,
                    attempt: 1,
                    restarts: 0,
                },
                signal: signal.clone(),
            },
        );
        Ok(TaskHandle {
            id,
            signal,
            policy: self.cancel.clone(),
        })
    }

    /// Registers a task that waits in a queue (state `queued`): its name
    /// is taken, but it does not count against `tasks_per_worker` until
    /// [`TaskRegistry::admit`] lets it start.
    pub(crate) fn register_queued(
        &self,
        ident: Arc<TaskIdent>,
    ) -> Result<TaskHandle, RegisterError> {
        self.insert(ident, None)
    }

    /// Waits until the worker has room for one more live task (fewer than
    /// `max_live`), then moves the queued task `id` to `pending`, counted.
    pub(crate) async fn admit(&self, id: TaskId, max_live: usize) {
        // Most often there is room: no waiter is registered then.
        if self.try_admit(id, max_live) {
            return;
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_admit(id, max_live) {
                return;
            }
            freed.await;
        }
    }

    /// Whether a task admitted now would find room (`max_live`): an
    /// answer for this moment only.
    pub(crate) fn has_room(&self, max_live: usize) -> bool {
        self.lock().live < max_live
    }

    fn try_admit(&self, id: TaskId, max_live: usize) -> bool {
        let mut inner = self.lock();
        if inner.live >= max_live {
            return false;
        }
        inner.live += 1;
        if let Some(entry) = inner.tasks.get_mut(&id) {
            entry.info.state = TaskState::Pending;
        }
        true
    }

    /// The task's instance exists and its factory is about to run.
    pub(crate) fn mark_running(&self, id: TaskId) {
        if let Some(entry) = self.lock().tasks.get_mut(&id) {
            entry.info.state = TaskState::Running;
            entry.info.started_at = Some(SystemTime::now());
        }
    }

    /// Records that the task's attempt `attempt` is about to start.
    pub(crate) fn set_attempt(&self, id: TaskId, attempt: u32) {
        if let Some(entry) = self.lock().tasks.get_mut(&id) {
            entry.info.attempt = attempt;
        }
    }

    /// Records that the task moved to another build of its plugin: its
    /// identity now names that build.
    pub(crate) fn set_ident(&self, ident: Arc<TaskIdent>) {
        if let Some(entry) = self.lock().tasks.get_mut(&ident.id) {
            entry.info.ident = ident;
        }
    }

    /// Records that the task's restart `restarts` is about to start, with
    /// its first attempt.
    pub(crate) fn set_restarts(&self, id: TaskId, restarts: u32) {
        if let Some(entry) = self.lock().tasks.get_mut(&id) {
            entry.info.restarts = restarts;
            entry.info.attempt = 1;
        }
    }

    /// Records how the task ended and wakes everyone waiting for it. Past
    /// the retention cap, the task that ended longest ago is dropped, as a
    /// purge would.
    pub(crate) fn finish(&self, id: TaskId, outcome: Outcome) {
        let mut inner = self.lock();
        let Inner {
            tasks, live, ended, ..
        } = &mut *inner;
        let Some(entry) = tasks.get_mut(&id) else {
            return;
        };
        if !entry.info.state.is_ended() {
            if entry.info.state != TaskState::Queued {
                *live -= 1;
                self.freed.notify_one();
            }
            // Its end's instant only where `keep_ended` needs it: this
            // runs for every task.
            ended.push_back((id, self.keep_for.map(|_| Instant::now())));
        }
        entry.info.state = outcome.state();
        entry.info.ended_at = Some(SystemTime::now());
        entry.info.outcome = Some(outcome);
        entry.signal.set_ended(Some(entry.info.state));
        inner.evict(self.retention, self.keep_for);
    }

    /// Lists a task that ended before this host started (a durable task's
    /// kept outcome) as ended, under a new id. Refused if its name is
    /// taken; it does not count against the live tasks.
    pub(crate) fn restore(&self, info: TaskInfo) -> Result<TaskHandle, RegisterError> {
        let mut inner = self.lock();
        if let Some(name) = &info.ident.name
            && inner.names.contains_key(name)
        {
            return Err(RegisterError::DuplicateName(name.clone()));
        }
        inner.index(&info.ident);
        let id = info.ident.id;
        let signal = Arc::new(CancelSignal::default());
        signal.set_ended(Some(info.state));
        // Aged from when it ended, before this host started.
        let ended_at = self.keep_for.map(|_| {
            let ago = info
                .ended_at
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .unwrap_or_default();
            Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
        });
        inner.ended.push_back((id, ended_at));
        inner.tasks.insert(
            id,
            Entry {
                info,
                signal: signal.clone(),
            },
        );
        inner.evict(self.retention, self.keep_for);
        Ok(TaskHandle {
            id,
            signal,
            policy: self.cancel.clone(),
        })
    }

    /// Every registered task, oldest first.
    pub fn snapshot(&self) -> Vec<TaskInfo> {
        let mut tasks = self.matching(|_| true);
        tasks.sort_unstable_by_key(|info| info.ident.id);
        tasks
    }

    /// The registered tasks `keep` selects, in no order: only those are
    /// copied.
    pub(crate) fn matching(&self, keep: impl Fn(&TaskInfo) -> bool) -> Vec<TaskInfo> {
        self.current()
            .tasks
            .values()
            .filter(|e| keep(&e.info))
            .map(|e| e.info.clone())
            .collect()
    }

    /// Shows `see` every registered task, in no order, under the
    /// registry's lock: `see` must not wait or call back into it.
    pub(crate) fn visit(&self, mut see: impl FnMut(&TaskInfo)) {
        for entry in self.current().tasks.values() {
            see(&entry.info);
        }
    }

    /// A snapshot of task `id`, live or ended (until purged); none for another
    /// worker's task.
    pub fn get(&self, id: TaskId) -> Option<TaskInfo> {
        self.current().tasks.get(&id).map(|e| e.info.clone())
    }

    /// The task's kept log lines (none if it logged none) and its signal
    /// (to wait for its end), while it is listed.
    pub(crate) fn log(
        &self,
        id: TaskId,
    ) -> Option<(Option<Arc<crate::task_log::TaskLog>>, Arc<CancelSignal>)> {
        let inner = self.current();
        let entry = inner.tasks.get(&id)?;
        Some((entry.signal.kept_log().cloned(), entry.signal.clone()))
    }

    /// The task named `name`, live or ended (until purged).
    pub fn get_by_name(&self, name: &str) -> Option<TaskInfo> {
        let inner = self.current();
        let id = inner.names.get(name)?;
        inner.tasks.get(id).map(|e| e.info.clone())
    }

    /// A handle to the task `id`, if it is listed.
    pub fn handle_of(&self, id: TaskId) -> Option<TaskHandle> {
        let inner = self.current();
        inner.tasks.get(&id).map(|entry| self.handle(entry))
    }

    /// A handle on the durable task of record `seq`, live or ended (until
    /// purged).
    pub(crate) fn handle_of_record(&self, seq: u64) -> Option<TaskHandle> {
        let inner = self.current();
        let id = inner.durable.get(&seq)?;
        inner.tasks.get(id).map(|entry| self.handle(entry))
    }

    /// A handle on the task named `name`, live or ended (until purged).
    pub fn handle_by_name(&self, name: &str) -> Option<TaskHandle> {
        let inner = self.current();
        let id = inner.names.get(name)?;
        inner.tasks.get(id).map(|entry| self.handle(entry))
    }

    /// Drops every ended task (done, failed, cancelled), freeing its name;
    /// returns how many were dropped. Live tasks are untouched.
    pub fn purge(&self) -> usize {
        let mut inner = self.lock();
        let Inner {
            tasks,
            names,
            durable,
            ended,
            stale,
            ..
        } = &mut *inner;
        // One pass, no lookups: 100,000 ended tasks purged in about half
        // the time of removing them one by one (`-- scaling` bench).
        let purged: Vec<Entry> = tasks
            .extract_if(|_, entry| entry.info.state.is_ended())
            .map(|(id, entry)| {
                if let Some(name) = &entry.info.ident.name
                    && names.get(name) == Some(&id)
                {
                    names.remove(name);
                }
                if let Some(seq) = entry.info.ident.durable
                    && durable.get(&seq) == Some(&id)
                {
                    durable.remove(&seq);
                }
                entry
            })
            .collect();
        ended.clear();
        *stale = 0;
        drop(inner);
        // Dropped after the lock: the worker's tasks need not wait for it.
        purged.len()
    }

    /// Forgets a task that never ran (its arguments were refused), as if it
    /// had never been added.
    pub(crate) fn withdraw(&self, id: TaskId) {
        if self.lock().remove(id) {
            // A queued task waiting for room takes it.
            self.freed.notify_one();
        }
    }

    /// Drops one ended task, as `purge` would, freeing its name; a live
    /// task is left alone. Returns whether it was dropped.
    pub fn forget(&self, id: TaskId) -> bool {
        let mut inner = self.lock();
        let ended = inner
            .tasks
            .get(&id)
            .is_some_and(|e| e.info.state.is_ended());
        if ended {
            inner.remove(id);
            inner.stale += 1;
        }
        ended
    }

    /// How many registered tasks have not ended.
    pub fn live_count(&self) -> usize {
        self.lock().live
    }

    /// Handles of the tasks that have not ended yet.
    pub fn live(&self) -> Vec<TaskHandle> {
        let mut live: Vec<TaskHandle> = self
            .lock()
            .tasks
            .values()
            .filter(|e| !e.info.state.is_ended())
            .map(|entry| self.handle(entry))
            .collect();
        // Oldest first, as they were registered.
        live.sort_unstable_by_key(|handle| handle.id);
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TaskRegistry {
        fn register_unbounded(&self, ident: Arc<TaskIdent>) -> Result<TaskHandle, RegisterError> {
            self.register(ident, usize::MAX)
        }
    }

    #[test]
    fn the_live_cap_counts_only_tasks_that_have_not_ended() {
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, CancelPolicy::default());
        let first = registry.register(ident(None), 2).unwrap();
        registry.register(ident(None), 2).unwrap();
        assert!(matches!(
            registry.register(ident(None), 2),
            Err(RegisterError::Limit(_))
        ));
        registry.finish(
            first.id,
            Outcome::Done {
                result: "null".into(),
            },
        );
        assert_eq!(registry.live_count(), 1);
        registry
            .register(ident(None), 2)
            .expect("an ended task frees its place");
        assert_eq!(registry.purge(), 1);
        assert_eq!(registry.live_count(), 2);
    }

    /// A task withdrawn before it ran (its arguments refused) frees its
    /// room for a queued task waiting for it: it waited on before.
    #[tokio::test]
    async fn a_withdrawn_task_frees_its_room_for_a_queued_one() {
        let registry = Arc::new(TaskRegistry::new(
            WorkerId::Index(0),
            usize::MAX,
            CancelPolicy::default(),
        ));
        let refused = registry.register(ident(None), 1).unwrap();
        let queued = registry.register_queued(ident(None)).unwrap();
        let admitting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.admit(queued.id, 1).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !admitting.is_finished(),
            "no room while the first is pending"
        );
        registry.withdraw(refused.id);
        tokio::time::timeout(std::time::Duration::from_secs(30), admitting)
            .await
            .expect("admitted once the withdrawn task's room is free")
            .unwrap();
        assert_eq!(registry.live_count(), 1);
    }

    #[tokio::test]
    async fn a_queued_task_waits_outside_the_cap_and_is_admitted_when_room_frees() {
        let registry = Arc::new(TaskRegistry::new(
            WorkerId::Index(0),
            usize::MAX,
            CancelPolicy::default(),
        ));
        let running = registry.register(ident(None), 1).unwrap();
        let queued = registry.register_queued(ident(Some("q"))).unwrap();
        assert_eq!(registry.live_count(), 1, "a queued task is not live");
        assert_eq!(registry.get(queued.id).unwrap().state, TaskState::Queued);
        let admitting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.admit(queued.id, 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!admitting.is_finished(), "no room while the first runs");
        registry.finish(running.id, Outcome::Done { result: "1".into() });
        admitting.await.unwrap();
        assert_eq!(registry.live_count(), 1);
        assert_eq!(registry.get(queued.id).unwrap().state, TaskState::Pending);
    }

    /// Issue 24, item 5: a `cancel-task` whose target ended and was purged
    /// by someone else before it looked the target up reported "no task
    /// named `task N was purged`". The handle now keeps the end state
    /// (this test did not compile before: there was none to read).
    #[test]
    fn a_handle_keeps_the_end_state_after_its_task_is_purged() {
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, CancelPolicy::default());
        let handle = registry.register_unbounded(ident(Some("feed"))).unwrap();
        assert_eq!(handle.end_state(), None);
        registry.finish(
            handle.id,
            Outcome::Cancelled {
                stage: crate::task::CancelStage::Cooperative,
            },
        );
        assert_eq!(registry.purge(), 1);
        assert!(registry.get(handle.id).is_none());
        assert_eq!(handle.end_state(), Some(TaskState::Cancelled));
        assert!(handle.is_ended());
    }

    fn ident(name: Option<&str>) -> Arc<TaskIdent> {
        Arc::new(TaskIdent {
            name: name.map(String::from),
            ..TaskIdent::for_tests(next_task_id(), "p", "f")
        })
    }

    /// A durable task is found by its record while it is listed, and not
    /// once it is dropped (purged, forgotten, withdrawn, evicted), nor by a
    /// later listing's drop of an earlier one.
    #[test]
    fn a_durable_task_is_found_by_its_record_while_it_is_listed() {
        let registry = TaskRegistry::new(WorkerId::Index(0), 1, CancelPolicy::default());
        let durable = |seq| {
            let mut ident = (*ident(None)).clone();
            ident.durable = Some(seq);
            Arc::new(ident)
        };
        let done = || Outcome::Done {
            result: "null".into(),
        };
        let first = registry.register_unbounded(durable(7)).unwrap();
        assert_eq!(registry.handle_of_record(7).map(|h| h.id), Some(first.id));
        assert!(registry.handle_of_record(8).is_none());
        registry.finish(first.id, done());
        assert_eq!(registry.purge(), 1);
        assert!(registry.handle_of_record(7).is_none(), "purged");

        let refused = registry.register_unbounded(durable(7)).unwrap();
        registry.withdraw(refused.id);
        assert!(registry.handle_of_record(7).is_none(), "withdrawn");

        let forgotten = registry.register_unbounded(durable(7)).unwrap();
        registry.finish(forgotten.id, done());
        assert!(registry.forget(forgotten.id));
        assert!(registry.handle_of_record(7).is_none(), "forgotten");

        // Retention 1: the second ended task evicts the first.
        let evicted = registry.register_unbounded(durable(1)).unwrap();
        registry.finish(evicted.id, done());
        let kept = registry.register_unbounded(durable(2)).unwrap();
        registry.finish(kept.id, done());
        assert!(registry.handle_of_record(1).is_none(), "evicted");
        assert_eq!(registry.handle_of_record(2).map(|h| h.id), Some(kept.id));

        // Listed again (a re-run), then the older listing dropped.
        let again = registry.register_unbounded(durable(2)).unwrap();
        assert!(registry.forget(kept.id));
        assert_eq!(registry.handle_of_record(2).map(|h| h.id), Some(again.id));
    }

    #[test]
    fn duplicate_names_are_refused_until_the_first_is_gone() {
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, CancelPolicy::default());
        registry.register_unbounded(ident(Some("a"))).unwrap();
        assert_eq!(
            registry.register_unbounded(ident(Some("a"))).unwrap_err(),
            RegisterError::DuplicateName("a".into())
        );
        registry.register_unbounded(ident(None)).unwrap();
        registry.register_unbounded(ident(None)).unwrap();
        assert_eq!(registry.snapshot().len(), 3);
    }

    #[test]
    fn purge_drops_exactly_the_ended_tasks_and_frees_their_names() {
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, CancelPolicy::default());
        let done = registry.register_unbounded(ident(Some("done"))).unwrap();
        let live = registry.register_unbounded(ident(Some("live"))).unwrap();
        let failed = registry.register_unbounded(ident(None)).unwrap();
        registry.finish(
            done.id,
            Outcome::Done {
                result: "null".into(),
            },
        );
        registry.finish(failed.id, Outcome::Failed { error: "x".into() });
        assert_eq!(registry.purge(), 2);
        assert_eq!(registry.purge(), 0);
        let left: Vec<_> = registry.snapshot().iter().map(|i| i.ident.id).collect();
        assert_eq!(left, vec![live.id]);
        assert!(registry.get_by_name("done").is_none());
        registry
            .register_unbounded(ident(Some("done")))
            .expect("the name is free again");
    }

    #[test]
    fn past_the_retention_cap_the_oldest_ended_task_is_dropped() {
        let registry = TaskRegistry::new(WorkerId::Index(0), 2, CancelPolicy::default());
        let live = registry.register_unbounded(ident(Some("live"))).unwrap();
        let ids: Vec<TaskId> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                let handle = registry.register_unbounded(ident(Some(name))).unwrap();
                registry.finish(handle.id, Outcome::Failed { error: "x".into() });
                handle.id
            })
            .collect();
        let left: Vec<_> = registry.snapshot().iter().map(|i| i.ident.id).collect();
        assert_eq!(left, vec![live.id, ids[1], ids[2]]);
        assert!(registry.get_by_name("a").is_none(), "its name is free");
    }

    /// `keep_ended`: an ended task is listed until it is that old, then
    /// gone from every read, its name free; live tasks stay.
    #[test]
    fn an_ended_task_older_than_keep_ended_is_dropped() {
        let registry = TaskRegistry::new(WorkerId::Index(0), 100, CancelPolicy::default())
            .keeping_ended_for(Some(Duration::from_millis(50)));
        let live = registry.register_unbounded(ident(Some("live"))).unwrap();
        let ended = registry.register_unbounded(ident(Some("ended"))).unwrap();
        registry.finish(ended.id, Outcome::Failed { error: "x".into() });
        assert!(registry.get(ended.id).is_some(), "listed while young");
        // The time passing is what is tested: a slower machine waits longer.
        std::thread::sleep(Duration::from_millis(60));
        assert!(registry.get(ended.id).is_none());
        assert!(registry.get_by_name("ended").is_none());
        let left: Vec<_> = registry.snapshot().iter().map(|i| i.ident.id).collect();
        assert_eq!(left, vec![live.id]);
        registry
            .register_unbounded(ident(Some("ended")))
            .expect("its name is free again");
    }

    /// A forgotten task (a closed connection's) does not count against
    /// the cap: it failed before, evicting a listed task early.
    #[test]
    fn a_forgotten_task_does_not_push_a_listed_one_out() {
        let registry = TaskRegistry::new(WorkerId::Index(0), 2, CancelPolicy::default());
        let end = |name: &str| {
            let handle = registry.register_unbounded(ident(Some(name))).unwrap();
            registry.finish(handle.id, Outcome::Failed { error: "x".into() });
            handle.id
        };
        let c = end("c");
        let a = end("a");
        assert!(registry.forget(a));
        let d = end("d");
        let left: Vec<_> = registry.snapshot().iter().map(|i| i.ident.id).collect();
        assert_eq!(left, vec![c, d]);
        // Past the cap, the oldest listed one still goes.
        let e = end("e");
        let left: Vec<_> = registry.snapshot().iter().map(|i| i.ident.id).collect();
        assert_eq!(left, vec![d, e]);
    }

    #[tokio::test]
    async fn finishing_wakes_waiters_and_records_the_outcome() {
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, CancelPolicy::default());
        let mut handle = registry.register_unbounded(ident(None)).unwrap();
        assert_eq!(registry.live().len(), 1);
        registry.mark_running(handle.id);
        let waiter = {
            let mut handle = handle.clone();
            tokio::spawn(async move { handle.ended().await })
        };
        registry.finish(handle.id, Outcome::Done { result: "1".into() });
        waiter.await.unwrap();
        handle.ended().await;
        let info = registry.get(handle.id).unwrap();
        assert_eq!(info.state, TaskState::Done);
        assert!(info.started_at.is_some() && info.ended_at.is_some());
        assert!(registry.live().is_empty());
    }

    /// The histogram's `_count` as the metrics text shows it.
    fn observations(latency: &prometheus_client::metrics::histogram::Histogram) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("cancel_latency", "", latency.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("cancel_latency_count "))
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_starts_when_the_task_first_runs_after_its_cancel() {
        let policy = CancelPolicy {
            grace: Duration::from_millis(20),
            latency: prometheus_client::metrics::histogram::Histogram::new([1.0]),
        };
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, policy.clone());
        let mut handle = registry.register_unbounded(ident(None)).unwrap();
        // A task that never returns on its own: only a force stops it.
        let supervised = handle.clone();
        let turn = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (turn, signal) = (turn.clone(), handle.signal().clone());
            tokio::spawn(async move {
                // Its worker is busy elsewhere for a while after the cancel:
                // this task's first turn comes only when `turn` is notified.
                turn.notified().await;
                supervised.supervise(std::pin::pin!(signal.forced())).await;
            })
        };
        tokio::task::yield_now().await;
        handle.cancel();
        assert!(handle.is_cancelled());
        assert!(!handle.signal().is_forced(), "cooperative first");
        // A second cancel does not start a second timer or a second sample.
        handle.cancel();
        tokio::time::sleep(policy.grace * 5).await;
        assert!(
            !handle.signal().is_forced(),
            "forced before the task had its turn"
        );
        let turned = tokio::time::Instant::now();
        turn.notify_one();
        handle.signal().forced().await;
        assert_eq!(
            turned.elapsed(),
            policy.grace,
            "forced one grace period after its turn"
        );
        task.await.unwrap();
        registry.finish(
            handle.id,
            Outcome::Cancelled {
                stage: crate::task::CancelStage::Forced,
            },
        );
        handle.ended().await;
        assert_eq!(observations(&policy.latency), "1");
        // Cancelling an ended task does nothing.
        handle.cancel();
        tokio::task::yield_now().await;
        assert_eq!(observations(&policy.latency), "1");
    }

    /// The worker's other tasks, each holding the thread for `hold` before
    /// it yields, `turns` times: what a cancelled task's later turns wait
    /// behind at a shutdown of thousands.
    fn busy_siblings(turns: usize, hold: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for _ in 0..turns {
                std::thread::sleep(hold);
                tokio::task::yield_now().await;
            }
        })
    }

    /// A registry whose tasks get 50 ms to stop once cancelled, and one
    /// task of it (the registry holds its entry).
    fn one_task_with_a_short_grace() -> (TaskRegistry, TaskHandle) {
        let policy = CancelPolicy {
            grace: Duration::from_millis(50),
            latency: prometheus_client::metrics::histogram::Histogram::new([1.0]),
        };
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, policy);
        let handle = registry.register_unbounded(ident(None)).unwrap();
        (registry, handle)
    }

    fn one_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// A cleanup that yields (as a guest back from a long host call does at
    /// its first epoch check) waits for its next turn behind its worker's
    /// other tasks. That wait is not its grace period: counted in it, 3 of
    /// 10,000 sleepers were forced at a shutdown under load. Fails with the
    /// grace counted in wall time from the turn: forced after 150 ms.
    #[test]
    fn the_wait_for_a_later_turn_is_not_part_of_the_grace_period() {
        one_thread().block_on(async {
            let (_registry, handle) = one_task_with_a_short_grace();
            let supervised = handle.clone();
            let task = tokio::spawn(async move {
                let signal = supervised.signal().clone();
                supervised
                    .supervise(std::pin::pin!(async {
                        signal.cancelled().await;
                        crate::grace::yield_to_siblings().await;
                        "cleaned up"
                    }))
                    .await
            });
            tokio::task::yield_now().await;
            handle.cancel();
            let siblings = busy_siblings(2, handle.grace() * 3);
            assert_eq!(task.await.unwrap(), "cleaned up");
            assert!(
                !handle.signal().is_forced(),
                "forced while it waited for the thread"
            );
            siblings.await.unwrap();
        });
    }

    /// And a cancelled task that yields forever, next to siblings that hold
    /// the thread, is still forced once it has had its grace period of its
    /// own time. Fails with the grace counted in wall time: forced after
    /// its first 10 ms.
    #[test]
    fn a_task_that_ignores_its_cancel_and_yields_is_forced_after_its_own_grace() {
        one_thread().block_on(async {
            let (_registry, handle) = one_task_with_a_short_grace();
            let supervised = handle.clone();
            let task = tokio::spawn(async move {
                let signal = supervised.signal().clone();
                supervised
                    .supervise(std::pin::pin!(async {
                        signal.cancelled().await;
                        let mut own = Duration::ZERO;
                        while !signal.is_forced() {
                            let ran = std::time::Instant::now();
                            std::thread::sleep(Duration::from_millis(10));
                            own += ran.elapsed();
                            crate::grace::yield_to_siblings().await;
                        }
                        own
                    }))
                    .await
            });
            tokio::task::yield_now().await;
            handle.cancel();
            let siblings = busy_siblings(usize::MAX, handle.grace() * 2);
            let own = task.await.unwrap();
            siblings.abort();
            assert!(
                own + Duration::from_millis(5) >= handle.grace(),
                "forced after {own:?} of its own time"
            );
        });
    }

    #[tokio::test]
    async fn a_cancel_with_no_grace_forces_at_once() {
        let registry = TaskRegistry::new(WorkerId::Index(0), usize::MAX, CancelPolicy::default());
        let handle = registry.register_unbounded(ident(None)).unwrap();
        handle.cancel_within(Duration::ZERO);
        assert!(handle.signal().is_forced());
    }
}
