use crate::__private::bindings::taskhost::plugin::types;
use serde::Serialize;

/// A snapshot of one task of the caller's worker (Sanic's `app.get_task`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// Unique in the host, never reused.
    pub id: u64,
    pub name: Option<String>,
    pub plugin: String,
    /// Content hash of the plugin build the task runs on.
    pub plugin_version: String,
    pub factory: String,
    /// Worker index; `None` for `scope = "main"` tasks.
    pub worker: Option<u32>,
    pub state: TaskState,
    /// Unix time in milliseconds.
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    /// The result (JSON text) of a `done` task.
    pub result: Option<String>,
    /// Why a `failed` task failed.
    pub error: Option<String>,
    /// How a `cancelled` task was stopped.
    pub cancel_stage: Option<CancelStage>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TaskState {
    /// Waiting in a queue until the queue lets it start.
    Queued,
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl TaskInfo {
    /// The result of a `done` task, decoded from its JSON text; an
    /// [`Error`] naming the task's state (and why it failed) otherwise.
    pub fn result_as<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        match (&self.state, &self.result) {
            (TaskState::Done, Some(result)) => serde_json::from_str(result).map_err(|e| {
                crate::Error::msg(format!(
                    "the result of task {} ({}) is not what was asked for: {e}",
                    self.id, self.factory
                ))
            }),
            _ => Err(crate::Error::msg(format!(
                "task {} ({}) is {}{}",
                self.id,
                self.factory,
                self.state.as_str(),
                self.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ))),
        }
    }
}

impl TaskState {
    /// Its name, as the host and the logs write it (`running`, ...).
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

    /// Done, failed or cancelled.
    pub fn is_ended(self) -> bool {
        matches!(
            self,
            TaskState::Done | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// Which stage of cancellation ended a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelStage {
    /// It returned after a host call told it `cancelled`.
    Cooperative,
    /// It did not end within the grace period and was interrupted.
    Forced,
}

impl From<types::TaskInfo> for TaskInfo {
    fn from(info: types::TaskInfo) -> Self {
        TaskInfo {
            id: info.id,
            name: info.name,
            plugin: info.plugin,
            plugin_version: info.plugin_version,
            factory: info.factory,
            worker: info.worker,
            state: match info.state {
                types::TaskState::Queued => TaskState::Queued,
                types::TaskState::Pending => TaskState::Pending,
                types::TaskState::Running => TaskState::Running,
                types::TaskState::Done => TaskState::Done,
                types::TaskState::Failed => TaskState::Failed,
                types::TaskState::Cancelled => TaskState::Cancelled,
            },
            created_at_ms: info.created_at_ms,
            started_at_ms: info.started_at_ms,
            ended_at_ms: info.ended_at_ms,
            result: info.result,
            error: info.error,
            cancel_stage: info.cancel_stage.map(|stage| match stage {
                types::CancelStage::Cooperative => CancelStage::Cooperative,
                types::CancelStage::Forced => CancelStage::Forced,
            }),
        }
    }
}
