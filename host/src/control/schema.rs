//! The control API's bodies, one serde type each, shared by the server
//! (`control::api`) and the CLI's client, so the two cannot drift apart. A
//! task is [`TaskView`]; a stream item is [`LifecycleEvent`].
//!
//! [`TaskView`]: crate::task::TaskView
//! [`LifecycleEvent`]: crate::lifecycle::LifecycleEvent

use crate::task::{TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// `POST /v1/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub plugin: String,
    pub factory: String,
    /// The factory's arguments, any JSON (null when absent).
    #[serde(default)]
    pub args: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Default worker 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
    /// One task on every worker (not the main scope).
    #[serde(default)]
    pub all_workers: bool,
    /// Try it again after a failure: `{attempts, backoff?, initial?, max?,
    /// jitter?}` as in app.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::config::RetrySpec>,
    /// Record it in the app's storage before answering, and run it again
    /// after a crash until it ends (at least once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub durable: bool,
    /// Durable only: a second request with the same key answers with the
    /// first one's task (status 200, `created` false) and starts nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// In a cluster: `any` (one host, whichever NATS picks), `all` (every
    /// host present) or a host's name; absent, this host (docs/cluster.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Where `name` must be unique: `worker` (the default: its worker's
    /// registry) or `cluster` (every host's; claimed in NATS first).
    #[serde(default, skip_serializing_if = "NameScope::is_worker")]
    pub scope: NameScope,
}

/// Where a task's name must be unique.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameScope {
    #[default]
    Worker,
    Cluster,
}

impl NameScope {
    fn is_worker(&self) -> bool {
        *self == NameScope::Worker
    }
}

/// `GET /health`: `ok`, or `degraded` with what is wrong. Always 200 while
/// the host serves: a degraded host still runs its local work.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The answer to `POST /v1/tasks`: one entry per task started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Added {
    pub tasks: Vec<AddedTask>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddedTask {
    pub worker: WorkerId,
    pub id: TaskId,
    /// Its name (a durable task without one is named `durable-N`).
    #[serde(default)]
    pub name: Option<String>,
    /// False when an idempotency key named a task that existed.
    #[serde(default = "yes")]
    pub created: bool,
    /// The host it runs on, when the request named a `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

fn yes() -> bool {
    true
}

/// `POST /v1/tasks/cancel`; the answer is the ended tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub name: String,
    /// Default: every worker that has a task so named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
    /// How long to wait for the tasks to end (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The answer to `POST /v1/purge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purged {
    pub purged: usize,
}

/// `POST /v1/events/{event}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    #[serde(default)]
    pub payload: String,
    /// Dispatch only once at least this many tasks (host-wide) are waiting
    /// for some event, so a listener that is about to wait is not missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<usize>,
    /// How long `wait_for` may wait (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The answer to `POST /v1/events/{event}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Woken {
    pub woken: u32,
}

/// One loaded build of a plugin, in `GET /v1/plugins`: the build new tasks
/// start from (`serving`), or an older one still running the tasks that
/// started on it (`draining`), listed until its last task ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    /// The `taskhost:plugin` WIT version it was built against ("0.2.0",
    /// or "0.1.0" for a plugin built before key-value state).
    pub wit: String,
    pub state: BuildState,
    /// Tasks of this build that have not ended.
    pub live_tasks: usize,
    /// Bytes of data segments (the initial memory) in its core modules.
    pub data_bytes: u64,
    /// How a task gets that initial memory.
    pub memory_image: MemoryImage,
    pub factories: Vec<FactoryView>,
    /// The host it is loaded on, in a listing gathered from a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// How a plugin's tasks get their initial memory (see `engine.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryImage {
    /// Each task copies the data segments: a small plugin's few KiB.
    Copied,
    /// Each task maps the image and copies only the pages it writes: an
    /// interpreter's snapshot (Python, JavaScript).
    CopyOnWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Serving,
    Draining,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FactoryView {
    pub name: String,
    pub description: String,
}

/// `PUT /v1/plugins/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    pub path: PathBuf,
    /// Restart the plugin's startup tasks on the new build.
    #[serde(default)]
    pub restart_tasks: bool,
    /// Roll the build out to every host of the cluster (loaded here first,
    /// then put in the cluster's object store for the others).
    #[serde(default)]
    pub cluster: bool,
}

/// What one host of the cluster did with a rolled-out build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostBuild {
    pub host: String,
    /// The build it serves now; none if it did not answer in time.
    pub build: Option<String>,
    /// Why it refused the new build (the old one keeps serving there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `PUT /v1/plugins/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loaded {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    /// Startup tasks restarted on the new build.
    pub restarted: usize,
    /// With `cluster`: what each host present did with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout: Vec<HostBuild>,
}

/// Every error: `{"error": {"kind", "message"}}` with a 4xx/5xx status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub kind: String,
    pub message: String,
    /// With kind `limit`: the bound that was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitDetail>,
}

/// A [`crate::config::Limit`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitDetail {
    pub what: String,
    pub max: u64,
    pub got: u64,
    /// `bytes`, `tasks` or `keys`.
    pub unit: String,
    /// The `[limits]` key that sets the bound, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
}

impl From<&crate::config::Limit> for LimitDetail {
    fn from(limit: &crate::config::Limit) -> LimitDetail {
        LimitDetail {
            what: limit.what.clone(),
            max: limit.max,
            got: limit.got,
            unit: match limit.unit {
                crate::config::LimitUnit::Bytes => "bytes".into(),
                crate::config::LimitUnit::Tasks => "tasks".into(),
                crate::config::LimitUnit::Keys => "keys".into(),
                crate::config::LimitUnit::Schedules => "schedules".into(),
            },
            setting: limit.setting.map(str::to_string),
        }
    }
}

/// One bucket, as `GET /v1/kv` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvBucketView {
    /// `PLUGIN/NAME` for a plugin's own bucket, `NAME` for a shared one.
    pub bucket: String,
    pub keys: u64,
    /// Keys and values together.
    pub bytes: u64,
}

/// A page of a bucket's keys (`GET /v1/kv/{bucket}`), in byte order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvKeys {
    pub bucket: String,
    pub keys: Vec<String>,
    /// Pass as `?after=` for the next page; none after the last.
    pub next: Option<String>,
}

/// One value (`GET /v1/kv/{bucket}/{key}`): `text` when it is UTF-8 (JSON
/// a task stored is), else `base64`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvEntry {
    pub bucket: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// What `PUT /v1/kv/{bucket}/{key}` stores: exactly one of `text` (stored
/// as its UTF-8 bytes: write JSON for values tasks read with `get`) and
/// `base64`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KvPut {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// The answer to a `PUT` or `DELETE` of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvWritten {
    pub bucket: String,
    pub key: String,
    /// The value's size now: 0 after a `DELETE`.
    pub bytes: usize,
    /// Whether a `DELETE` removed a key (false: there was none).
    pub deleted: bool,
}

/// A schedule, as `GET /v1/schedules` and `taskhost schedules --json` show
/// it. Times are Unix milliseconds; `last_tick` is also RFC 3339 text, as
/// in task names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleView {
    pub name: String,
    pub plugin: String,
    pub factory: String,
    /// `every 30s`, or `cron "*/5 * * * *" (UTC)`.
    pub when: String,
    pub scope: crate::config::ScheduleScope,
    pub overlap: crate::config::Overlap,
    pub catch_up: crate::config::CatchUp,
    /// Added at run time by a guest, not app.toml.
    pub added: bool,
    pub paused: bool,
    /// None while paused.
    pub next_at_ms: Option<u64>,
    pub last_tick: Option<String>,
    /// The last run's task, and its state (none once purged).
    pub last_task: Option<String>,
    pub last_state: Option<crate::task::TaskState>,
    /// Runs started (ticks, triggers, catch-ups).
    pub runs: u64,
    /// Ticks that did not run: skipped by `overlap`, or missed while the
    /// host was down.
    pub misses: u64,
}

impl From<&crate::scheduler::ScheduleInfo> for ScheduleView {
    fn from(info: &crate::scheduler::ScheduleInfo) -> ScheduleView {
        ScheduleView {
            name: info.name.clone(),
            plugin: info.plugin.clone(),
            factory: info.factory.clone(),
            when: info.when.clone(),
            scope: info.scope,
            overlap: info.overlap,
            catch_up: info.catch_up,
            added: info.added,
            paused: info.paused,
            next_at_ms: info.next.map(crate::task::unix_millis),
            last_tick: info.last_tick.map(crate::config::tick_label),
            last_task: info.last_task.clone(),
            last_state: info.last_state,
            runs: info.runs,
            misses: info.misses,
        }
    }
}

/// The answer to `POST /v1/schedules/{name}/trigger`: the tasks started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Triggered {
    pub schedule: String,
    pub tasks: Vec<String>,
}
