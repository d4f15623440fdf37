//! Lifecycle events: how tasks start and end and how plugin builds come and
//! go, as one serde type. The control API streams them (`GET /v1/stream`,
//! `taskhost stream`), and the JSON log writes the same fields on its
//! lifecycle lines, so a script reads either with one decoder.

use crate::task::{CancelStage, TaskId, TaskIdent, WorkerId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Which task a lifecycle event is about: the fields every task line of the
/// log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRef {
    pub worker: WorkerId,
    /// The task's name, or its id when it has none.
    pub task: String,
    pub task_id: TaskId,
    pub plugin: String,
    pub factory: String,
    /// The websocket connection the task serves (`[[routes]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<u64>,
}

impl From<&TaskIdent> for TaskRef {
    fn from(ident: &TaskIdent) -> TaskRef {
        TaskRef {
            worker: ident.worker,
            task: ident.label(),
            task_id: ident.id,
            plugin: ident.plugin.to_string(),
            factory: ident.factory.clone(),
            connection: ident.connection,
        }
    }
}

/// One step in the life of a task or a plugin build, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// The stream is attached: a follower that waits for it misses nothing
    /// that happens afterwards. Only on the stream, never in the log.
    Subscribed,
    /// The task's factory is about to run on build `version`.
    Started {
        #[serde(flatten)]
        task: TaskRef,
        version: String,
    },
    Done {
        #[serde(flatten)]
        task: TaskRef,
        /// The factory's result, as JSON text.
        result: String,
        elapsed_ms: f64,
    },
    Failed {
        #[serde(flatten)]
        task: TaskRef,
        error: String,
        elapsed_ms: f64,
    },
    Cancelled {
        #[serde(flatten)]
        task: TaskRef,
        stage: CancelStage,
        elapsed_ms: f64,
    },
    /// An attempt failed and the task's retry policy allows another:
    /// `attempt` (the next one) starts after `delay_ms`, in a fresh
    /// instance.
    Retrying {
        #[serde(flatten)]
        task: TaskRef,
        attempt: u32,
        delay_ms: f64,
        error: String,
    },
    /// A build of `plugin` was loaded; new tasks start from it.
    PluginLoaded {
        plugin: String,
        version: String,
        path: PathBuf,
        /// The build it replaces, which drains its running tasks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    /// A new build of `plugin` was refused; the loaded one keeps serving.
    PluginRefused {
        plugin: String,
        path: PathBuf,
        error: String,
    },
    /// An older build of `plugin`, replaced by a newer one, ran its last
    /// task and was dropped.
    PluginDropped { plugin: String, version: String },
    /// Schedule `schedule` started `tasks` for its tick at `tick` (RFC
    /// 3339, UTC), on its timer, by an operator's trigger, or to catch up
    /// ticks missed while the host was down.
    ScheduleFired {
        schedule: String,
        tick: String,
        trigger: ScheduleTrigger,
        tasks: Vec<String>,
    },
    /// Schedule `schedule` did not run for `missed` tick(s), the last at
    /// `tick`: its previous run was still going (`overlap = "skip"`), or
    /// the host was down (`catch_up`).
    ScheduleMissed {
        schedule: String,
        tick: String,
        missed: u64,
        reason: String,
    },
    /// The follower fell behind and `missed` events were lost to it. Only
    /// on the stream.
    Lagged { missed: u64 },
}

/// Why a schedule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleTrigger {
    /// Its time came.
    Tick,
    /// `taskhost schedule trigger` (or the API).
    Manual,
    /// A tick missed while the host was down (`catch_up`).
    CatchUp,
    /// A tick that waited for the previous run (`overlap = "queue"`).
    Queued,
}

impl ScheduleTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleTrigger::Tick => "tick",
            ScheduleTrigger::Manual => "manual",
            ScheduleTrigger::CatchUp => "catch_up",
            ScheduleTrigger::Queued => "queued",
        }
    }
}

/// Milliseconds with microsecond precision, without float noise.
pub fn millis(elapsed: Duration) -> f64 {
    elapsed.as_micros() as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_event_is_flat_with_its_tag() {
        let event = LifecycleEvent::Cancelled {
            task: TaskRef {
                worker: WorkerId::Main,
                task: "t".into(),
                task_id: 7,
                plugin: "p".into(),
                factory: "f".into(),
                connection: None,
            },
            stage: CancelStage::Forced,
            elapsed_ms: 1.5,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "cancelled", "worker": "main", "task": "t",
                "task_id": 7, "plugin": "p", "factory": "f", "stage": "forced",
                "elapsed_ms": 1.5})
        );
        assert_eq!(
            serde_json::from_value::<LifecycleEvent>(json).unwrap(),
            event
        );
    }
}
