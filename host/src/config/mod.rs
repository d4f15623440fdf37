//! `app.toml`: what an application is made of, parsed and checked before
//! anything starts.
//!
//! Parsing is strict (unknown keys are errors) because a typo in a task
//! table would otherwise silently drop the task. Every error names the file
//! and the key or task at fault. Checks that need the plugins themselves
//! (does the factory exist, do its arguments decode) happen when the plugins
//! are loaded; see [`crate::application`].

pub mod cluster;
mod grants;
mod http_grant;
mod limits;
mod queues;
mod restart;
mod retry;
mod routes;
mod schedule;
mod socket_grant;
mod telemetry;
pub(crate) mod value;

pub use cluster::{ClusterAuth, ClusterConfig, ClusterTls};
pub use grants::{DirGrant, Grants};
pub use http_grant::HttpGrant;
pub use limits::{
    CONNECTION_NAME_PREFIX, HttpLimits, Limit, LimitUnit, Limits, MAX_BUCKET_NAME_BYTES,
    MAX_COMPONENT_BYTES, MAX_NAME_BYTES, PluginLimits, TaskLimits, check_bucket_name,
    check_plugin_name, connection_task_name, machine_memory_bytes, reserved_name,
};
pub use queues::{
    DEFAULT_AGEING, DEFAULT_MAX_DEAD, DEFAULT_MAX_WAITING, DEFAULT_QUEUE, LimitsChange, MAX_DELAY,
    MAX_KEY_BYTES, MAX_PRIORITY, MAX_QUEUE_BOUND, MIN_PRIORITY, Placement, QueueConfig,
    QueueOptions, Rate, StartAt, check_key, key_of,
};
pub use restart::{DEFAULT_INTENSITY, MAX_INTENSITY, RestartPolicy, RestartSpec, RestartWhen};
pub use retry::{Backoff, RetryPolicy, RetrySpec};
pub use routes::{
    DEFAULT_LISTEN, HttpRoute, ListenConfig, Respond, RouteConfig, RouteKind, WebSocketRoute,
};
pub use schedule::{
    CatchUp, MAX_CATCH_UP, Overlap, ScheduleConfig, ScheduleScope, ScheduleSpec, When, tick_label,
};
pub use socket_grant::{GrantHost, SocketGrant};
pub use telemetry::TelemetryConfig;
pub(crate) use value::toml_to_json;
pub use value::{ConfigValue, MAX_SECRET_BYTES, SecretSource, read_bounded};

use crate::variables::section::{RawVariables, Variables};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a cancelled task may take to end on its own before it is
/// interrupted, unless app.toml says otherwise.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_millis(100);

/// How a plugin's tasks are bounded and what they may reach, resolved
/// from app.toml once, shared by every task of the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginPolicy {
    /// `[limits]` with the plugin's `[plugins.NAME.limits]` over it.
    pub limits: TaskLimits,
    /// `[plugins.NAME.grants]`; a plugin app.toml does not name (hot-loaded)
    /// gets none.
    pub grants: Grants,
    /// `[plugins.NAME.variables]`, served by `wasi:config/store`.
    pub(crate) variables: Arc<Variables>,
    /// What a newer build does to its running tasks (`on_load`).
    pub on_load: OnLoad,
    /// What a resuming task's HTTP request begun before a crash, with no
    /// answer recorded, does on replay (`http_uncertain`).
    pub http_uncertain: Uncertain,
}

impl PluginPolicy {
    /// The policy of a plugin app.toml does not list (one loaded at run
    /// time under a new name): `[limits]`, no grants, no variables.
    pub fn unlisted(limits: &Limits) -> PluginPolicy {
        PluginPolicy {
            limits: limits.for_task(&PluginLimits::default()),
            grants: Grants::default(),
            variables: Arc::default(),
            on_load: OnLoad::Drain,
            http_uncertain: Uncertain::Resend,
        }
    }
}

impl PluginConfig {
    /// What this plugin's tasks get: `[limits]` with the plugin's own
    /// overrides, its grants and its host interfaces' sections.
    pub fn policy(&self, limits: &Limits) -> PluginPolicy {
        PluginPolicy {
            limits: limits.for_task(&self.limits),
            grants: self.grants.clone(),
            variables: self.variables.clone(),
            on_load: self.on_load,
            http_uncertain: self.http_uncertain,
        }
    }
}

/// A parsed and statically valid `app.toml`.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The file this was read from, as given (used in every error message).
    pub source: PathBuf,
    /// The application's name, returned by `app.name()`.
    pub name: String,
    /// How many workers run the `scope = "worker"` tasks.
    pub workers: u32,
    /// How long a cancelled task may run on before it is interrupted.
    pub cancel_grace: Duration,
    /// What one task, one worker and the app may use.
    pub limits: Limits,
    /// Plugins by name, in name order.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// The `[config]` table: values tasks read with `app.config(key)`.
    pub config: BTreeMap<String, ConfigValue>,
    /// Startup tasks, in file order.
    pub tasks: Vec<TaskConfig>,
    /// Where key-value state lives.
    pub storage: StorageConfig,
    /// `[[schedules]]`, in file order.
    pub schedules: Vec<ScheduleConfig>,
    /// `[[queues]]`, in file order, and `default` (last, unless listed).
    pub queues: Vec<QueueConfig>,
    /// `[listen]`: where the public listener binds; none without routes.
    pub listen: Option<ListenConfig>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[cluster]`: the NATS this host shares the app over; none for a
    /// host on its own.
    pub cluster: Option<ClusterConfig>,
    /// `[telemetry]`: OpenTelemetry traces; none: no spans are made.
    pub telemetry: Option<TelemetryConfig>,
}

/// `[storage]`: where key-value state and durable tasks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The storage directory (`path`, relative to app.toml; by default
    /// `.taskhost` beside it). It holds `taskhost.sqlite3` and its
    /// write-ahead log, and one host at a time.
    pub dir: PathBuf,
    /// Whether every write waits for the disk (`fsync = true`): without
    /// it a write survives the host dying but maybe not a power cut.
    pub fsync: bool,
    /// How many ended durable tasks keep their record (and so their
    /// outcome across restarts); the oldest go first.
    pub keep_ended_tasks: u64,
}

/// `[storage] keep_ended_tasks` when not given.
pub const DEFAULT_KEEP_ENDED_TASKS: u64 = 10_000;

/// The storage directory when `[storage] path` is not given, beside
/// app.toml.
pub const DEFAULT_STORAGE_DIR: &str = ".taskhost";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    path: Option<PathBuf>,
    #[serde(default)]
    fsync: bool,
    keep_ended_tasks: Option<u64>,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A component file (`path = "..."`), relative paths resolved against
    /// the directory of app.toml.
    File(PathBuf),
    /// A plugin crate built with `taskhost build` before start
    /// (`build = "..."`).
    Build(PathBuf),
}

/// One `[plugins.NAME]` table.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// `NAME` of the table: what tasks, routes and schedules name it by.
    pub name: String,
    /// The component file, or the crate to build it from.
    pub source: PluginSource,
    /// Per-task bounds that differ from `[limits]`.
    pub limits: PluginLimits,
    /// What its tasks may reach through WASI (nothing by default).
    pub grants: Grants,
    /// `[plugins.NAME.variables]`: what its tasks read through
    /// `wasi:config/store` (none by default).
    pub(crate) variables: Arc<Variables>,
    /// What a newer build does to its running tasks (`on_load`; default
    /// `drain`).
    pub on_load: OnLoad,
    /// `http_uncertain` (default `resend`).
    pub http_uncertain: Uncertain,
}

/// What a resuming task's effect does on replay when the journal says it
/// was begun before a crash but holds no answer (the host died between
/// sending and recording): it may or may not have taken effect.
/// `http_uncertain` on `[plugins.NAME]` decides for HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Uncertain {
    /// Sent again, under the same `Idempotency-Key` (the default): a
    /// server that honours the header takes it once.
    #[default]
    Resend,
    /// Not sent again: the task fails `uncertain`, naming the request,
    /// for someone to look at (its retry policy still applies).
    Fail,
}

/// What a hot-load of a plugin's newer build (`load`, `--watch`, `load
/// --cluster`) does to its running tasks: `on_load` on `[plugins.NAME]`,
/// or on one `[[tasks]]` entry or submission, which wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLoad {
    /// They finish on the build they started on, which is dropped after
    /// the last (the default).
    #[default]
    Drain,
    /// Each is cancelled cooperatively (forced after its grace period)
    /// and started again on the new build: the same task (id, name),
    /// arguments and policies.
    Restart,
}

impl std::str::FromStr for OnLoad {
    type Err = String;

    fn from_str(text: &str) -> Result<OnLoad, String> {
        match text {
            "drain" => Ok(OnLoad::Drain),
            "restart" => Ok(OnLoad::Restart),
            other => Err(format!(
                "unknown on_load {other:?}: use \"drain\" or \"restart\""
            )),
        }
    }
}

/// Where a startup task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Once in every worker (Sanic's tasks added before `app.run`).
    Worker,
    /// Once, before any worker starts; workers wait for it to end (Sanic's
    /// `main_process_start`).
    Main,
    /// Once in the whole app: on worker 0, and in a cluster on the one
    /// host that holds its claim, taken over by another host once that
    /// host is gone or paused past its lease (docs/cluster.md,
    /// "Singletons").
    App,
}

/// One `[[tasks]]` entry.
#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// Position in the `tasks` array, for error messages (`tasks[2]`).
    pub index: usize,
    /// The plugin (`NAME` of a `[plugins.NAME]`) it starts from.
    pub plugin: String,
    /// The factory it runs.
    pub factory: String,
    /// Unique among the tasks of its scope; required for a durable task.
    pub name: Option<String>,
    /// The arguments as JSON (a TOML value converted to JSON; `null` if absent).
    pub args: serde_json::Value,
    /// Where it runs: on every worker (`worker`, the default) or once before
    /// them (`main`).
    pub scope: Scope,
    /// How it is tried again after failing; none: it is not.
    pub retry: Option<RetryPolicy>,
    /// How it is started again once it ends (supervised); none: it is not.
    pub restart: Option<RestartPolicy>,
    /// What a newer build of its plugin does to it; none: the plugin's
    /// `on_load`.
    pub on_load: Option<OnLoad>,
    /// Recorded in storage and run to its end once, across restarts: a
    /// durable startup task that ended is not started again.
    pub durable: bool,
    /// With `durable`: resumed from its journal after a crash
    /// (`durable = "resume"`).
    pub resume: bool,
    /// The queue it waits in until the queue lets it start, and its key,
    /// priority and delay there; none: it starts with its worker.
    pub queue: Option<Placement>,
}

impl TaskConfig {
    /// What to start on `worker` for this entry. A durable entry's
    /// idempotency key is its place (`app.toml/WORKER/NAME`), so each
    /// start of the app finds the record of the one before.
    pub fn spec(&self, worker: impl fmt::Display) -> TaskSpec {
        TaskSpec {
            factory: self.factory.clone(),
            args: self.args.to_string(),
            name: self.name.clone(),
            retry: self.retry,
            restart: self.restart,
            on_load: self.on_load,
            durable: self.durable,
            resume: self.resume,
            idempotency_key: match (&self.name, self.durable) {
                (Some(name), true) => Some(format!("app.toml/{worker}/{name}")),
                _ => None,
            },
            connection: None,
            queue: self.queue.clone(),
            parent: None,
            trace: None,
        }
    }
}

/// How a task outlives its host: `durable` as app.toml and the API write
/// it. `false` (none), `true` or `"rerun"` (recorded, run again from its
/// start after a crash), `"resume"` (recorded, and resumed after a crash
/// from the journal of its host calls: docs/durable.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// It lives and dies with its host.
    #[default]
    None,
    /// Run again from its start after a crash (at least once).
    Rerun,
    /// Resumed from its journal after a crash.
    Resume,
}

impl Durability {
    /// Whether it is recorded at all.
    pub fn is_durable(self) -> bool {
        self != Durability::None
    }

    /// For `skip_serializing_if`: the default is not written.
    pub fn is_none(&self) -> bool {
        *self == Durability::None
    }
}

impl From<bool> for Durability {
    fn from(durable: bool) -> Durability {
        if durable {
            Durability::Rerun
        } else {
            Durability::None
        }
    }
}

impl serde::Serialize for Durability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Durability::None => serializer.serialize_bool(false),
            Durability::Rerun => serializer.serialize_bool(true),
            Durability::Resume => serializer.serialize_str("resume"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Durability, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Durability;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, \"rerun\" or \"resume\"")
            }
            fn visit_bool<E: serde::de::Error>(self, durable: bool) -> Result<Durability, E> {
                Ok(if durable {
                    Durability::Rerun
                } else {
                    Durability::None
                })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Durability, E> {
                match text {
                    "rerun" => Ok(Durability::Rerun),
                    "resume" => Ok(Durability::Resume),
                    other => Err(E::custom(format!(
                        "durable {other:?}: write true, false, \"rerun\" (run again from the \
                         start after a crash) or \"resume\" (resume from its journal)"
                    ))),
                }
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

/// What to start as a task: its factory and arguments, and how it lives.
/// Every way of adding a task (app.toml, a guest's `add-task`, the API,
/// the CLI) comes down to one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSpec {
    /// The factory of the task's plugin to run.
    pub factory: String,
    /// The arguments as JSON text.
    pub args: String,
    /// The task's name, unique in its worker's registry; none: unnamed.
    pub name: Option<String>,
    /// How it is tried again after failing; none: it is not.
    pub retry: Option<RetryPolicy>,
    /// How it is started again once it ends (supervised); none: it is not.
    /// Not with `durable`.
    pub restart: Option<RestartPolicy>,
    /// The trace it joins (a webhook request's `traceparent`, its parent
    /// task's span); none: it starts its own, if tracing is on.
    pub trace: Option<crate::trace_context::TraceParent>,
    /// What a newer build of its plugin does to it; none: the plugin's
    /// `on_load`.
    pub on_load: Option<OnLoad>,
    /// Recorded in storage before it is acknowledged and run again after a
    /// crash (at least once) until it ends.
    pub durable: bool,
    /// With `durable`: after a crash it resumes from its journal instead
    /// of running again from its start.
    pub resume: bool,
    /// Durable only: a second submission with the same key is the same
    /// task.
    pub idempotency_key: Option<String>,
    /// The websocket connection the task serves (a `[[routes]]` route's
    /// task): its lifecycle lines carry the id.
    pub connection: Option<u64>,
    /// The queue it waits in until the queue lets it start (`[[queues]]`),
    /// and its key, priority and delay there; none: it starts at once or
    /// is refused.
    pub queue: Option<Placement>,
    /// The id of the task that started it, for a task a guest started on
    /// this host (`add-task`, `start-task`).
    pub parent: Option<u64>,
}

impl fmt::Display for TaskConfig {
    /// `tasks[2] ("notify", examples/notify_started)`: how errors point at a task.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tasks[{}] (", self.index)?;
        if let Some(name) = &self.name {
            write!(f, "{name:?}, ")?;
        }
        write!(f, "{}/{})", self.plugin, self.factory)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    #[serde(default = "one")]
    workers: i64,
    cancel_grace_ms: Option<u64>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    tasks: Vec<RawTask>,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    schedules: Vec<ScheduleSpec>,
    #[serde(default)]
    queues: Vec<queues::RawQueue>,
    #[serde(default)]
    listen: routes::RawListen,
    #[serde(default)]
    routes: Vec<routes::RawRoute>,
    cluster: Option<cluster::RawCluster>,
    telemetry: Option<telemetry::RawTelemetry>,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: Option<PathBuf>,
    build: Option<PathBuf>,
    #[serde(default)]
    limits: PluginLimits,
    #[serde(default)]
    grants: grants::RawGrants,
    #[serde(default)]
    variables: RawVariables,
    on_load: Option<OnLoad>,
    #[serde(default)]
    http_uncertain: Uncertain,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    plugin: String,
    factory: String,
    name: Option<String>,
    args: Option<toml::Value>,
    #[serde(default = "worker_scope")]
    scope: Scope,
    retry: Option<RetrySpec>,
    restart: Option<RestartSpec>,
    on_load: Option<OnLoad>,
    #[serde(default)]
    durable: Durability,
    queue: Option<String>,
    key: Option<String>,
    priority: Option<i64>,
    delay: Option<String>,
    run_at: Option<String>,
}

fn worker_scope() -> Scope {
    Scope::Worker
}

impl AppConfig {
    /// Reads and checks `path`. Relative plugin paths are resolved against
    /// the directory that holds it.
    pub fn load(path: &Path) -> Result<AppConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read app config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses `text` as the content of `source`, resolving relative paths
    /// against `base`.
    pub fn parse(text: &str, source: &Path, base: &Path) -> Result<AppConfig> {
        let file = source.display();
        let raw: RawApp = toml::from_str(text).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;

        if raw.name.trim().is_empty() {
            bail!("{file}: `name` must not be empty");
        }
        if raw.workers < 1 {
            bail!("{file}: `workers` must be at least 1 (got {})", raw.workers);
        }
        let workers = u32::try_from(raw.workers)
            .ok()
            .filter(|w| *w <= MAX_WORKERS)
            .with_context(|| {
                format!(
                    "{file}: `workers` must be at most {MAX_WORKERS} (got {})",
                    raw.workers
                )
            })?;

        let mut plugins = BTreeMap::new();
        for (name, plugin) in raw.plugins {
            check_plugin_name(&name).with_context(|| format!("{file}: [plugins.{name:?}]"))?;
            let source = match (plugin.path, plugin.build) {
                (Some(path), None) => PluginSource::File(base.join(path)),
                (None, Some(dir)) => PluginSource::Build(base.join(dir)),
                (Some(_), Some(_)) => bail!(
                    "{file}: [plugins.{name}] has both `path` and `build`; give one: \
                     `path` for a built component, `build` for a plugin crate"
                ),
                (None, None) => bail!(
                    "{file}: [plugins.{name}] needs `path = \"file.wasm\"` or \
                     `build = \"crate-dir\"`"
                ),
            };
            if let PluginSource::File(path) = &source
                && !path.is_file()
            {
                bail!(
                    "{file}: [plugins.{name}] path {} does not exist or is not a file{}",
                    path.display(),
                    " (build the plugin first with `taskhost build`, or use `build = \"<crate dir>\"`)"
                );
            }
            // Which of these says how to build it is `taskhost build`'s
            // business; here it only must be a plugin at all.
            if let PluginSource::Build(dir) = &source
                && !["Cargo.toml", "pyproject.toml", "package.json"]
                    .iter()
                    .any(|manifest| dir.join(manifest).is_file())
            {
                bail!(
                    "{file}: [plugins.{name}] build directory {} has no Cargo.toml (a Rust \
                     plugin), pyproject.toml (Python) or package.json (JavaScript)",
                    dir.display()
                );
            }
            let limits = plugin
                .limits
                .checked(&format!("{file}: [plugins.{name}.limits]"))?;
            let grants = plugin
                .grants
                .checked(&format!("{file}: [plugins.{name}.grants]"), base)?;
            let variables = plugin
                .variables
                .checked(&format!("{file}: [plugins.{name}.variables]"), base)?;
            plugins.insert(
                name.clone(),
                PluginConfig {
                    name,
                    source,
                    limits,
                    grants,
                    variables: Arc::new(variables),
                    on_load: plugin.on_load.unwrap_or_default(),
                    http_uncertain: plugin.http_uncertain,
                },
            );
        }

        let mut config = BTreeMap::new();
        for (key, value) in raw.config {
            let value = ConfigValue::resolve(value, base)
                .with_context(|| format!("{file}: [config] key `{key}`"))?;
            config.insert(key, value);
        }

        let queues = queues::checked(raw.queues, &file.to_string())?;

        let mut tasks = Vec::new();
        let mut names: HashSet<(Scope, String)> = HashSet::new();
        for (index, task) in raw.tasks.into_iter().enumerate() {
            let args = match task.args {
                None => serde_json::Value::Null,
                Some(value) => {
                    toml_to_json(value).with_context(|| format!("{file}: tasks[{index}].args"))?
                }
            };
            let retry = task
                .retry
                .as_ref()
                .map(RetrySpec::policy)
                .transpose()
                .with_context(|| format!("{file}: tasks[{index}].retry"))?;
            let restart = task
                .restart
                .as_ref()
                .map(RestartSpec::policy)
                .transpose()
                .with_context(|| format!("{file}: tasks[{index}].restart"))?;
            let queue = QueueOptions {
                queue: task.queue.as_deref(),
                key: task.key.as_deref(),
                priority: task.priority,
                delay: task.delay.as_deref(),
                run_at: task.run_at.as_deref(),
            }
            .placement();
            let task = TaskConfig {
                index,
                plugin: task.plugin,
                factory: task.factory,
                name: task.name,
                args,
                scope: task.scope,
                retry,
                restart,
                on_load: task.on_load,
                durable: task.durable.is_durable(),
                resume: task.durable == Durability::Resume,
                queue: None,
            };
            let queue = queue.map_err(|e| anyhow::anyhow!("{file}: {task}: {e}"))?;
            let task = TaskConfig { queue, ..task };
            if !plugins.contains_key(&task.plugin) {
                let known: Vec<_> = plugins.keys().map(String::as_str).collect();
                bail!(
                    "{file}: {task}: no plugin named `{}` (defined plugins: {})",
                    task.plugin,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
            if let Some(placement) = &task.queue {
                queues::check_placement(&queues, placement, &task.args.to_string())
                    .map_err(|e| anyhow::anyhow!("{file}: {task}: {e}"))?;
                if task.scope == Scope::Main {
                    bail!(
                        "{file}: {task}: a `main` task runs before the workers and waits in \
                         no queue: drop `queue`"
                    );
                }
            }
            if let Some(restart) = &task.restart {
                check_restart(restart, task.durable)
                    .map_err(|e| anyhow::anyhow!("{file}: {task}: {e}"))?;
                if task.scope == Scope::Main && restart.when == RestartWhen::Always {
                    bail!(
                        "{file}: {task}: `restart = \"always\"` on a `main` task would never \
                         let the workers start (they wait for `main` tasks to end): use \
                         \"on-failure\", or `scope = \"worker\"`"
                    );
                }
            }
            if task.scope == Scope::App {
                let why = if task.name.is_none() {
                    Some("needs a `name`: it is how the hosts of a cluster claim its one copy")
                } else if task.durable {
                    Some(
                        "and `durable` contradict: a durable task runs to its end once across \
                         crashes, a singleton once per start of the host that holds it; drop \
                         `durable`",
                    )
                } else if task.queue.is_some() {
                    Some("waits in no queue: it starts on worker 0 of the host that holds it")
                } else {
                    None
                };
                if let Some(why) = why {
                    bail!("{file}: {task}: `scope = \"app\"` {why}");
                }
            }
            if task.durable && task.name.is_none() {
                bail!(
                    "{file}: {task}: a durable task needs a `name`: it is how the next start \
                     finds the task's record"
                );
            }
            if let Some(name) = &task.name {
                if name.trim().is_empty() {
                    bail!("{file}: {task}: `name` must not be empty");
                }
                if let Some(why) = crate::config::reserved_name(name) {
                    bail!("{file}: {task}: `name`: {why}");
                }
                // An app-scoped task runs on worker 0 beside the
                // worker-scoped ones: one name space.
                let space = match task.scope {
                    Scope::App => Scope::Worker,
                    scope => scope,
                };
                if !names.insert((space, name.clone())) {
                    bail!(
                        "{file}: {task}: another task in the same scope is already named \
                         {name:?}; task names must be unique within a worker"
                    );
                }
            }
            tasks.push(task);
        }

        let mut schedules: Vec<ScheduleConfig> = Vec::new();
        for (index, spec) in raw.schedules.iter().enumerate() {
            let at = |name: &str| format!("{file}: schedules[{index}] ({name:?})");
            let schedule = spec.checked(None).with_context(|| at(&spec.name))?;
            if !plugins.contains_key(&schedule.plugin) {
                bail!("{}: no plugin named `{}`", at(&spec.name), schedule.plugin);
            }
            if schedules.iter().any(|s| s.name == schedule.name) {
                bail!("{}: another schedule has that name", at(&spec.name));
            }
            if let Some(placement) = &schedule.queue {
                queues::check_placement(&queues, placement, &schedule.args)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at(&spec.name)))?;
            }
            schedules.push(schedule);
        }
        let mut routes = Vec::new();
        for (index, route) in raw.routes.into_iter().enumerate() {
            let route = route
                .checked(index, base)
                .with_context(|| format!("{file}: routes[{index}]"))?;
            if !plugins.contains_key(&route.plugin) {
                bail!(
                    "{file}: routes[{index}] ({}): no plugin named `{}`",
                    route.label(),
                    route.plugin
                );
            }
            if let RouteKind::Http(HttpRoute {
                queue: Some(queue), ..
            }) = &route.kind
            {
                queues::check_named(&queues, queue).map_err(|e| {
                    anyhow::anyhow!("{file}: routes[{index}] ({}): {e}", route.label())
                })?;
                // A request gives no key: one must come from its arguments.
                if let Some(queue) = queues.iter().find(|q| q.name == *queue)
                    && queue.key_arg.is_none()
                    && let Some(field) = queue.needs_key()
                {
                    bail!(
                        "{file}: routes[{index}] ({}): queue `{}` goes by key (`{field}`) and a \
                         request gives none: give the queue a `key_arg` naming where in the \
                         request's arguments the key is (such as \"body.customer\")",
                        route.label(),
                        queue.name
                    );
                }
            }
            routes.push(route);
        }
        routes::check_unique(&routes).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let listen = raw
            .listen
            .checked(routes.len())
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        let limits = raw.limits.checked(&file.to_string())?;
        for route in &routes {
            if let RouteKind::Http(http) = &route.kind
                && http.max_body_bytes > limits.args_bytes
            {
                bail!(
                    "{file}: routes[{}] ({}): `max_body_bytes` ({}) is more than [limits] \
                     args_bytes ({}), so a body it accepts could not become the task's \
                     arguments; lower the one or raise the other",
                    route.index,
                    route.label(),
                    http.max_body_bytes,
                    limits.args_bytes
                );
            }
        }
        if raw.storage.keep_ended_tasks == Some(0) {
            bail!(
                "{file}: [storage] keep_ended_tasks must be at least 1 (how many ended durable \
                 tasks keep their outcome; default {DEFAULT_KEEP_ENDED_TASKS})"
            );
        }
        let cluster = raw
            .cluster
            .map(|cluster| cluster.checked(&file.to_string(), base))
            .transpose()?;
        let telemetry = raw
            .telemetry
            .map(|telemetry| telemetry.checked(&file.to_string()))
            .transpose()?;
        Ok(AppConfig {
            cluster,
            telemetry,
            source: source.to_path_buf(),
            name: raw.name,
            workers,
            cancel_grace: raw
                .cancel_grace_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_CANCEL_GRACE),
            plugins,
            config,
            tasks,
            limits,
            storage: StorageConfig {
                dir: base.join(
                    raw.storage
                        .path
                        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORAGE_DIR)),
                ),
                fsync: raw.storage.fsync,
                keep_ended_tasks: raw
                    .storage
                    .keep_ended_tasks
                    .unwrap_or(DEFAULT_KEEP_ENDED_TASKS),
            },
            schedules,
            queues,
            listen,
            routes,
        })
    }
}

/// More workers than this is a typo, not a deployment: each is an OS thread.
pub const MAX_WORKERS: u32 = 1024;

/// What a restart policy may not be combined with, wherever a task is
/// added: a durable task runs to its end once, across crashes, which a
/// supervisor that starts it again contradicts.
pub fn check_restart(_restart: &RestartPolicy, durable: bool) -> Result<()> {
    if durable {
        bail!(
            "`restart` and `durable` together: a durable task runs to its end once, across \
             crashes, and a supervised one is started again each time it ends; drop one \
             (a supervised app.toml task starts again with the host anyway)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AppConfig> {
        AppConfig::parse(text, Path::new("app.toml"), Path::new("/nonexistent"))
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("name = \"x\"\nworkerz = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("app.toml: "), "{err}");
        assert!(err.contains("unknown field `workerz`"), "{err}");
    }

    #[test]
    fn durable_is_true_false_rerun_or_resume_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.wasm"), b"").unwrap();
        let task = |durable: &str| {
            AppConfig::parse(
                &format!(
                    "name = \"x\"\n[plugins.p]\npath = \"p.wasm\"\n[[tasks]]\nplugin = \"p\"\n\
                     factory = \"f\"\nname = \"t\"\ndurable = {durable}\n"
                ),
                Path::new("app.toml"),
                dir.path(),
            )
            .map(|config| (config.tasks[0].durable, config.tasks[0].resume))
        };
        assert_eq!(task("true").unwrap(), (true, false));
        assert_eq!(task("\"rerun\"").unwrap(), (true, false));
        assert_eq!(task("\"resume\"").unwrap(), (true, true));
        assert_eq!(task("false").unwrap(), (false, false));
        let err = format!("{:#}", task("\"later\"").unwrap_err());
        assert!(
            err.contains("\"rerun\"") && err.contains("\"resume\""),
            "{err}"
        );
    }

    #[test]
    fn zero_workers_is_refused() {
        let err = parse("name = \"x\"\nworkers = 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "app.toml: `workers` must be at least 1 (got 0)");
    }

    #[test]
    fn task_must_name_a_defined_plugin() {
        let err = parse("name = \"x\"\n[[tasks]]\nplugin = \"p\"\nfactory = \"f\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "app.toml: tasks[0] (p/f): no plugin named `p` (defined plugins: none)"
        );
    }

    #[test]
    fn missing_plugin_file_is_named() {
        let err = parse("name = \"x\"\n[plugins.p]\npath = \"gone.wasm\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[plugins.p] path /nonexistent/gone.wasm does not exist"),
            "{err}"
        );
    }

    #[test]
    fn args_and_config_become_json() {
        let dir = std::env::temp_dir();
        let wasm = dir.join("taskhost-config-test.wasm");
        std::fs::write(&wasm, b"").unwrap();
        let text = format!(
            "name = \"demo\"\nworkers = 2\n[plugins.p]\npath = {:?}\n[config]\ngreeting = \"hi\"\n\
             [[tasks]]\nplugin = \"p\"\nfactory = \"f\"\nargs = {{ num = 3, tags = [\"a\"] }}\nscope = \"main\"\n",
            wasm.display().to_string()
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.workers, 2);
        assert_eq!(config.config["greeting"].value, serde_json::json!("hi"));
        assert_eq!(
            config.tasks[0].args,
            serde_json::json!({"num": 3, "tags": ["a"]})
        );
        assert_eq!(config.tasks[0].scope, Scope::Main);
    }

    #[test]
    fn duplicate_task_names_in_a_scope_are_refused() {
        let dir = std::env::temp_dir();
        let wasm = dir.join("taskhost-config-test-dup.wasm");
        std::fs::write(&wasm, b"").unwrap();
        let text = format!(
            "name = \"demo\"\n[plugins.p]\npath = {:?}\n\
             [[tasks]]\nplugin = \"p\"\nfactory = \"f\"\nname = \"a\"\n\
             [[tasks]]\nplugin = \"p\"\nfactory = \"g\"\nname = \"a\"\n",
            wasm.display().to_string()
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("tasks[1] (\"a\", p/g): another task"), "{err}");
    }

    fn config_of(text: &str, base: &Path) -> Result<BTreeMap<String, ConfigValue>> {
        AppConfig::parse(text, Path::new("app.toml"), base).map(|c| c.config)
    }

    #[test]
    fn a_config_value_may_come_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let config = config_of(
            "name = \"a\"\n[config]\npath = { env = \"PATH\" }\ntoken = { file = \"token\" }\n\
             plain = { env = \"PATH\", other = 1 }\n",
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            config["path"].value,
            serde_json::json!(std::env::var("PATH").unwrap())
        );
        assert_eq!(config["token"].value, serde_json::json!("s3cret"));
        assert_eq!(
            config["token"].secret,
            Some(SecretSource::File(dir.path().join("token")))
        );
        // Any other table is a plain value.
        assert_eq!(config["plain"].secret, None);
        assert_eq!(config["plain"].value["other"], 1);
        // Debug says where a secret came from, never what it is.
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<secret from file"), "{shown}");
    }

    #[test]
    fn a_missing_secret_names_the_key_and_where_it_was_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let error = config_of(
            "name = \"a\"\n[config]\ntoken = { env = \"TASKHOST_UNSET_FOR_THIS_TEST\" }\n",
            dir.path(),
        )
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("[config] key `token`"), "{message}");
        assert!(
            message.contains("TASKHOST_UNSET_FOR_THIS_TEST is not set"),
            "{message}"
        );
        let error = config_of(
            "name = \"a\"\n[config]\ntoken = { file = \".\" }\n",
            dir.path(),
        )
        .unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("not a regular file"), "{message}");
    }
}
