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
    /// The worker it runs on: an index, or `"main"`.
    pub worker: WorkerId,
    /// The task's name, or its id when it has none.
    pub task: String,
    /// Its id on the host that runs it: tells apart tasks of one name on
    /// several workers, or over time.
    pub task_id: TaskId,
    /// The plugin it was started from.
    pub plugin: String,
    /// The factory it runs.
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
    /// The task waits in queue `queue` until the queue lets it start.
    Queued {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// The queue's name (`[[queues]]`).
        queue: String,
        /// Its key in the queue, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// Its priority, if not 0 (higher starts first).
        #[serde(default, skip_serializing_if = "is_zero")]
        priority: i32,
        /// When it may start, if delayed (RFC 3339, UTC).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_at: Option<String>,
    },
    /// The task's factory is about to run on build `version`.
    Started {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// The build it runs on: `sha256:` and 12 hex digits of the component's
        /// hash.
        version: String,
    },
    /// The factory returned a result.
    Done {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// The factory's result, as JSON text.
        result: String,
        /// Wall time from the task's first attempt (instantiation included) to
        /// its end, retries and their delays included; microsecond precision.
        elapsed_ms: f64,
    },
    /// The task ended `failed`: its factory returned an error, it trapped, or
    /// it could not start.
    Failed {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// The factory's error message, or the trap with its wasm backtrace.
        error: String,
        /// Wall time from the task's first attempt to its end, as for `done`.
        elapsed_ms: f64,
    },
    /// The task ended because it was cancelled.
    Cancelled {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// Whether it returned on its own or had to be interrupted.
        stage: CancelStage,
        /// Wall time from the task's first attempt to its end, as for `done`.
        elapsed_ms: f64,
    },
    /// An attempt failed and the task's retry policy allows another:
    /// `attempt` (the next one) starts after `delay_ms`, in a fresh
    /// instance.
    Retrying {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// The attempt about to run: 2 for the first retry.
        attempt: u32,
        /// How long the task waits before it, in milliseconds (microsecond
        /// precision): the policy's backoff and jitter.
        delay_ms: f64,
        /// Why the attempt before it failed.
        error: String,
    },
    /// A supervised task's run ended and its `restart` policy starts it
    /// again: restart `restart` runs after `delay_ms`, in a fresh instance,
    /// with the same name, id and arguments.
    Restarting {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// Which restart this is: 1 for the first.
        restart: u32,
        /// How long the task waits before it, in milliseconds (microsecond
        /// precision): the policy's backoff.
        delay_ms: f64,
        /// Why the run ended: its error if it failed; none if it returned
        /// a result (`restart = "always"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A newer build of the task's plugin was loaded and the task (with
    /// `on_load = "restart"`) stopped on its old one: it starts again on
    /// build `version`, the same task, in a fresh instance.
    Reloaded {
        /// Which task.
        #[serde(flatten)]
        task: TaskRef,
        /// The build it ran on.
        from: String,
        /// The build it runs on now.
        version: String,
    },
    /// A build of `plugin` was loaded; new tasks start from it.
    PluginLoaded {
        /// The plugin's name.
        plugin: String,
        /// The new build: `sha256:` and 12 hex digits of the component's hash.
        version: String,
        /// The component file it was loaded from.
        path: PathBuf,
        /// The build it replaces, which drains its running tasks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    /// A new build of `plugin` was refused; the loaded one keeps serving.
    PluginRefused {
        /// The plugin's name.
        plugin: String,
        /// The component file that was refused.
        path: PathBuf,
        /// Why: the build, compile or link error.
        error: String,
    },
    /// An older build of `plugin`, replaced by a newer one, ran its last
    /// task and was dropped.
    PluginDropped {
        /// The plugin's name.
        plugin: String,
        /// The dropped build: `sha256:` and 12 hex digits of its hash.
        version: String,
    },
    /// Schedule `schedule` started `tasks` for its tick at `tick` (RFC
    /// 3339, UTC), on its timer, by an operator's trigger, or to catch up
    /// ticks missed while the host was down.
    ScheduleFired {
        /// The schedule's name.
        schedule: String,
        /// The tick the run is for: RFC 3339, UTC, to the millisecond, as in
        /// its tasks' names.
        tick: String,
        /// Why it ran now: its time came, a trigger, a catch-up or a queued
        /// tick.
        trigger: ScheduleTrigger,
        /// The names of the tasks it started (`NAME@TICK`); empty when none
        /// could start.
        tasks: Vec<String>,
    },
    /// Schedule `schedule` did not run for `missed` tick(s), the last at
    /// `tick`: its previous run was still going (`overlap = "skip"`), a
    /// run was already waiting for it (`overlap = "queue"`), the host was
    /// down (`catch_up`), or the host got to the tick too late.
    ScheduleMissed {
        /// The schedule's name.
        schedule: String,
        /// The last tick missed: RFC 3339, UTC, to the millisecond.
        tick: String,
        /// How many ticks this event counts: more than 1 only after a
        /// downtime or a stall.
        missed: u64,
        /// Why they did not run, for people: the `overlap` or `catch_up` at
        /// work, or a host that got to them too late.
        reason: String,
    },
    /// The follower fell behind and `missed` events were lost to it. Only
    /// on the stream.
    Lagged {
        /// How many events the follower will never see.
        missed: u64,
    },
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
    /// The snake_case name the wire and the logs use (`tick`, `catch_up`, ...).
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

fn is_zero(value: &i32) -> bool {
    *value == 0
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
