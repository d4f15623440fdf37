//! The requests and answers of every operation (`super`), one serde type
//! each, and the one error type they fail with. The same types are the
//! control API's JSON bodies, what the CLI's client sends, and what hosts of
//! a cluster send each other, so no caller copies a request by hand and the
//! wire cannot drift from the code. A task is [`TaskView`]; a stream item
//! is [`LifecycleEvent`].
//!
//! This module sits low in the layers (beside `logging`) so that the parts
//! a guest reaches (the `app` interface, the worker) can name a
//! [`Submission`] and an [`OpError`] without reaching up to the operations
//! themselves.
//!
//! [`TaskView`]: crate::task::TaskView
//! [`LifecycleEvent`]: crate::lifecycle::LifecycleEvent

use crate::task::{TaskId, WorkerId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// A task to start: `POST /v1/tasks`, `taskhost add`, a guest's
/// `start-task-on`, and a host of the cluster asking this one. A new
/// submission option is one field here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// The loaded plugin to start it from (`NAME` of its `[plugins.NAME]`);
    /// `unknown_plugin` if none.
    pub plugin: String,
    /// One of that plugin's factories (`GET /v1/plugins` lists them);
    /// `unknown_factory` if none.
    pub factory: String,
    /// The factory's arguments, any JSON (null when absent).
    #[serde(default)]
    pub args: Value,
    /// The task's name, unique within `scope`; none leaves it unnamed (listed
    /// by id), except a durable task, which is named `durable-N`.
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
    /// Start it again once it ends: `"always"`, `"on-failure"`, or
    /// `{when, intensity?, period?, initial?, max?}` as in app.toml. Not
    /// with `durable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<crate::config::RestartSpec>,
    /// What a newer build of its plugin does to it: `drain` (it finishes
    /// on its build) or `restart` (it moves to the new one); absent, the
    /// plugin's `on_load`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_load: Option<crate::config::OnLoad>,
    /// Record it in the app's storage before answering, and run it again
    /// after a crash until it ends: `true` (or `"rerun"`: from its start,
    /// at least once) or `"resume"` (from the journal of its host calls).
    #[serde(default, skip_serializing_if = "crate::config::Durability::is_none")]
    pub durable: crate::config::Durability,
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
    /// The queue it waits in until the queue lets it start (`[[queues]]`);
    /// absent, it starts at once or is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Its key in its queue (per-key bounds, fairness between keys,
    /// dedupe); absent, the queue's `key_arg` names it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// From -100 to 100, higher starts first; absent, 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Start no sooner than this after it is submitted (`"10m"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Start no sooner than this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// A W3C `traceparent`: the task's span joins that trace, under that
    /// span (`[telemetry]`; ignored without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Submission {
    /// The task each chosen worker starts.
    pub fn spec(&self) -> Result<crate::config::TaskSpec, OpError> {
        let retry = self
            .retry
            .as_ref()
            .map(crate::config::RetrySpec::policy)
            .transpose()
            .map_err(|e| OpError::bad_request(format!("retry: {e:#}")))?;
        let restart = self
            .restart
            .as_ref()
            .map(crate::config::RestartSpec::policy)
            .transpose()
            .map_err(|e| OpError::bad_request(format!("restart: {e:#}")))?;
        if let Some(restart) = &restart {
            crate::config::check_restart(restart, self.durable.is_durable())
                .map_err(|e| OpError::bad_request(format!("restart: {e:#}")))?;
        }
        Ok(crate::config::TaskSpec {
            factory: self.factory.clone(),
            args: self.args.to_string(),
            name: self.name.clone(),
            retry,
            restart,
            on_load: self.on_load,
            durable: self.durable.is_durable(),
            resume: self.durable == crate::config::Durability::Resume,
            idempotency_key: self.idempotency_key.clone(),
            connection: None,
            queue: crate::config::QueueOptions {
                queue: self.queue.as_deref(),
                key: self.key.as_deref(),
                priority: self.priority,
                delay: self.delay.as_deref(),
                run_at: self.run_at.as_deref(),
            }
            .placement()
            .map_err(OpError::bad_request)?,
            parent: None,
            trace: self
                .traceparent
                .as_deref()
                .map(|header| {
                    crate::trace_context::TraceParent::parse(header).ok_or_else(|| {
                        OpError::bad_request(format!(
                            "traceparent {header:?} is not a W3C traceparent \
                             (00-<32 hex>-<16 hex>-<2 hex>)"
                        ))
                    })
                })
                .transpose()?,
        })
    }
}

/// Where a task's name must be unique.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameScope {
    /// Unique in the registry of the worker it runs on; an ended task keeps its
    /// name until purged.
    #[default]
    Worker,
    /// Unique across every host of the cluster: claimed in NATS before the task
    /// starts, freed when it is purged or its host leaves.
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
    /// What is wrong, one sentence each; empty while `status` is `ok`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// The answer to a [`Submission`]: one entry per task started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submitted {
    /// One per task: one for a plain submission, one per worker with
    /// `all_workers`, one per host that started one with `host`.
    pub tasks: Vec<SubmittedTask>,
}

impl Submitted {
    /// Whether any task was created (a durable submission whose key named
    /// an existing task created none: the control API answers 200, not 201).
    pub fn created(&self) -> bool {
        self.tasks.iter().any(|t| t.created)
    }
}

/// One task a [`Submission`] started (or found, by idempotency key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmittedTask {
    /// The worker it was placed on (on its host, with `host`).
    pub worker: WorkerId,
    /// Its id on the host that runs it: unique on that host, not across a
    /// cluster.
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
    /// The name of the tasks to cancel; a task without a name cannot be
    /// cancelled this way.
    pub name: String,
    /// Default: every worker that has a task so named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
    /// How long to wait for the tasks to end (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/tasks/wait`: which task to wait for (its `id`, or its
/// `name`), and how long. The answer is the task once it has ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    /// The task's id on this host; or give `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// The task's name; if tasks of several workers have it, give
    /// `worker` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// With `name`: the worker whose task it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
    /// How long to wait (default 10 s, at most an hour); past it the
    /// answer is 504 `timeout` and the task goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `GET /v1/summary`: this host's tasks counted, for the dashboard's
/// overview, without sending the tasks themselves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskSummary {
    /// Tasks in the registries now, by state (every state named, zero
    /// included).
    pub states: std::collections::BTreeMap<String, usize>,
    /// Tasks that ended `failed` in the last hour (of those still kept).
    pub failed_last_hour: usize,
    /// Tasks that ended `done` in the last minute (of those still kept).
    pub done_last_minute: usize,
}

/// The answer to `POST /v1/purge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Purged {
    /// How many ended tasks were dropped from the workers' registries (the
    /// ended durable records dropped with them are not counted).
    pub purged: usize,
}

/// `POST /v1/events/{event}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchRequest {
    /// The text each woken task receives (empty by default), at most
    /// `[limits] event_payload_bytes`.
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
    /// How many waiting tasks the event woke (0 if none waited for it).
    pub woken: u32,
}

/// One loaded build of a plugin, in `GET /v1/plugins`: the build new tasks
/// start from (`serving`), or an older one still running the tasks that
/// started on it (`draining`), listed until its last task ends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginView {
    /// The plugin's name: `NAME` of its `[plugins.NAME]`, or the one a hot-load
    /// gave.
    pub name: String,
    /// `sha256:` and the first 12 hex digits of the component file's hash.
    pub version: String,
    /// The component file it was loaded from, as the host reads it.
    pub path: PathBuf,
    /// The `taskhost:plugin` WIT version it was built against ("0.4.0",
    /// "0.3.0" for a plugin built before joins, "0.2.0" before queues, or
    /// "0.1.0" before key-value state).
    pub wit: String,
    /// Whether new tasks start from it (`serving`) or it only runs older tasks
    /// out (`draining`).
    pub state: BuildState,
    /// Tasks of this build that have not ended.
    pub live_tasks: usize,
    /// Bytes of data segments (the initial memory) in its core modules.
    pub data_bytes: u64,
    /// How a task gets that initial memory.
    pub memory_image: MemoryImage,
    /// What tasks can be started from it, in the plugin's own order.
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

/// Whether a loaded build still starts new tasks (`state` in
/// `GET /v1/plugins`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// New tasks of the plugin start from this build: the last one loaded.
    Serving,
    /// Replaced by a newer build; still runs the tasks that started on it,
    /// listed until the last ends.
    Draining,
}

/// One factory of a plugin, as `GET /v1/plugins` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FactoryView {
    /// What `factory` names in app.toml, a submission or a schedule.
    pub name: String,
    /// One line on what its tasks do: the plugin says it (the SDK takes the
    /// first line of the function's doc comment).
    pub description: String,
}

/// `PUT /v1/plugins/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// The component file to load, read by the host (not the caller), so a
    /// relative path is the host's; the CLI sends it absolute.
    pub path: PathBuf,
    /// Restart the plugin's startup tasks on the new build (with
    /// `cluster`, on every host). Tasks with `on_load = "restart"` move to
    /// it anyway.
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
    /// The host's name (`[cluster] host`, by default its hostname).
    pub host: String,
    /// Startup tasks it restarted on the build (`restart_tasks`).
    #[serde(default)]
    pub restarted: usize,
    /// The build it serves now; none if it did not answer in time.
    pub build: Option<String>,
    /// Why it refused the new build (the old one keeps serving there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `PUT /v1/plugins/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Loaded {
    /// The plugin's name.
    pub name: String,
    /// The new build's version: `sha256:` and 12 hex digits of the file's hash.
    pub version: String,
    /// The component file it was loaded from.
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
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`]: which kind of error, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The kind's wire name ([`ErrorKind::wire`]): `not_found`, `limit`, ...;
    /// callers branch on it.
    pub kind: String,
    /// For people: names the thing at fault; callers should not parse it.
    pub message: String,
    /// With kind `limit`: the bound that was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<LimitDetail>,
}

/// A [`crate::config::Limit`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitDetail {
    /// What was bounded: "a task name", "live tasks of worker 0", ...
    pub what: String,
    /// The bound, in `unit`.
    pub max: u64,
    /// What the request asked for, in `unit` (over `max`).
    pub got: u64,
    /// `bytes`, `tasks`, `keys` or `schedules`.
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
    /// How many keys it holds (a bucket without keys is not listed).
    pub keys: u64,
    /// Keys and values together.
    pub bytes: u64,
}

/// A page of a bucket's keys (`GET /v1/kv/{bucket}`), in byte order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvKeys {
    /// `PLUGIN/NAME` or `NAME`, as `GET /v1/kv` lists it.
    pub bucket: String,
    /// At most `limit` keys, the first ones after `after`.
    pub keys: Vec<String>,
    /// Pass as `?after=` for the next page; none after the last.
    pub next: Option<String>,
}

/// One value (`GET /v1/kv/{bucket}/{key}`): `text` when it is UTF-8 (JSON
/// a task stored is), else `base64`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvEntry {
    /// `PLUGIN/NAME` or `NAME`, as `GET /v1/kv` lists it.
    pub bucket: String,
    /// The key asked for.
    pub key: String,
    /// The value, when its bytes are UTF-8; then `base64` is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The value's bytes in standard base64, when they are not UTF-8; then
    /// `text` is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// What `PUT /v1/kv/{bucket}/{key}` stores: exactly one of `text` (stored
/// as its UTF-8 bytes: write JSON for values tasks read with `get`) and
/// `base64`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KvPut {
    /// The value as text, stored as its UTF-8 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The value's bytes in standard base64, for a value that is not text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// The answer to a `PUT` or `DELETE` of a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvWritten {
    /// `PLUGIN/NAME` or `NAME`, as `GET /v1/kv` lists it.
    pub bucket: String,
    /// The key written or deleted.
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
    /// Its `name`: unique among the app's schedules, and the prefix of its
    /// tasks' names (`NAME@TIME`).
    pub name: String,
    /// The plugin its tasks start from.
    pub plugin: String,
    /// The factory its tasks run.
    pub factory: String,
    /// `every 30s`, or `cron "*/5 * * * *" (UTC)`.
    pub when: String,
    /// Where a tick's task runs: one worker (`any`) or every worker (`worker`).
    pub scope: crate::config::ScheduleScope,
    /// What a tick does while the previous run is still going.
    pub overlap: crate::config::Overlap,
    /// What a start does about ticks that fell while the host was down.
    pub catch_up: crate::config::CatchUp,
    /// Added at run time by a guest, not app.toml.
    pub added: bool,
    /// Paused by an operator (`taskhost schedule pause`): no ticks run until
    /// resumed, across restarts too.
    pub paused: bool,
    /// None while paused.
    pub next_at_ms: Option<u64>,
    /// The tick the last run was for, as RFC 3339 text (UTC, to the
    /// millisecond); none before a first run.
    pub last_tick: Option<String>,
    /// The last run's task name (it stays after the task is purged); none
    /// before a first run.
    pub last_task: Option<String>,
    /// The state of `last_task`, none once it is purged or before a first run.
    pub last_state: Option<crate::task::TaskState>,
    /// Runs started (ticks, triggers, catch-ups).
    pub runs: u64,
    /// Ticks that did not run: skipped by `overlap`, or missed while the
    /// host was down.
    pub misses: u64,
}

/// The answer to `POST /v1/schedules/{name}/trigger`: the tasks started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Triggered {
    /// The schedule's name.
    pub schedule: String,
    /// The names of the tasks it started (`NAME@TIME`): one, or one per worker
    /// with `scope = "worker"`.
    pub tasks: Vec<String>,
}

/// `GET /v1/tasks?worker=&state=&plugin=&name=`: which tasks to list; every
/// field narrows the list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFilter {
    /// A worker's index, or `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// A state's name; anything else is a 400 that lists them, not an
    /// empty list that looks like "no such tasks".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::task::TaskState>,
    /// Only tasks of the plugin so named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Only tasks so named (on any worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only tasks of the factory so named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factory: Option<String>,
    /// Only tasks waiting or started in this queue (`[[queues]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only tasks started by the task with this id (its children, and the
    /// other tasks it added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// A page: at most this many tasks (1 to 10,000), the newest first
    /// (highest ids). Without it, every task selected, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// With `limit`: only tasks whose id is below this (the last id of
    /// the previous page), for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// Only the tasks of the cluster's host so named (`[cluster] host`):
    /// with `/v1/cluster/tasks`, one host's tasks, paged by its ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `GET /v1/tasks/{id}/logs?after=&limit=&wait_ms=`: which of a task's
/// kept log lines to read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only lines numbered after this (the `last` of the previous answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Lines per answer: default 1,000, at most 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// With no line after `after` yet and the task not ended, wait this
    /// long (at most 30,000 ms) for one: how `taskhost logs --follow`
    /// follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// One kept log line of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLineView {
    /// Its number in the task's log, from 1.
    pub seq: u64,
    /// When it was logged (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// What the task logged (or wrote to stdout or stderr).
    pub message: String,
}

/// A resuming task's journal (`taskhost journal`, `GET
/// /v1/tasks/{id}/journal`): the host calls it made, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskJournal {
    /// The task's id.
    pub task: u64,
    /// Its steps, oldest first.
    pub steps: Vec<JournalStepView>,
    /// Bytes the journal holds (calls and answers), against `[limits]
    /// journal_bytes`.
    pub bytes: u64,
}

/// One step of a journal as the API shows it: the call, not its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStepView {
    /// Its place, from 0.
    pub index: u32,
    /// The call (`sleep 500`, `seed`, ...).
    pub call: String,
    /// When it was made (Unix ms).
    pub at_ms: u64,
    /// How long the call took, in microseconds.
    pub micros: u64,
    /// The size of its recorded answer, in bytes.
    pub bytes: u64,
}

/// A task's kept log lines (`taskhost logs`, `GET /v1/tasks/{id}/logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLogs {
    /// The task's id.
    pub task: u64,
    /// The lines asked for, oldest first.
    pub lines: Vec<LogLineView>,
    /// The number of the task's last line so far (0: none): ask for the
    /// lines after it next.
    pub last: u64,
    /// How many of its oldest lines are no longer kept (`[limits]
    /// task_log_lines`, `task_log_bytes`).
    pub dropped: u64,
    /// Whether the task has ended: a follower stops once it has read
    /// every line of an ended task.
    pub ended: bool,
}

/// `GET /v1/kv/{bucket}?after=&limit=`: a page of a bucket's keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Keys per page: default 1,000, at most 10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One queue (`GET /v1/queues`, `taskhost queues`): what waits and runs,
/// how fast tasks start, and its limits as they are now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueView {
    /// Its name.
    pub name: String,
    /// No task starts until `resume`.
    pub paused: bool,
    /// No task is taken in until `resume`; those waiting go on.
    pub draining: bool,
    /// Tasks waiting, delayed ones included.
    pub waiting: u64,
    /// Of those, tasks whose `delay` or `run_at` has not come.
    pub delayed: u64,
    /// Tasks holding a turn (running, or waiting for room on a worker).
    pub running: u32,
    /// Of the waiting, tasks given their turn on this host that wait for
    /// the cluster's limits (other hosts hold the slots, or the rate is
    /// spent); always 0 outside a cluster.
    #[serde(default)]
    pub blocked: u64,
    /// Tasks it let start since the host started.
    pub started: u64,
    /// Starts per second over the last 9 whole seconds.
    pub started_per_second: f64,
    /// Starts held back by a rate since the host started.
    pub throttled: u64,
    /// How long the task that could start earliest has waited; absent when
    /// none waits (delayed tasks wait from their time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_wait_ms: Option<u64>,
    /// Dead letters kept (`GET /v1/dead?queue=NAME`).
    pub dead: u64,
    /// Keys it remembers: with tasks waiting or running, or within their
    /// `key_rate` (tasks without a key count as one).
    pub keys: u64,
    /// Its limits now: app.toml's, with the run-time changes.
    pub limits: QueueLimitsView,
    /// The limits changed at run time (kept across restarts until `reset`).
    #[serde(default, skip_serializing_if = "crate::config::LimitsChange::is_empty")]
    pub changed: crate::config::LimitsChange,
    /// The keys with the most tasks waiting, at most 5.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_keys: Vec<KeyLoadView>,
}

/// A queue's limits, as app.toml writes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueLimitsView {
    /// At most this many running; absent: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// At most this many waiting.
    pub max_waiting: u64,
    /// At most this many running per key; absent: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key: Option<u32>,
    /// Where in the arguments a task's key is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_arg: Option<String>,
    /// Starts per period (`10/s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// The rate's burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Each key's starts per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rate: Option<String>,
    /// The key rate's burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_burst: Option<u32>,
    /// Each this long a waiting task gains a priority level; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ageing: Option<String>,
    /// A key with a task waiting takes no second one.
    pub dedupe: bool,
    /// At most this many dead letters kept.
    pub max_dead: u64,
}

/// A key's share of a queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyLoadView {
    /// The key.
    pub key: String,
    /// Its tasks waiting.
    pub waiting: u64,
    /// Its tasks running.
    pub running: u32,
}

/// What `POST /v1/queues/{name}/{action}` does to a queue; each is kept
/// across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueAction {
    /// No task starts until `resume`; tasks are still taken in.
    Pause,
    /// Undoes `pause` and `drain`.
    Resume,
    /// No task is taken in (409 `conflict`) until `resume`; those waiting
    /// go on.
    Drain,
    /// Back to app.toml's queue: not paused, not draining, the limits
    /// changed at run time dropped.
    Reset,
}

impl std::str::FromStr for QueueAction {
    type Err = OpError;

    fn from_str(text: &str) -> Result<QueueAction, OpError> {
        match text {
            "pause" => Ok(QueueAction::Pause),
            "resume" => Ok(QueueAction::Resume),
            "drain" => Ok(QueueAction::Drain),
            "reset" => Ok(QueueAction::Reset),
            other => Err(OpError::new(
                ErrorKind::NoRoute,
                format!("no queue action `{other}` (pause, resume, drain, reset)"),
            )),
        }
    }
}

/// `GET /v1/dead`'s query: whose letters, from where, how many.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// Only this queue's letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only letters with a greater id (the last page's `next_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of dead letters, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetters {
    /// The letters.
    pub letters: Vec<crate::storage::StoredLetter>,
    /// The `after` of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// What `POST /v1/schedules/{name}/{action}` does to a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleAction {
    /// No tick runs until a `resume`; kept across restarts.
    Pause,
    /// Ticks run again; the ones that fell while paused are not run.
    Resume,
    /// One run now, paused or not, as the schedule's `overlap` allows.
    Trigger,
}

impl std::str::FromStr for ScheduleAction {
    type Err = OpError;

    fn from_str(text: &str) -> Result<ScheduleAction, OpError> {
        match text {
            "pause" => Ok(ScheduleAction::Pause),
            "resume" => Ok(ScheduleAction::Resume),
            "trigger" => Ok(ScheduleAction::Trigger),
            other => Err(OpError::new(
                ErrorKind::NoRoute,
                format!("no schedule action `{other}` (pause, resume, trigger)"),
            )),
        }
    }
}

/// An operation every host of a cluster answers at once (`GET
/// /v1/cluster/tasks`, `taskhost tasks --cluster`): listings, and the verbs
/// an operator applies cluster-wide. Not the stream (it never ends), nor a
/// hot-load (a roll-out is its own thing: docs/cluster.md). The one serde
/// type of that wire between hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClusterCall {
    /// `GET /v1/cluster/tasks`: each host's tasks, as `filter` selects them.
    ListTasks {
        /// Which tasks each host lists, as `GET /v1/tasks` takes it.
        filter: TaskFilter,
    },
    /// `GET /v1/cluster/plugins`: each host's loaded builds.
    ListPlugins,
    /// `GET /v1/cluster/schedules`: each host's schedules.
    ListSchedules,
    /// `POST /v1/cluster/tasks/cancel`: the tasks so named, cancelled on each
    /// host.
    Cancel {
        /// The name (and worker, wait) each host cancels by.
        request: CancelRequest,
    },
    /// `POST /v1/cluster/purge`: each host drops its ended tasks.
    Purge,
    /// `POST /v1/tasks/wait` on one host: a guest of another host joins a
    /// task it placed there.
    Wait {
        /// The task, and how long this one request waits.
        request: WaitRequest,
    },
}

/// What went wrong, as every caller branches on it. Each kind maps once to
/// its wire name ([`ErrorKind::wire`]), an HTTP status
/// ([`ErrorKind::status`]), a CLI exit code ([`ErrorKind::exit_code`]) and
/// a guest's error ([`OpError::into_guest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request does not hold together (a bad field, two that exclude
    /// each other).
    BadRequest,
    /// A JSON body of the wrong shape (an unknown field, a missing one, a
    /// wrong type): `bad_request`, 422.
    BadBody,
    /// A body that is not declared JSON: `bad_request`, 415.
    BadMediaType,
    /// The body is over the API's size bound.
    TooLarge,
    /// No token, or the wrong one.
    Unauthorized,
    /// A token (or a dashboard session) that may not do this: a read-only
    /// one steering, or a dashboard action without its CSRF header.
    Forbidden,
    /// No such endpoint.
    NoRoute,
    /// The endpoint does not take that method.
    MethodNotAllowed,
    /// No task, key, plugin file or schedule of that name or id.
    NotFound,
    /// The `worker` named is not one of this host's (an index past its
    /// workers).
    NoWorker,
    /// No plugin of that name is loaded.
    UnknownPlugin,
    /// The plugin has no factory of that name.
    UnknownFactory,
    /// A cluster-only request to a host that has no `[cluster]`.
    NoCluster,
    /// The factory refused its arguments.
    InvalidArgs,
    /// Refused for another reason (a build that does not load, hosts that
    /// refused for different reasons).
    Refused,
    /// A task of that name exists in the name's scope (live, or ended and not
    /// yet purged).
    DuplicateName,
    /// A state conflict (a schedule's `overlap`, a counter that is not an
    /// integer).
    Conflict,
    /// The idempotency key names a durable task running on another host.
    Elsewhere,
    /// A count bound of `[limits]` (live tasks, schedules): 429.
    Limit,
    /// A size bound of `[limits]` (a value, an event's payload): 413.
    SizeLimit,
    /// The operation did not end in the time it was given.
    Timeout,
    /// No host of the cluster took the request.
    NoHost,
    /// The hosts of the cluster did not answer in time.
    HostTimedOut,
    /// A part the operation needs is away now (NATS); it may succeed later.
    Unavailable,
    /// The host is still starting (its schedules start with the workers).
    Starting,
    /// Storage failed.
    Storage,
    /// A bug, or an answer from another host that does not parse.
    Internal,
}

impl ErrorKind {
    /// Every kind, for tests and for [`ErrorKind::parse`].
    pub const ALL: [ErrorKind; 27] = [
        ErrorKind::BadRequest,
        ErrorKind::BadBody,
        ErrorKind::BadMediaType,
        ErrorKind::TooLarge,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NoRoute,
        ErrorKind::MethodNotAllowed,
        ErrorKind::NotFound,
        ErrorKind::NoWorker,
        ErrorKind::UnknownPlugin,
        ErrorKind::UnknownFactory,
        ErrorKind::NoCluster,
        ErrorKind::InvalidArgs,
        ErrorKind::Refused,
        ErrorKind::DuplicateName,
        ErrorKind::Conflict,
        ErrorKind::Elsewhere,
        ErrorKind::Limit,
        ErrorKind::SizeLimit,
        ErrorKind::Timeout,
        ErrorKind::NoHost,
        ErrorKind::HostTimedOut,
        ErrorKind::Unavailable,
        ErrorKind::Starting,
        ErrorKind::Storage,
        ErrorKind::Internal,
    ];

    /// The `kind` of the JSON error (docs/control.md lists them).
    pub fn wire(self) -> &'static str {
        match self {
            ErrorKind::BadRequest | ErrorKind::BadBody | ErrorKind::BadMediaType => "bad_request",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::NoWorker => "no_worker",
            ErrorKind::UnknownPlugin => "unknown_plugin",
            ErrorKind::UnknownFactory => "unknown_factory",
            ErrorKind::NoCluster => "no_cluster",
            ErrorKind::InvalidArgs => "invalid_args",
            ErrorKind::Refused => "refused",
            ErrorKind::DuplicateName => "duplicate_name",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Elsewhere => "elsewhere",
            ErrorKind::Limit | ErrorKind::SizeLimit => "limit",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NoHost | ErrorKind::HostTimedOut => "no_host",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Starting => "starting",
            ErrorKind::Storage => "storage",
            ErrorKind::Internal => "internal",
        }
    }

    /// A wire name back to its kind; `refused` for one this host does not
    /// know (a newer host's). Of two kinds with one name, the one a
    /// cluster's answers carry (`limit`: a task bound; `no_host`;
    /// `bad_request`); [`OpError::of_answer`] tells them apart by status.
    pub fn parse(wire: &str) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.wire() == wire)
            .unwrap_or(ErrorKind::Refused)
    }

    /// The HTTP status the control API answers with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NoRoute
            | ErrorKind::NotFound
            | ErrorKind::NoWorker
            | ErrorKind::UnknownPlugin
            | ErrorKind::UnknownFactory
            | ErrorKind::NoCluster => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::BadMediaType => 415,
            ErrorKind::DuplicateName | ErrorKind::Conflict | ErrorKind::Elsewhere => 409,
            ErrorKind::TooLarge | ErrorKind::SizeLimit => 413,
            ErrorKind::BadBody | ErrorKind::InvalidArgs | ErrorKind::Refused => 422,
            ErrorKind::Limit => 429,
            ErrorKind::Storage | ErrorKind::Internal => 500,
            ErrorKind::NoHost | ErrorKind::Unavailable | ErrorKind::Starting => 503,
            ErrorKind::Timeout | ErrorKind::HostTimedOut => 504,
        }
    }

    /// The kind an HTTP status stands for, for an answer without a JSON
    /// error body (a proxy's, say).
    pub fn of_status(status: u16) -> ErrorKind {
        match status {
            400 => ErrorKind::BadRequest,
            415 => ErrorKind::BadMediaType,
            422 => ErrorKind::BadBody,
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            405 => ErrorKind::MethodNotAllowed,
            409 => ErrorKind::Conflict,
            413 => ErrorKind::TooLarge,
            429 => ErrorKind::Limit,
            503 => ErrorKind::Unavailable,
            504 => ErrorKind::Timeout,
            500..=599 => ErrorKind::Internal,
            _ => ErrorKind::Refused,
        }
    }

    /// The CLI's exit code when a host answers with this kind: 3 when the
    /// task, plugin, worker or key a verb named does not exist, 1 when a
    /// running host refused (README, "exit codes").
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::NotFound
            | ErrorKind::NoWorker
            | ErrorKind::UnknownPlugin
            | ErrorKind::UnknownFactory
            | ErrorKind::NoCluster
            | ErrorKind::NoRoute => 3,
            _ => 1,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire())
    }
}

/// Why an operation failed: its kind, a message for people that names the
/// thing at fault, and for a `[limits]` bound the bound itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// Which kind: what callers branch on.
    pub kind: ErrorKind,
    /// For people: names the thing at fault.
    pub message: String,
    /// Boxed: errors travel in `Result`s, which should stay small.
    pub limit: Option<Box<LimitDetail>>,
}

impl OpError {
    /// An error of `kind` with no limit attached.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            message: message.into(),
            limit: None,
        }
    }

    /// A `[limits]` bound that was hit, of `kind` [`ErrorKind::Limit`] or
    /// [`ErrorKind::SizeLimit`].
    pub fn limit(kind: ErrorKind, limit: &crate::config::Limit) -> OpError {
        OpError {
            limit: Some(Box::new(limit.into())),
            ..OpError::new(kind, limit.to_string())
        }
    }

    /// An error of kind [`ErrorKind::BadRequest`]: the request does not hold
    /// together.
    pub fn bad_request(message: impl Into<String>) -> OpError {
        OpError::new(ErrorKind::BadRequest, message)
    }

    /// The JSON body of the error, as every endpoint answers it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind.wire().to_string(),
                message: self.message.clone(),
                limit: self.limit.as_deref().cloned(),
            },
        }
    }

    /// The error of an answer with `status` and JSON `body` (another
    /// host's, or the control API's as the CLI reads it).
    pub fn of_answer(status: u16, body: &[u8]) -> OpError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => OpError {
                kind: match ErrorKind::parse(&error.kind) {
                    ErrorKind::Limit if status == 413 => ErrorKind::SizeLimit,
                    ErrorKind::NoHost if status == 504 => ErrorKind::HostTimedOut,
                    ErrorKind::BadRequest if status == 422 => ErrorKind::BadBody,
                    ErrorKind::BadRequest if status == 415 => ErrorKind::BadMediaType,
                    kind => kind,
                },
                message: error.message,
                limit: error.limit.map(Box::new),
            },
            Err(_) => OpError::new(
                ErrorKind::of_status(status),
                format!("an answer with status {status} that is not a JSON error"),
            ),
        }
    }

    /// What a guest that submitted `factory` of `plugin`, named `name`,
    /// gets back.
    pub fn into_guest(
        self,
        plugin: &str,
        factory: &str,
        name: Option<&str>,
    ) -> crate::bindings::GuestError {
        use crate::bindings::GuestError;
        match self.kind {
            ErrorKind::DuplicateName => {
                GuestError::DuplicateName(name.unwrap_or_default().to_string())
            }
            ErrorKind::UnknownPlugin => GuestError::UnknownPlugin(plugin.to_string()),
            ErrorKind::UnknownFactory => GuestError::UnknownFactory(factory.to_string()),
            ErrorKind::InvalidArgs | ErrorKind::BadRequest => GuestError::InvalidArgs(self.message),
            ErrorKind::Limit | ErrorKind::SizeLimit => GuestError::Limit(self.message),
            _ => GuestError::Failed(self.message),
        }
    }
}

impl From<crate::registry::AddTaskError> for OpError {
    fn from(error: crate::registry::AddTaskError) -> OpError {
        use crate::bindings::GuestError;
        use crate::registry::{AddTaskError, RegisterError};
        let kind = match &error {
            AddTaskError::Register(RegisterError::Limit(limit)) => {
                return OpError::limit(ErrorKind::Limit, limit);
            }
            AddTaskError::NoWorker(_) => ErrorKind::NoWorker,
            AddTaskError::UnknownPlugin(_) => ErrorKind::UnknownPlugin,
            AddTaskError::Register(RegisterError::DuplicateName(_)) => ErrorKind::DuplicateName,
            AddTaskError::Refused(GuestError::UnknownFactory(_)) => ErrorKind::UnknownFactory,
            AddTaskError::Refused(GuestError::InvalidArgs(_)) => ErrorKind::InvalidArgs,
            AddTaskError::Refused(_) => ErrorKind::Refused,
            AddTaskError::Invalid(_) => ErrorKind::BadRequest,
            AddTaskError::Storage(_) => ErrorKind::Storage,
            AddTaskError::Unavailable(_) => ErrorKind::Unavailable,
            AddTaskError::Elsewhere(_) => ErrorKind::Elsewhere,
            AddTaskError::Draining(_) => ErrorKind::Conflict,
        };
        OpError::new(kind, error.to_string())
    }
}

impl From<crate::storage::KvError> for OpError {
    fn from(error: crate::storage::KvError) -> OpError {
        use crate::storage::KvError;
        match error {
            KvError::Limit(limit) => OpError::limit(ErrorKind::SizeLimit, &limit),
            KvError::EmptyKey => OpError::bad_request(error.to_string()),
            KvError::NotAnInteger { .. } | KvError::Overflow { .. } => {
                OpError::new(ErrorKind::Conflict, error.to_string())
            }
            KvError::Storage(message) => OpError::new(ErrorKind::Storage, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_wire() {
        for kind in ErrorKind::ALL {
            let error = OpError::new(kind, "why");
            let body = serde_json::to_vec(&error.body()).unwrap();
            let back = OpError::of_answer(kind.status(), &body);
            assert_eq!(back.kind, kind, "{kind:?} came back as {:?}", back.kind);
            assert_eq!(back.message, "why");
        }
    }

    #[test]
    fn an_unknown_kind_is_a_refusal_and_a_non_json_answer_its_status() {
        let body = br#"{"error":{"kind":"from_the_future","message":"m"}}"#;
        assert_eq!(OpError::of_answer(422, body).kind, ErrorKind::Refused);
        assert_eq!(OpError::of_answer(404, b"gone").kind, ErrorKind::NotFound);
        assert_eq!(OpError::of_answer(502, b"").kind, ErrorKind::Internal);
    }

    #[test]
    fn not_found_kinds_exit_3_and_refusals_1() {
        assert_eq!(ErrorKind::UnknownFactory.exit_code(), 3);
        assert_eq!(ErrorKind::NotFound.exit_code(), 3);
        assert_eq!(ErrorKind::Limit.exit_code(), 1);
        assert_eq!(ErrorKind::Refused.exit_code(), 1);
    }
}
