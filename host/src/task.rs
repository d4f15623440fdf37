//! The vocabulary of a task's life: who it is, what state it is in, how it
//! ended, and the signal that asks it to stop.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// A task's id: unique across all workers of a host, never reused.
pub type TaskId = u64;

/// Where a task runs: a worker, or the main scope that runs before workers.
///
/// On every wire (the control API, the CLI's `--json`, the JSON log) it is
/// the worker's index as a number, or the string `"main"`; read back, a
/// number written as a string (`"1"`, as a query or a CLI flag gives it) is
/// taken too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkerId {
    /// `scope = "main"` tasks: once, before any worker starts.
    Main,
    /// Worker number N (0-based).
    Index(u32),
}

impl WorkerId {
    /// The index `app.worker()` reports: none for the main scope.
    pub fn index(self) -> Option<u32> {
        match self {
            WorkerId::Main => None,
            WorkerId::Index(i) => Some(i),
        }
    }
}

impl std::str::FromStr for WorkerId {
    type Err = String;

    /// `main`, or an index.
    fn from_str(text: &str) -> Result<WorkerId, String> {
        if text == "main" {
            return Ok(WorkerId::Main);
        }
        text.parse()
            .map(WorkerId::Index)
            .map_err(|_| format!("a worker is an index or `main`, not {text:?}"))
    }
}

impl Serialize for WorkerId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            WorkerId::Main => serializer.serialize_str("main"),
            WorkerId::Index(i) => serializer.serialize_u32(*i),
        }
    }
}

impl<'de> Deserialize<'de> for WorkerId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<WorkerId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Index(u32),
            Text(String),
        }
        match Wire::deserialize(deserializer)? {
            Wire::Index(i) => Ok(WorkerId::Index(i)),
            Wire::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerId::Main => f.write_str("main"),
            WorkerId::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Everything that identifies a task in logs and listings. Fixed at spawn,
/// but for its build: a task that moves to a newer one (`on_load =
/// "restart"`) gets a new identity naming it, the same otherwise.
#[derive(Debug, Clone)]
pub struct TaskIdent {
    /// Unique among the host's tasks, never reused (one counter per process).
    pub id: TaskId,
    /// Unique in its worker's registry until purged; none for an unnamed task.
    pub name: Option<String>,
    /// The worker it runs on.
    pub worker: WorkerId,
    /// The plugin it was started from (`NAME` of `[plugins.NAME]`).
    pub plugin: Arc<str>,
    /// The build it started on (`sha256:` and 12 hex digits): a hot-load does
    /// not move a running task.
    pub plugin_version: Arc<str>,
    /// The factory it runs.
    pub factory: String,
    /// A durable task's record number in storage (see
    /// `crate::storage::tasks`); none for a task that lives in memory only.
    pub durable: Option<u64>,
    /// The websocket connection the task serves, if a route started it.
    pub connection: Option<u64>,
    /// The queue it was submitted to (`[[queues]]`); none for a task that
    /// started at once.
    pub queue: Option<Arc<str>>,
    /// The task of this host that started it (a guest's `add-task` or
    /// `start-task`); none for one the host, an operator or a schedule
    /// started.
    pub parent: Option<TaskId>,
    /// Its place in its trace (`[telemetry]`); none without telemetry.
    /// Boxed: 8 bytes, not 40, on every task of a host that traces nothing.
    pub trace: Option<Box<crate::trace_context::TaskTrace>>,
    /// Its arguments (JSON text) as listings show them: the first
    /// [`ARGS_SHOWN`] bytes, so an ended task kept for its listing holds a
    /// few KiB at most, not up to `[limits] args_bytes`.
    pub args: ShownArgs,
}

#[cfg(test)]
impl TaskIdent {
    /// An identity for unit tests: unnamed, on worker 0, started by the
    /// host, with only its plugin and factory given.
    pub(crate) fn for_tests(id: TaskId, plugin: &str, factory: &str) -> TaskIdent {
        TaskIdent {
            id,
            name: None,
            worker: WorkerId::Index(0),
            plugin: plugin.into(),
            plugin_version: "v".into(),
            factory: factory.into(),
            durable: None,
            connection: None,
            queue: None,
            parent: None,
            trace: None,
            args: ShownArgs::default(),
        }
    }
}

/// How much of a task's arguments its identity keeps for listings.
pub const ARGS_SHOWN: usize = 4096;

/// A task's arguments as listings show them: the whole text, or its
/// first [`ARGS_SHOWN`] bytes and a mark that there was more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShownArgs {
    /// The arguments' JSON text, or its beginning.
    pub text: Arc<str>,
    /// The text is the beginning only.
    pub cut: bool,
}

impl ShownArgs {
    /// What is kept of `args`.
    pub fn of(args: &str) -> ShownArgs {
        if args.len() <= ARGS_SHOWN {
            return ShownArgs {
                text: args.into(),
                cut: false,
            };
        }
        let mut end = ARGS_SHOWN;
        while !args.is_char_boundary(end) {
            end -= 1;
        }
        ShownArgs {
            text: args[..end].into(),
            cut: true,
        }
    }
}

impl TaskIdent {
    /// How logs name the task: its name, or its id when it has none.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => self.id.to_string(),
        }
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting in its queue (`[[queues]]`) for the queue to let it start;
    /// it holds no instance yet and does not count against
    /// `tasks_per_worker`.
    Queued,
    /// Registered; its instance is being created.
    Pending,
    /// Its factory is running.
    Running,
    /// The factory returned a result.
    Done,
    /// The factory returned an error, trapped, or could not start.
    Failed,
    /// The task ended because it was cancelled.
    Cancelled,
}

impl TaskState {
    /// Whether it has ended (`done`, `failed` or `cancelled`): it no longer
    /// counts against the live-task bounds, only `ended_tasks_per_worker`.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// The snake_case name the wire and the logs use (`running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Done => "done",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which stage of cancellation ended a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelStage {
    /// The task saw `cancelled` from a host call and returned.
    Cooperative,
    /// The task did not end within the grace period and was interrupted.
    Forced,
}

impl CancelStage {
    /// The snake_case name the wire and the logs use: `cooperative` or
    /// `forced`.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelStage::Cooperative => "cooperative",
            CancelStage::Forced => "forced",
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The factory's result, as JSON text.
    Done {
        /// The factory's result, as JSON text.
        result: String,
    },
    /// Why it failed: the factory's error, or the trap with its wasm
    /// backtrace.
    Failed {
        /// The factory's error message, or the trap with its wasm backtrace.
        error: String,
    },
    /// The task was cancelled and ended at `stage`.
    Cancelled {
        /// Whether it returned on its own or had to be interrupted.
        stage: CancelStage,
    },
}

impl Outcome {
    /// The ended state this outcome puts the task in.
    pub fn state(&self) -> TaskState {
        match self {
            Outcome::Done { .. } => TaskState::Done,
            Outcome::Failed { .. } => TaskState::Failed,
            Outcome::Cancelled { .. } => TaskState::Cancelled,
        }
    }
}

/// Unix time in milliseconds: how task times cross the WIT and the API.
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A snapshot of one registered task.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// Who it is: fixed at spawn, shared (not copied) by every snapshot.
    pub ident: Arc<TaskIdent>,
    /// Where it is in its life, when the snapshot was taken.
    pub state: TaskState,
    /// When it was registered (wall clock).
    pub created_at: SystemTime,
    /// When its factory first ran (its first attempt that got that far); none
    /// while pending, or if no attempt got that far.
    pub started_at: Option<SystemTime>,
    /// When it ended; none until then.
    pub ended_at: Option<SystemTime>,
    /// Set once the task has ended.
    pub outcome: Option<Outcome>,
    /// Which attempt runs (or ran last): 1 unless the task was retried
    /// (since its last restart).
    pub attempt: u32,
    /// How often it was restarted (`restart = ...`): 0 unless supervised.
    pub restarts: u32,
}

/// A task as the control API, the CLI (`--json`) and scripts see it: the
/// one serde type of that record, with the names of the guest's
/// `task-info`. Times are Unix milliseconds; `result` (done), `error`
/// (failed) and `cancel_stage` (cancelled) are null until the task ends
/// that way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Its id on the host that runs it ([`TaskIdent::id`]).
    pub id: TaskId,
    /// Unique in its worker's registry; none for an unnamed task.
    pub name: Option<String>,
    /// The worker it runs on: an index, or `"main"`.
    pub worker: WorkerId,
    /// The plugin it was started from.
    pub plugin: String,
    /// The build it runs on: `sha256:` and 12 hex digits of the component's
    /// hash.
    pub plugin_version: String,
    /// The factory it runs.
    pub factory: String,
    /// Where it is in its life.
    pub state: TaskState,
    /// When it was registered (Unix ms).
    pub created_at_ms: u64,
    /// When its factory first ran (Unix ms); none while pending, or if it
    /// never did.
    pub started_at_ms: Option<u64>,
    /// When it ended (Unix ms); none until then.
    pub ended_at_ms: Option<u64>,
    /// The factory's result, as JSON text, once `done`.
    pub result: Option<String>,
    /// Why it failed, once `failed`.
    pub error: Option<String>,
    /// Which stage ended it, once `cancelled`.
    pub cancel_stage: Option<CancelStage>,
    /// Which attempt runs, or ran last (1 unless retried since its last
    /// restart).
    pub attempt: u32,
    /// How often it was restarted (`restart = ...`); 0 unless supervised.
    #[serde(default)]
    pub restarts: u32,
    /// Recorded in storage: run again after a crash, its outcome kept
    /// across restarts.
    #[serde(default)]
    pub durable: bool,
    /// The queue it was submitted to; none for a task that started at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The task of this host that started it (a guest's `add-task` or
    /// `start-task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<TaskId>,
    /// The host it runs on, in a listing gathered from a cluster's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its arguments, as JSON text: the first 4 KiB ([`ARGS_SHOWN`]).
    #[serde(default)]
    pub args: String,
    /// True when `args` is only their beginning.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_truncated: bool,
}

impl From<&TaskInfo> for TaskView {
    fn from(info: &TaskInfo) -> TaskView {
        let (result, error, cancel_stage) = match &info.outcome {
            Some(Outcome::Done { result }) => (Some(result.clone()), None, None),
            Some(Outcome::Failed { error }) => (None, Some(error.clone()), None),
            Some(Outcome::Cancelled { stage }) => (None, None, Some(*stage)),
            None => (None, None, None),
        };
        TaskView {
            id: info.ident.id,
            name: info.ident.name.clone(),
            worker: info.ident.worker,
            plugin: info.ident.plugin.to_string(),
            plugin_version: info.ident.plugin_version.to_string(),
            factory: info.ident.factory.clone(),
            state: info.state,
            created_at_ms: unix_millis(info.created_at),
            started_at_ms: info.started_at.map(unix_millis),
            ended_at_ms: info.ended_at.map(unix_millis),
            result,
            error,
            cancel_stage,
            attempt: info.attempt,
            restarts: info.restarts,
            durable: info.ident.durable.is_some(),
            queue: info.ident.queue.as_deref().map(str::to_string),
            parent: info.ident.parent,
            host: None,
            args: info.ident.args.text.to_string(),
            args_truncated: info.ident.args.cut,
        }
    }
}

/// How a worker's tasks are cancelled: how long a cancelled task may run
/// on before it is interrupted, and where the time from a cancel to the
/// task's end is recorded.
#[derive(Debug, Clone)]
pub struct CancelPolicy {
    /// How long a cancelled task may run on after its first turn before it is
    /// interrupted: app.toml's `cancel_grace_ms` (default 100 ms).
    pub grace: std::time::Duration,
    /// `taskhost_cancel_latency_seconds`.
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

impl Default for CancelPolicy {
    fn default() -> CancelPolicy {
        CancelPolicy {
            grace: std::time::Duration::from_millis(500),
            latency: prometheus_client::metrics::histogram::Histogram::new([1.0]),
        }
    }
}

/// The signals between a task and those who hold its handle: the cancel
/// going in (two stages) and, for a registered task, its end coming out.
/// Only [`crate::registry::TaskHandle::cancel`] sends the cancel, so every
/// cancel gets the grace period, the forcing and the metric.
///
/// `cancel` is cooperative: blocked host calls wake with `cancelled` and
/// every later one fails the same way. `force` is for tasks that do not
/// listen: the store's epoch callback sees it and interrupts the guest at
/// the next tick, even in a loop with no host calls.
///
/// One allocation per task of 176 bytes, woken through one `Notify` (a
/// waiter checks what it waits for again): it was a cancellation token
/// for each stage and a watch channel for the end, 760 bytes in three
/// allocations, the most of what a waiting task held (docs/queues.md,
/// "Cost").
#[derive(Default)]
pub(crate) struct CancelSignal {
    cancelled: AtomicBool,
    /// Checked by the epoch callback every tick (an atomic load); its
    /// waiters are calls blocked in a host function (where epochs do not
    /// reach), woken so the runner can drop them.
    forced: AtomicBool,
    /// Told when any of `cancelled`, `forced` or `ended` is set.
    changed: tokio::sync::Notify,
    /// When the task was asked to stop, and the grace period it was given
    /// (set once, before `cancelled` is).
    asked: OnceLock<(Instant, Duration)>,
    /// The task's own signal when this one is an attempt's: cancelling or
    /// forcing the task reaches the attempt, not the other way round. A
    /// task's signal has no parent, so the chain is one link at most.
    parent: Option<Arc<CancelSignal>>,
    /// For a durable task of a cluster: how long this host may go on
    /// running it (see [`Lease`]). Past it the task is fenced.
    lease: OnceLock<Arc<Lease>>,
    /// Told once, by the first cancel (or at once, if set after it), with
    /// its number: how a task that holds no future (one waiting in its
    /// queue) hears it.
    on_cancel: std::sync::Mutex<Option<(Arc<dyn CancelHook>, u64)>>,
    /// How the task ended, once it has: set by its registry (`None`: it
    /// was withdrawn, or dropped from the registry before it ended).
    ended: OnceLock<Option<TaskState>>,
    /// The tasks started as its children (`task-options.child`), cancelled
    /// when it is cancelled, when an attempt of it ends and when it ends.
    /// Boxed behind a `OnceLock`: 16 bytes for the tasks that have none.
    children: OnceLock<Box<std::sync::Mutex<Vec<Child>>>>,
    /// The task's kept log lines (`crate::task_log`), made at its first
    /// line: held here because the registry's record holds the signal, so
    /// the lines go when the record does.
    log: OnceLock<Arc<crate::task_log::TaskLog>>,
}

/// A task's child, as its parent's signal cancels it: its signal and the
/// grace period its worker gives.
struct Child {
    signal: Arc<CancelSignal>,
    grace: Duration,
}

impl Child {
    fn cancel(&self) {
        let signal = &self.signal;
        if signal.end_state().is_some() || signal.is_cancelled() {
            return;
        }
        signal.cancel_with_grace(self.grace);
        if self.grace.is_zero() {
            signal.force();
        }
    }
}

/// Who hears of a cancel through [`CancelSignal::on_cancel`].
pub(crate) trait CancelHook: Send + Sync {
    /// The task it knows as `ticket` was cancelled. Runs on the
    /// canceller's thread: it must not block.
    fn cancelled(&self, ticket: u64);
}

impl fmt::Debug for CancelSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelSignal")
            .field("cancelled", &self.is_cancelled())
            .field("forced", &self.is_forced())
            .field("asked", &self.asked)
            .field("ended", &self.ended.get())
            .finish_non_exhaustive()
    }
}

/// How long a host may still act for a task that another host could take
/// over (a durable task of a cluster): until the end of the lease, renewed
/// while this host still holds the task's record. A host paused or cut off
/// past it (SIGSTOP, a long GC-like stall, a partition) finds its lease
/// over before its copy can act again: the task is *fenced*, every host
/// call it makes traps and it is stopped, so a stale copy performs no
/// effect after another host may have started the task again.
///
/// Measured on the monotonic clock, which goes on while a process is
/// stopped, so a pause always counts.
#[derive(Debug)]
pub struct Lease {
    /// Milliseconds since [`lease_origin`] until which the lease holds.
    until_ms: AtomicU64,
}

/// The origin of leases' times: the first use in this process.
fn lease_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn lease_ms(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(lease_origin()).as_millis()).unwrap_or(u64::MAX)
}

impl Lease {
    /// A lease that holds for `valid` from `from`.
    pub(crate) fn new(from: Instant, valid: Duration) -> Lease {
        let lease = Lease {
            until_ms: AtomicU64::new(0),
        };
        lease.renew(from, valid);
        lease
    }

    /// Holds the lease until `valid` after `from` (never shortening it):
    /// `from` is when the renewal began, before the record was read, so
    /// the lease never outlasts what the other hosts were told.
    pub(crate) fn renew(&self, from: Instant, valid: Duration) {
        let until = lease_ms(from).saturating_add(u64::try_from(valid.as_millis()).unwrap_or(0));
        self.until_ms.fetch_max(until, Ordering::AcqRel);
    }

    /// Ends the lease now: the host knows another holds the task.
    pub(crate) fn revoke(&self) {
        self.until_ms.store(0, Ordering::Release);
    }

    pub(crate) fn holds(&self) -> bool {
        lease_ms(Instant::now()) < self.until_ms.load(Ordering::Acquire)
    }
}

impl CancelSignal {
    /// A signal for one attempt of a task with a time limit: the limit
    /// cancels and forces the attempt alone, so the task may be tried
    /// again, while a cancel of the task still stops the attempt.
    pub(crate) fn attempt_of(task: &Arc<CancelSignal>) -> CancelSignal {
        debug_assert!(task.parent.is_none(), "an attempt's signal is a task's");
        CancelSignal {
            parent: Some(task.clone()),
            ..CancelSignal::default()
        }
    }

    /// Puts the task under `lease` (the first one given stands).
    pub(crate) fn set_lease(&self, lease: Arc<Lease>) {
        let _ = self.lease.set(lease);
    }

    /// Whether the task runs under a lease (its own or its task's).
    pub(crate) fn is_leased(&self) -> bool {
        self.lease.get().is_some() || self.parent.as_ref().is_some_and(|p| p.is_leased())
    }

    /// Whether the task's lease (its own or its task's, for an attempt) is
    /// over: it may act no more.
    pub(crate) fn is_fenced(&self) -> bool {
        self.lease.get().is_some_and(|lease| !lease.holds())
            || self.parent.as_ref().is_some_and(|p| p.is_fenced())
    }

    pub(crate) fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::AcqRel) {
            self.changed.notify_waiters();
            let hook = self.hook().take();
            if let Some((hook, ticket)) = hook {
                hook.cancelled(ticket);
            }
            self.cancel_children();
        }
    }

    /// The task's own signal: this one, or for an attempt's, its task's.
    pub(crate) fn task(self: &Arc<Self>) -> &Arc<CancelSignal> {
        self.parent.as_ref().unwrap_or(self)
    }

    /// Makes `child` (given `grace` to stop) this task's child: cancelled
    /// with it. At once if this task is cancelled or has ended already.
    pub(crate) fn adopt(&self, child: Arc<CancelSignal>, grace: Duration) {
        let child = Child {
            signal: child,
            grace,
        };
        let mut children = self
            .children
            .get_or_init(Box::default)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Read under the lock `cancel_children` takes after the flag or
        // the end is set: either it finds the child, or this sees them.
        if self.own_cancel() || self.ended.get().is_some() {
            drop(children);
            child.cancel();
            return;
        }
        // Bounded by the live tasks: ended children go as new ones come.
        children.retain(|c| c.signal.end_state().is_none());
        children.push(child);
    }

    /// Cancels the task's children (each with its grace period); they are
    /// forgotten.
    pub(crate) fn cancel_children(&self) {
        let Some(children) = self.children.get() else {
            return;
        };
        let taken = std::mem::take(
            &mut *children
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for child in &taken {
            child.cancel();
        }
    }

    /// Cancels, recording when and with what grace period; the first
    /// cancel's record stands.
    pub(crate) fn cancel_with_grace(&self, grace: Duration) {
        let _ = self.asked.set((Instant::now(), grace));
        self.cancel();
    }

    /// When the task was asked to stop and with what grace period, if a
    /// cancel with a grace period reached it.
    pub(crate) fn asked(&self) -> Option<(Instant, Duration)> {
        self.asked.get().copied()
    }

    /// The task's kept log lines, made in `book` at the first call (an
    /// attempt's signal answers its task's).
    pub(crate) fn log(
        &self,
        book: &Arc<crate::task_log::LogBook>,
    ) -> &Arc<crate::task_log::TaskLog> {
        let task = self.parent.as_deref().unwrap_or(self);
        task.log.get_or_init(|| crate::task_log::TaskLog::new(book))
    }

    /// The task's kept log lines, if it logged any.
    pub(crate) fn kept_log(&self) -> Option<&Arc<crate::task_log::TaskLog>> {
        self.parent.as_deref().unwrap_or(self).log.get()
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.own_cancel() || self.parent.as_ref().is_some_and(|p| p.own_cancel())
    }

    fn own_cancel(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn own_force(&self) -> bool {
        self.forced.load(Ordering::Acquire)
    }

    /// Resolves once `done` holds, checked whenever the signal (or its
    /// task's) changes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what it waits for is a state, a new call sees it.
    async fn until(&self, done: impl Fn(&CancelSignal) -> bool) {
        match &self.parent {
            None => self.own_until(&done).await,
            Some(parent) => tokio::select! {
                () = self.own_until(&done) => {}
                () = parent.own_until(&done) => {}
            },
        }
    }

    async fn own_until(&self, done: &impl Fn(&CancelSignal) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so a change between
            // the two still wakes it.
            notified.as_mut().enable();
            if done(self) {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once `cancel` has been called (on it or its task's).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it loses nothing, a new call resolves as well.
    pub(crate) async fn cancelled(&self) {
        self.until(CancelSignal::own_cancel).await
    }

    /// Cancels and also interrupts the guest at the next epoch tick.
    pub(crate) fn force(&self) {
        self.forced.store(true, Ordering::Release);
        self.changed.notify_waiters();
        self.cancel();
    }

    pub(crate) fn is_forced(&self) -> bool {
        self.own_force() || self.parent.as_ref().is_some_and(|p| p.own_force())
    }

    /// Resolves once `force` has been called (on it or its task's).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`CancelSignal::cancelled`].
    pub(crate) async fn forced(&self) {
        self.until(CancelSignal::own_force).await
    }

    /// Tells `hook` of the first cancel (with `ticket`), or now if the
    /// task was cancelled already; it replaces a hook set before.
    pub(crate) fn on_cancel(&self, hook: Arc<dyn CancelHook>, ticket: u64) {
        let mut slot = self.hook();
        // Read under the lock `cancel` takes after setting the flag:
        // either it finds the hook, or this sees the flag.
        if self.own_cancel() {
            drop(slot);
            hook.cancelled(ticket);
        } else {
            *slot = Some((hook, ticket));
        }
    }

    /// Drops the hook set by [`CancelSignal::on_cancel`], untold.
    pub(crate) fn clear_on_cancel(&self) {
        self.hook().take();
    }

    fn hook(&self) -> std::sync::MutexGuard<'_, Option<(Arc<dyn CancelHook>, u64)>> {
        // A hook that panicked poisoned nothing it left half-done.
        self.on_cancel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records how the task ended (`None`: it was withdrawn without an
    /// end) and wakes who waits for it; the first call stands.
    pub(crate) fn set_ended(&self, state: Option<TaskState>) {
        if self.ended.set(state).is_ok() {
            self.changed.notify_waiters();
            self.cancel_children();
        }
    }

    /// The state the task ended in; none while it runs (or if withdrawn).
    pub(crate) fn end_state(&self) -> Option<TaskState> {
        self.ended.get().copied().flatten()
    }

    /// Resolves once [`CancelSignal::set_ended`] has been called.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the end is a state, a new call sees it.
    pub(crate) async fn ended(&self) {
        self.own_until(&|signal: &CancelSignal| signal.ended.get().is_some())
            .await
    }
}
