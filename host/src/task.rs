//! The vocabulary of a task's life: who it is, what state it is in, how it
//! ended, and the signal that asks it to stop.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// A task's id: unique across all workers of a host, never reused.
pub type TaskId = u64;

/// Where a task runs: a worker, or the main scope that runs before workers.
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

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerId::Main => f.write_str("main"),
            WorkerId::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Everything that identifies a task in logs and listings. Fixed at spawn.
#[derive(Debug, Clone)]
pub struct TaskIdent {
    pub id: TaskId,
    pub name: Option<String>,
    pub worker: WorkerId,
    pub plugin: Arc<str>,
    pub plugin_version: Arc<str>,
    pub factory: String,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
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
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelStage {
    /// The task saw `cancelled` from a host call and returned.
    Cooperative,
    /// The task did not end within the grace period and was interrupted.
    Forced,
}

impl CancelStage {
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
        result: String,
    },
    /// Why it failed: the factory's error, or the trap with its wasm
    /// backtrace.
    Failed {
        error: String,
    },
    Cancelled {
        stage: CancelStage,
    },
}

impl Outcome {
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
    pub ident: Arc<TaskIdent>,
    pub state: TaskState,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    /// Set once the task has ended.
    pub outcome: Option<Outcome>,
}

/// Asks one task to stop, in two stages.
///
/// `cancel` is cooperative: blocked host calls wake with `cancelled` and
/// every later one fails the same way. `force` is for tasks that do not
/// listen: the store's epoch callback sees it and interrupts the guest at
/// the next tick, even in a loop with no host calls.
#[derive(Debug, Default)]
pub struct CancelSignal {
    token: CancellationToken,
    /// Checked by the epoch callback every tick: an atomic load, not a lock.
    forced: AtomicBool,
    /// Wakes a call blocked in a host function (where epochs do not reach)
    /// so the runner can drop it.
    forced_token: CancellationToken,
}

impl CancelSignal {
    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once `cancel` has been called.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Cancels and also interrupts the guest at the next epoch tick.
    pub fn force(&self) {
        self.forced.store(true, Ordering::Release);
        self.token.cancel();
        self.forced_token.cancel();
    }

    pub fn is_forced(&self) -> bool {
        self.forced.load(Ordering::Acquire)
    }

    /// Resolves once `force` has been called.
    pub async fn forced(&self) {
        self.forced_token.cancelled().await
    }
}
