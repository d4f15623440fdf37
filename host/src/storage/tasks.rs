//! Durable tasks: the record of every `durable = true` task, written before
//! its submission is acknowledged and kept until its outcome has been
//! retained long enough, so a host that died (`kill -9`, a power cut, a
//! graceful stop) runs the unfinished ones again at its next start.
//!
//! At-least-once: a task that was running when the host died runs again
//! from its start, with its attempt number one higher. A task whose
//! outcome was recorded never runs again. The guest can tell a re-run by
//! `app.attempt()` and make its effects idempotent with
//! `app.idempotency-key()`.

use super::journal::JournalStep;
use crate::config::RetrySpec;
use crate::task::{CancelStage, Outcome, WorkerId};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// What a [`TaskStore`] call returns.
pub type TaskStoreFuture<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// Where a durable task waits before it starts, as stored: its queue, its
/// key (as resolved at submission), its priority and, if delayed, when it
/// may start. A restart puts it back in its queue, in submission order,
/// keeping its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The queue (`[[queues]]`).
    pub queue: String,
    /// Its key there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its priority.
    #[serde(default)]
    pub priority: i32,
    /// When it may start (Unix ms), if delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_ms: Option<u64>,
}

impl Queued {
    /// The placement it enters its queue with again.
    pub fn placement(&self) -> crate::config::Placement {
        crate::config::Placement {
            queue: self.queue.clone(),
            key: self.key.clone(),
            priority: self.priority,
            start: self.run_at_ms.map(|ms| {
                crate::config::StartAt::At(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
            }),
        }
    }
}

/// A durable task as submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// None: the store names it `durable-SEQ`, a name that survives the
    /// restart (task ids do not).
    pub name: Option<String>,
    /// The worker it was submitted to; a re-run goes to the worker of that
    /// index (modulo the workers there are then).
    pub worker: WorkerId,
    /// The plugin it starts from.
    pub plugin: String,
    /// The build it was submitted on (a re-run uses the build loaded then).
    pub plugin_version: String,
    /// The factory it runs.
    pub factory: String,
    /// Its arguments, as JSON text.
    pub args: String,
    /// Its retry policy as written, so a re-run retries the same way.
    pub retry: Option<RetrySpec>,
    /// A second submission with the same key gets the first one's record
    /// instead of a new task.
    pub idempotency_key: Option<String>,
    /// Where it waits first, if it was submitted to a queue.
    pub queued: Option<Queued>,
    /// Its first attempt starts now: it is recorded as attempt 1. True for
    /// a task not queued, and for a queued one its queue gives its turn at
    /// its submission; else it is recorded with no attempt, and its first
    /// is counted at its turn.
    pub started: bool,
    /// The trace its runs join (a W3C `traceparent`: the webhook request's
    /// or parent task's span), so a run after a restart or on another host
    /// continues the same trace.
    pub traceparent: Option<String>,
    /// It resumes after a crash from its journal (`durable = "resume"`)
    /// instead of running again from its start.
    pub resume: bool,
}

/// How a submission went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Recorded, as attempt 1.
    New(TaskRecord),
    /// A task with the same idempotency key exists: nothing was written.
    Existing(TaskRecord),
}

/// A durable task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Its number in the store, fixed for its life.
    pub seq: u64,
    /// Its name: the one submitted, or `durable-SEQ`; how a restart's listing
    /// and a cancel find it.
    pub name: String,
    /// The worker it was submitted to; a re-run goes to the worker of that
    /// index (modulo the workers there are then).
    pub worker: WorkerId,
    /// The plugin it starts from.
    pub plugin: String,
    /// The build it was submitted on: `sha256:` and 12 hex digits.
    pub plugin_version: String,
    /// The factory it runs.
    pub factory: String,
    /// Its arguments, as JSON text.
    pub args: String,
    /// Its retry policy as written.
    pub retry: Option<RetrySpec>,
    /// The key it was submitted with; none: [`TaskRecord::effective_key`] makes
    /// one from `seq`.
    pub idempotency_key: Option<String>,
    /// Attempts started so far (the one running included).
    pub attempt: u32,
    /// Its outcome once recorded; none while it has to run (again).
    pub outcome: Option<Outcome>,
    /// A cancel was asked for and recorded: the next start does not run
    /// it again even if it had not ended.
    pub cancel_requested: bool,
    /// When it was recorded (Unix ms).
    pub created_ms: u64,
    /// When its outcome was recorded (Unix ms); none while it has to run.
    pub ended_ms: Option<u64>,
    /// Where it waits before it starts, if it was submitted to a queue.
    pub queued: Option<Queued>,
    /// The trace its runs join ([`NewTask::traceparent`]).
    pub traceparent: Option<String>,
    /// It resumes from its journal ([`NewTask::resume`]).
    pub resume: bool,
}

impl TaskRecord {
    /// The key the guest sees: the one it was submitted with, or one made
    /// from the record's number, stable across restarts.
    pub fn effective_key(&self) -> String {
        self.idempotency_key
            .clone()
            .unwrap_or_else(|| format!("durable-{}", self.seq))
    }
}

/// A backend for durable task records.
pub trait TaskStore: Send + Sync + 'static {
    /// Records a new task, or returns the one already submitted with the
    /// same idempotency key. Taken whole: a store keeps its strings (the
    /// SQLite store hands them to its thread), so none is copied.
    fn submit(&self, task: NewTask) -> TaskStoreFuture<'_, Submitted>;

    /// Drops the record of a task that never ran (its factory refused its
    /// arguments, or its name was taken).
    fn forget(&self, seq: u64) -> TaskStoreFuture<'_, ()>;

    /// Attempt `attempt` is about to start.
    fn attempt_started(&self, seq: u64, attempt: u32) -> TaskStoreFuture<'_, ()>;

    /// A cancel was asked for: from now on the task is not run again.
    fn cancel_requested(&self, seq: u64) -> TaskStoreFuture<'_, ()>;

    /// The task ended with `outcome`; `stopped` says it had been asked to
    /// stop. A task stopped by a cancel nobody recorded through
    /// [`TaskStore::cancel_requested`] (the host stopping, a plugin's
    /// startup tasks restarted) has not ended unless it is done, whatever
    /// it returned on the way out: the record stays unfinished and the call
    /// returns `false`.
    fn ended<'a>(
        &'a self,
        seq: u64,
        outcome: &'a Outcome,
        stopped: bool,
    ) -> TaskStoreFuture<'a, bool>;

    /// Every task whose end is not recorded, oldest first, that the host
    /// must start again itself at launch (or, if its cancel was recorded,
    /// record as cancelled). None from a backend that
    /// [redelivers](TaskStore::redelivers) them.
    fn unfinished(&self) -> TaskStoreFuture<'_, Vec<TaskRecord>>;

    /// Whether the backend itself brings unfinished tasks back to a host
    /// that runs them (a cluster's queue redelivers them, to this host or
    /// another), so that [`TaskStore::unfinished`] lists none. False (the
    /// default) for one host's file, read at launch.
    fn redelivers(&self) -> bool {
        false
    }

    /// The `limit` most recently ended tasks, oldest first.
    fn recently_ended(&self, limit: usize) -> TaskStoreFuture<'_, Vec<TaskRecord>>;

    /// Drops every ended record; returns how many.
    fn purge_ended(&self) -> TaskStoreFuture<'_, u64>;

    /// The lease under which this host runs task `seq`, for a backend
    /// where another host may run it again (a cluster): taken when the
    /// task starts here, renewed while this host holds its record. None
    /// (the default) where no other host can: one host's SQLite file.
    fn lease(&self, seq: u64) -> Option<std::sync::Arc<crate::task::Lease>> {
        let _ = seq;
        None
    }

    /// Whether the backend keeps journals ([`super::journal`]): a task
    /// that resumes is refused where it does not.
    fn keeps_journals(&self) -> bool {
        false
    }

    /// Appends `steps` to task `seq`'s journal; their indexes follow the
    /// last one recorded. Committed when the future is `Ok`.
    fn append_steps(&self, seq: u64, steps: Vec<JournalStep>) -> TaskStoreFuture<'_, ()> {
        let _ = (seq, steps);
        Box::pin(async { Err(super::journal::NoJournals.into()) })
    }

    /// Empties task `seq`'s journal (its retry starts afresh).
    fn clear_steps(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        let _ = seq;
        Box::pin(async { Ok(()) })
    }

    /// Task `seq`'s journal, in order; empty when it has none.
    fn steps(&self, seq: u64) -> TaskStoreFuture<'_, Vec<JournalStep>> {
        let _ = seq;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Keeps `component`, build `version` (`sha256:...`, as
    /// [`crate::task::TaskIdent::plugin_version`]) of plugin `plugin`, so
    /// that a task resuming from its journal runs again on the build it
    /// began with ([`super::journal`]); nothing when it is kept already.
    /// A backend that keeps no journals keeps no builds.
    fn keep_build(
        &self,
        plugin: &str,
        version: &str,
        component: Vec<u8>,
    ) -> TaskStoreFuture<'_, ()> {
        let _ = (plugin, version, component);
        Box::pin(async { Ok(()) })
    }

    /// The component of build `version`, if it is kept.
    fn kept_build(&self, version: &str) -> TaskStoreFuture<'_, Option<Vec<u8>>> {
        let _ = version;
        Box::pin(async { Ok(None) })
    }

    /// Drops the kept builds that neither are in `serving` (the versions
    /// loaded now) nor began an unfinished task that resumes; returns how
    /// many went.
    fn drop_builds(&self, serving: Vec<String>) -> TaskStoreFuture<'_, u64> {
        let _ = serving;
        Box::pin(async { Ok(0) })
    }
}

/// How an outcome is stored: state, result, error, cancel stage.
pub(crate) fn outcome_columns(
    outcome: &Outcome,
) -> (
    &'static str,
    Option<&str>,
    Option<&str>,
    Option<&'static str>,
) {
    match outcome {
        Outcome::Done { result } => ("done", Some(result), None, None),
        Outcome::Failed { error } => ("failed", None, Some(error), None),
        Outcome::Cancelled { stage } => ("cancelled", None, None, Some(stage.as_str())),
    }
}

/// An outcome read back from its columns; none for an unfinished task.
pub(crate) fn outcome_from_columns(
    state: &str,
    result: Option<String>,
    error: Option<String>,
    stage: Option<String>,
) -> Option<Outcome> {
    match state {
        "done" => Some(Outcome::Done {
            result: result.unwrap_or_default(),
        }),
        "failed" => Some(Outcome::Failed {
            error: error.unwrap_or_default(),
        }),
        "cancelled" => Some(Outcome::Cancelled {
            stage: match stage.as_deref() {
                Some("forced") => CancelStage::Forced,
                _ => CancelStage::Cooperative,
            },
        }),
        _ => None,
    }
}
