//! The `app` interface: the handle a task gets to the app it belongs to.
//! This module owns the interface's state ([`AppState`]) and its linking
//! ([`add_to_linker`]); it sees the worker only through [`TaskScope`].
//!
//! One file per part of the interface: `identity` (name, worker, config),
//! `log`, `time` (sleep), `tasks`, `events`.

mod events;
mod identity;
mod join;
mod log;
mod tasks;
mod time;

use crate::bindings::GuestError;
use crate::bindings::taskhost::plugin::types;
use crate::config::{AppConfig, Limits, PluginPolicy, TaskSpec};
use crate::events::EventHub;
use crate::logging::LogGate;
use crate::metrics::HttpMetrics;
use crate::operations::types::{OpError, Submission, Submitted};
use crate::registry::{AddTaskError, Listing};
use crate::storage::Storage;
use crate::task::{CancelSignal, TaskId, TaskIdent};
use crate::telemetry::{Attr, CallSpan, SpanKind};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};

/// What the `app` interface needs of the worker a task runs on, and all
/// it sees of it: the worker's registry, the host's events, and starting a
/// task beside the caller. The worker implements it, so this module (and
/// everything below the worker) never names the worker.
/// The tasks of the caller's worker are its [`Listing`]'s registry.
pub(crate) trait TaskScope: Listing {
    /// The named events of the whole host.
    fn events(&self) -> &EventHub;

    /// What the host keeps: key-value state, durable tasks, schedules.
    fn storage(&self) -> &Storage;

    /// Sanic's `add_task` on this worker: resolves with the new task's id
    /// once its factory has accepted the arguments.
    fn add_task(
        self: Arc<Self>,
        plugin: String,
        spec: TaskSpec,
    ) -> Pin<Box<dyn Future<Output = Result<TaskId, AddTaskError>> + Send>>;

    /// Adds a schedule (JSON spec) of `plugin` unless it names another;
    /// the error says what is wrong.
    fn add_schedule(
        self: Arc<Self>,
        plugin: String,
        spec: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), GuestError>> + Send>>;

    /// Removes a schedule a guest added; whether there was one.
    fn remove_schedule(
        self: Arc<Self>,
        name: String,
    ) -> Pin<Box<dyn Future<Output = Result<bool, GuestError>> + Send>>;

    /// `start-task-on`: places `submission` on other hosts of the
    /// cluster (its `host`); where each task runs.
    fn start_task_on(self: Arc<Self>, submission: Submission) -> PlacedFuture;

    /// Task `id` of any worker of this host, to wait for.
    fn awaited(&self, id: TaskId) -> Option<crate::joins::Awaited>;

    /// This host's name in its cluster; none without one.
    fn host_name(&self) -> Option<String>;

    /// Waits until task `id` of `host`, another host of the cluster, has
    /// ended.
    fn join_on(self: Arc<Self>, host: String, id: TaskId) -> Joined;
}

/// A task of another host, once it has ended, or why it cannot be waited
/// for.
pub(crate) type Joined =
    Pin<Box<dyn Future<Output = Result<crate::task::TaskView, OpError>> + Send>>;

/// Where tasks started on other hosts run, or why not.
pub(crate) type PlacedFuture = Pin<Box<dyn Future<Output = Result<Submitted, OpError>> + Send>>;

/// What every task of an application shares: built once from app.toml.
pub struct AppContext {
    /// The app's `name` from app.toml: what `app.name()` returns.
    pub name: String,
    /// `[limits]` as app.toml set them, defaults filled in.
    pub limits: Limits,
    /// `[config]` values, already encoded as the JSON text `app.config`
    /// returns, so a call costs a lookup and a copy.
    config: HashMap<String, String>,
    /// Bounds and grants of the plugins app.toml configures.
    policies: HashMap<String, Arc<PluginPolicy>>,
    /// For plugins app.toml does not name (loaded into a running host):
    /// the app's limits, no grants.
    default_policy: Arc<PluginPolicy>,
    /// Linear memory held by live tasks, host-wide (a metric).
    pub task_memory: Gauge,
    /// TCP sockets tasks hold open, host-wide (a metric, and what
    /// `[limits] sockets_per_app` bounds).
    pub sockets_open: Gauge,
    /// What tasks' outbound HTTP requests did (metrics).
    pub http_metrics: HttpMetrics,
    /// The public listener's open websocket connections, which tasks
    /// reach through the `connections` interface.
    pub connections: Arc<crate::connection_hub::ConnectionHub>,
    /// What `task_memory` may reach (`memory_total_mb`, resolved once).
    pub memory_total_bytes: u64,
    /// Every task's kept log lines, against `[limits] task_log_bytes`.
    pub(crate) log_book: Arc<crate::task_log::LogBook>,
    /// The trace exporter (`[telemetry]`), once the host started it.
    telemetry: std::sync::OnceLock<Arc<crate::telemetry::Telemetry>>,
}

impl std::fmt::Debug for AppContext {
    /// Without the `[config]` values: some are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&String> = self.config.keys().collect();
        keys.sort();
        f.debug_struct("AppContext")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("config_keys", &keys)
            .finish_non_exhaustive()
    }
}

impl AppContext {
    /// The context of the app `config` describes: each configured plugin's
    /// bounds, grants and variables resolved once, `[config]` encoded as JSON text once.
    pub fn new(config: &AppConfig) -> AppContext {
        let limits = config.limits;
        let policies = config
            .plugins
            .iter()
            .map(|(name, plugin)| (name.clone(), Arc::new(plugin.policy(&limits))))
            .collect();
        AppContext {
            name: config.name.clone(),
            limits,
            config: config
                .config
                .iter()
                .map(|(key, value)| (key.clone(), value.value.to_string()))
                .collect(),
            policies,
            default_policy: Arc::new(PluginPolicy::unlisted(&limits)),
            task_memory: Gauge::default(),
            sockets_open: Gauge::default(),
            http_metrics: HttpMetrics::default(),
            connections: Arc::default(),
            memory_total_bytes: limits.memory_total_bytes(),
            log_book: crate::task_log::LogBook::new(limits.task_log_lines, limits.task_log_bytes),
            telemetry: std::sync::OnceLock::new(),
        }
    }

    /// The trace exporter, if `[telemetry]` is on and the host started.
    pub(crate) fn telemetry(&self) -> Option<&Arc<crate::telemetry::Telemetry>> {
        self.telemetry.get()
    }

    /// Hands the host's trace exporter to every task (once).
    pub(crate) fn set_telemetry(&self, telemetry: Arc<crate::telemetry::Telemetry>) {
        let _ = self.telemetry.set(telemetry);
    }

    /// The `[config]` value of `key` as JSON text (what `app.config(key)`
    /// returns); none if app.toml sets no such key.
    pub fn config_json(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }

    /// The bounds, grants and variables of `plugin`'s tasks.
    pub fn policy(&self, plugin: &str) -> &Arc<PluginPolicy> {
        self.policies.get(plugin).unwrap_or(&self.default_policy)
    }
}

/// The `app` interface's state in one task's store: who the task is, the
/// app it belongs to, its cancellation, its worker, and its log.
pub(crate) struct AppState {
    pub(crate) ident: Arc<TaskIdent>,
    pub(crate) app: Arc<AppContext>,
    pub(crate) cancel: Arc<CancelSignal>,
    /// The worker the task runs on; none for the throw-away instances that
    /// list factories and check arguments at load.
    pub(crate) scope: Option<Arc<dyn TaskScope>>,
    log: Arc<LogGate>,
    /// Which attempt of the task this instance runs (1 unless retried).
    pub(crate) attempt: u32,
    /// Set by `stop-retrying`: a failure of this attempt is final.
    pub(crate) stop_retrying: bool,
    /// A durable task's idempotency key (`idempotency-key`).
    pub(crate) idempotency_key: Option<Arc<str>>,
    /// A resuming task's journal (`durable = "resume"`): its calls are
    /// answered from it while it replays, and recorded after.
    pub(crate) journal: Option<Arc<crate::journal::Journal>>,
}

impl AppState {
    /// A span of a call this task makes (`[telemetry]`), if its trace is
    /// recorded.
    fn span(&self, kind: SpanKind, name: std::borrow::Cow<'static, str>) -> Option<CallSpan> {
        CallSpan::start(self.app.telemetry(), &self.ident, kind, name)
    }

    /// The span of starting a task of `plugin`/`factory`: the parent of
    /// that task's own span.
    fn start_span(&self, plugin: &str, factory: &str) -> Option<CallSpan> {
        self.span(
            SpanKind::Producer,
            format!("start task {plugin}/{factory}").into(),
        )
    }

    /// The trace a task this one starts joins: under `span` (the start's
    /// own) if it is recorded, else under this task's span.
    fn child_trace(&self, span: Option<&CallSpan>) -> Option<crate::trace_context::TraceParent> {
        span.map(CallSpan::context)
            .or_else(|| self.ident.trace.as_ref().map(|trace| trace.span))
    }

    /// The span of a join of `tasks` tasks.
    fn join_span(&self, tasks: usize) -> Option<CallSpan> {
        self.span(SpanKind::Internal, "join".into())
            .map(|span| span.with("taskhost.tasks", Attr::Int(tasks as i64)))
    }

    pub(crate) fn new(
        ident: Arc<TaskIdent>,
        app: Arc<AppContext>,
        cancel: Arc<CancelSignal>,
        log: Arc<LogGate>,
    ) -> AppState {
        AppState {
            ident,
            app,
            cancel,
            scope: None,
            log,
            attempt: 1,
            stop_retrying: false,
            idempotency_key: None,
            journal: None,
        }
    }
}

/// Links the `app` interface (and its `types`) for stores whose data holds
/// an [`AppState`], reached through `state`: the current version, 0.4.0,
/// 0.3.0, 0.2.0 and 0.1.0, so plugins built against any of them run.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    state: fn(&mut T) -> &mut AppState,
) -> anyhow::Result<()> {
    use crate::bindings::taskhost::plugin as current;
    use crate::bindings::v0_3::taskhost::plugin as v0_3;
    use crate::bindings::v0_4::taskhost::plugin as v0_4;
    use crate::bindings::{v0_1::taskhost::plugin as v0_1, v0_2::taskhost::plugin as v0_2};
    current::types::add_to_linker::<T, HasSelf<AppState>>(linker, state)
        .and_then(|()| current::app::add_to_linker::<T, HasSelf<AppState>>(linker, state))
        // Older versions' `types` declare only types: an empty instance
        // links each.
        .and_then(|()| linker.instance("taskhost:plugin/types@0.4.0").map(drop))
        .and_then(|()| v0_4::app::add_to_linker::<T, HasSelf<AppState>>(linker, state))
        .and_then(|()| linker.instance("taskhost:plugin/types@0.3.0").map(drop))
        .and_then(|()| v0_3::app::add_to_linker::<T, HasSelf<AppState>>(linker, state))
        .and_then(|()| linker.instance("taskhost:plugin/types@0.2.0").map(drop))
        .and_then(|()| v0_2::app::add_to_linker::<T, HasSelf<AppState>>(linker, state))
        .and_then(|()| linker.instance("taskhost:plugin/types@0.1.0").map(drop))
        .and_then(|()| v0_1::app::add_to_linker::<T, HasSelf<AppState>>(linker, state))
        .map_err(|e| anyhow::anyhow!("cannot add the app interface to the linker: {e:#}"))
}

impl types::Host for AppState {}

use crate::bindings::v0_2::taskhost::plugin::app as app_0_2;
use crate::bindings::v0_3::taskhost::plugin::app as app_0_3;
use crate::bindings::v0_4::taskhost::plugin::app as app_0_4;

/// An older version's `task-options` made current: `$old` is that
/// version's `app` module; `placement` and `child` are given for the
/// versions that have them (the others have none and `false`).
macro_rules! current_options {
    ($old:ident, |$options:ident| { placement: $placement:expr, child: $child:expr $(,)? }) => {
        impl From<$old::TaskOptions> for crate::bindings::taskhost::plugin::app::TaskOptions {
            fn from($options: $old::TaskOptions) -> Self {
                use crate::bindings::taskhost::plugin::app::RetryPolicy;
                Self {
                    retry: $options.retry.as_ref().map(|retry| RetryPolicy {
                        attempts: retry.attempts,
                        initial_ms: retry.initial_ms,
                        max_ms: retry.max_ms,
                        exponential: retry.exponential,
                        jitter: retry.jitter,
                    }),
                    placement: $placement,
                    child: $child,
                    name: $options.name,
                    durable: $options.durable,
                    idempotency_key: $options.idempotency_key,
                    // Supervision came with 0.5.0.
                    restart: None,
                }
            }
        }
    };
}

/// An older version's `placement` made current (0.3.0 and 0.4.0 have one).
macro_rules! current_placement {
    ($old:ident, $placement:expr) => {{
        use crate::bindings::taskhost::plugin::app::{Placement, StartAt};
        use $old::StartAt as OldStart;
        $placement.map(|placement| Placement {
            queue: placement.queue,
            key: placement.key,
            priority: placement.priority,
            start: placement.start.map(|start| match start {
                OldStart::DelayMs(ms) => StartAt::DelayMs(ms),
                OldStart::RunAtMs(ms) => StartAt::RunAtMs(ms),
            }),
        })
    }};
}

current_options!(app_0_4, |options| {
    placement: current_placement!(app_0_4, options.placement),
    child: options.child,
});
current_options!(app_0_3, |options| {
    placement: current_placement!(app_0_3, options.placement),
    // 0.3.0 has no children.
    child: false,
});
// 0.2.0 cannot place a task in a queue.
current_options!(app_0_2, |options| {
    placement: None,
    child: false,
});

impl From<crate::bindings::v0_4::taskhost::plugin::app::TaskRef>
    for crate::bindings::taskhost::plugin::app::TaskRef
{
    fn from(old: crate::bindings::v0_4::taskhost::plugin::app::TaskRef) -> Self {
        use crate::bindings::taskhost::plugin::app::{PlacedTask, TaskRef};
        use crate::bindings::v0_4::taskhost::plugin::app::TaskRef as Old;
        match old {
            Old::Id(id) => TaskRef::Id(id),
            Old::Name(name) => TaskRef::Name(name),
            Old::Placed(placed) => TaskRef::Placed(PlacedTask {
                host: placed.host,
                id: placed.id,
            }),
        }
    }
}

/// `app`'s functions, once for each WIT version the host links: their
/// signatures are the same (the types are shared, see `crate::bindings`).
macro_rules! app_host {
    // `$info`: the version's task-info; `$listed` makes it from the
    // current one.
    ($host:path, $info:ty, $listed:path $(, { $($only:tt)* })?) => {
        impl $host for AppState {
            $($($only)*)?

            async fn name(&mut self) -> wasmtime::Result<String> {
                Ok(self.app_name())
            }

            async fn worker(&mut self) -> wasmtime::Result<Option<u32>> {
                Ok(self.app_worker())
            }

            async fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
                let value = self.app_config(&key);
                // A resuming task reads the value it read before the crash,
                // whatever app.toml says now.
                let Some(journal) = &self.journal else {
                    return Ok(value);
                };
                Ok(crate::journal::journaled_read(
                    journal,
                    format!("config {key}"),
                    async move { value },
                    |value| serde_json::to_vec(value).unwrap_or_default(),
                    |bytes| serde_json::from_slice(bytes).ok(),
                )
                .await?)
            }

            async fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
                self.app_log(level, &message);
                Ok(())
            }

            async fn sleep(&mut self, ms: u64) -> wasmtime::Result<Result<(), types::Error>> {
                let span = self.span(SpanKind::Internal, "sleep".into()).map(|span| {
                    span.with("taskhost.sleep_ms", Attr::Int(i64::try_from(ms).unwrap_or(i64::MAX)))
                });
                // A resuming task sleeps until the end its journal gives.
                // (A sleep of 0 is a yield: nothing to journal.)
                let ms = match &self.journal {
                    Some(journal) if ms > 0 => crate::journal::sleep_until(journal, ms).await?,
                    _ => ms,
                };
                let slept = time::sleep(self.cancel.clone(), ms).await;
                CallSpan::end_with(span, &slept);
                Ok(slept)
            }

            async fn task_id(&mut self) -> wasmtime::Result<u64> {
                Ok(self.app_task_id())
            }

            async fn add_task(
                &mut self,
                plugin: Option<String>,
                factory: String,
                args: String,
                name: Option<String>,
            ) -> wasmtime::Result<Result<u64, types::Error>> {
                let (worker, plugin) = match self.add_task_target(plugin) {
                    Ok(target) => target,
                    Err(error) => return Ok(Err(error)),
                };
                let span = self.start_span(&plugin, &factory);
                let mut spec = TaskSpec {
                    factory,
                    args,
                    name,
                    parent: Some(self.ident.id),
                    trace: self.child_trace(span.as_ref()),
                    ..TaskSpec::default()
                };
                if let Err(error) = self.journal_start(&plugin, &mut spec).await? {
                    return Ok(Err(error));
                }
                let added = tasks::add_task(worker, plugin, spec).await;
                CallSpan::end_with(span, &added);
                Ok(added)
            }

            async fn get_task(
                &mut self,
                name: String,
            ) -> wasmtime::Result<Result<$info, types::Error>> {
                Ok(self.app_get_task(&name).map($listed))
            }

            async fn cancel_task(
                &mut self,
                name: String,
            ) -> wasmtime::Result<Result<$info, types::Error>> {
                Ok(match self.cancel_request(&name) {
                    Ok(request) => tasks::cancel_task(request).await.map($listed),
                    Err(error) => Err(error),
                })
            }

            async fn tasks(&mut self) -> wasmtime::Result<Vec<$info>> {
                Ok(self.app_tasks().into_iter().map($listed).collect())
            }

            async fn purge_tasks(&mut self) -> wasmtime::Result<u32> {
                Ok(self.app_purge_tasks())
            }

            async fn dispatch(
                &mut self,
                event: String,
                payload: String,
            ) -> wasmtime::Result<Result<u32, types::Error>> {
                Ok(self.app_dispatch(&event, &payload))
            }

            async fn wait_event(
                &mut self,
                event: String,
                timeout_ms: Option<u64>,
            ) -> wasmtime::Result<Result<Option<String>, types::Error>> {
                let Some(scope) = &self.scope else {
                    return Ok(Err(types::Error::Failed(
                        "no worker: events cannot be awaited here".into(),
                    )));
                };
                let span = self
                    .span(SpanKind::Internal, "wait event".into())
                    .map(|span| span.with("taskhost.event", Attr::Text(event.clone())));
                let call = format!("wait event {event} {timeout_ms:?}");
                let replayed = match &self.journal {
                    Some(journal) => journal.replay(&call)?,
                    None => None,
                };
                let waited = match replayed {
                    // What the wait got before the crash (a cancel is never
                    // recorded: a stop must not end the resumed task).
                    Some((_, recorded)) => Ok(serde_json::from_slice(&recorded).unwrap_or(None)),
                    None => {
                        let began = std::time::Instant::now();
                        let waited =
                            events::wait_event(scope.clone(), self.cancel.clone(), event, timeout_ms)
                                .await;
                        if let (Some(journal), Ok(payload)) = (&self.journal, &waited) {
                            let recorded = serde_json::to_vec(payload).unwrap_or_default();
                            journal.record(call, recorded, began).await?;
                        }
                        waited
                    }
                };
                if let Some(mut span) = span {
                    if let Ok(woken) = &waited {
                        span.set("taskhost.woken", Attr::Text(woken.is_some().to_string()));
                    }
                    span.end(waited.as_ref().err().map(ToString::to_string));
                }
                Ok(waited)
            }
        }
    };
}

/// The functions 0.2.0 added (retries, durable tasks, schedules, other
/// hosts), for each version that has them: `$options` and `$placed` are
/// the version's `task-options` (made current with `Into`) and
/// `placed-task`.
macro_rules! since_0_2 {
    ($options:ty, $placed:ty) => {
        async fn attempt(&mut self) -> wasmtime::Result<u32> {
            Ok(self.attempt)
        }

        async fn stop_retrying(&mut self) -> wasmtime::Result<()> {
            self.stop_retrying = true;
            Ok(())
        }

        async fn add_schedule(
            &mut self,
            spec: String,
        ) -> wasmtime::Result<Result<(), types::Error>> {
            let worker = match self.add_task_target(None) {
                Ok((worker, plugin)) => (worker, plugin),
                Err(error) => return Ok(Err(error)),
            };
            Ok(worker.0.add_schedule(worker.1, spec).await)
        }

        async fn start_task_on(
            &mut self,
            host: String,
            plugin: Option<String>,
            factory: String,
            args: String,
            options: $options,
            cluster_name: bool,
        ) -> wasmtime::Result<Result<Vec<$placed>, types::Error>> {
            type PlacedHere = $placed;
            let (worker, plugin) = match self.add_task_target(plugin) {
                Ok(target) => target,
                Err(error) => return Ok(Err(error)),
            };
            let span = self
                .span(
                    SpanKind::Producer,
                    format!("start task {plugin}/{factory} on {host}").into(),
                )
                .map(|span| span.with("taskhost.target_host", Attr::Text(host.clone())));
            let mut submission = match tasks::submission_of(
                host,
                plugin,
                factory,
                args,
                options.into(),
                cluster_name,
            ) {
                Ok(submission) => submission,
                Err(error) => return Ok(Err(error)),
            };
            // The trace goes along to whichever host runs the task.
            submission.traceparent = self.child_trace(span.as_ref()).map(|trace| trace.header());
            let about = (
                submission.plugin.clone(),
                submission.factory.clone(),
                submission.name.clone(),
            );
            let placed = worker.start_task_on(submission).await;
            if let Some(mut span) = span {
                if let Ok(submitted) = &placed {
                    let hosts: Vec<&str> = submitted
                        .tasks
                        .iter()
                        .filter_map(|task| task.host.as_deref())
                        .collect();
                    span.set("taskhost.placed_on", Attr::Text(hosts.join(",")));
                }
                span.end(placed.as_ref().err().map(|error| error.message.clone()));
            }
            Ok(placed
                .map(|submitted| {
                    submitted
                        .tasks
                        .into_iter()
                        .map(|task| PlacedHere {
                            host: task.host.unwrap_or_default(),
                            id: task.id,
                        })
                        .collect()
                })
                .map_err(|error| error.into_guest(&about.0, &about.1, about.2.as_deref())))
        }

        async fn remove_schedule(
            &mut self,
            name: String,
        ) -> wasmtime::Result<Result<bool, types::Error>> {
            let worker = match self.add_task_target(None) {
                Ok((worker, _)) => worker,
                Err(error) => return Ok(Err(error)),
            };
            Ok(worker.remove_schedule(name).await)
        }

        async fn idempotency_key(&mut self) -> wasmtime::Result<Option<String>> {
            Ok(self.idempotency_key.as_deref().map(str::to_string))
        }

        async fn start_task(
            &mut self,
            plugin: Option<String>,
            factory: String,
            args: String,
            options: $options,
        ) -> wasmtime::Result<Result<u64, types::Error>> {
            let options: crate::bindings::taskhost::plugin::app::TaskOptions = options.into();
            let child = options.child;
            let mut spec = match tasks::spec_of(factory, args, options) {
                Ok(spec) => spec,
                Err(error) => return Ok(Err(error)),
            };
            spec.parent = Some(self.ident.id);
            let (worker, plugin) = match self.add_task_target(plugin) {
                Ok(target) => target,
                Err(error) => return Ok(Err(error)),
            };
            if let Err(error) = self.journal_start(&plugin, &mut spec).await? {
                return Ok(Err(error));
            }
            let span = self.start_span(&plugin, &spec.factory);
            spec.trace = self.child_trace(span.as_ref());
            let started = tasks::add_task(worker.clone(), plugin, spec).await;
            CallSpan::end_with(span, &started);
            if let (Ok(id), true) = (&started, child) {
                self.adopt_child(&worker, *id);
            }
            Ok(started)
        }
    };
}

/// The functions 0.4.0 added (joins), for each version that has them:
/// `$task_ref` is the version's `task-ref` (made current with `Into`).
macro_rules! since_0_4 {
    ($task_ref:ty) => {
        async fn join(
            &mut self,
            task: $task_ref,
            timeout_ms: Option<u64>,
        ) -> wasmtime::Result<Result<Option<types::TaskInfo>, types::Error>> {
            let span = self.join_span(1);
            let joined = match self.join_request(vec![task.into()], timeout_ms) {
                Ok(request) => join::join_all(request)
                    .await
                    .map(|ended| ended.and_then(|mut infos| infos.pop())),
                Err(error) => Err(error),
            };
            CallSpan::end_with(span, &joined);
            Ok(joined)
        }

        async fn join_all(
            &mut self,
            tasks: Vec<$task_ref>,
            timeout_ms: Option<u64>,
        ) -> wasmtime::Result<Result<Option<Vec<types::TaskInfo>>, types::Error>> {
            let span = self.join_span(tasks.len());
            let joined =
                match self.join_request(tasks.into_iter().map(Into::into).collect(), timeout_ms) {
                    Ok(request) => join::join_all(request).await,
                    Err(error) => Err(error),
                };
            CallSpan::end_with(span, &joined);
            Ok(joined)
        }

        async fn join_any(
            &mut self,
            tasks: Vec<$task_ref>,
            timeout_ms: Option<u64>,
        ) -> wasmtime::Result<Result<Option<(u32, types::TaskInfo)>, types::Error>> {
            let span = self.join_span(tasks.len());
            let joined =
                match self.join_request(tasks.into_iter().map(Into::into).collect(), timeout_ms) {
                    Ok(request) => join::join_any(request).await,
                    Err(error) => Err(error),
                };
            CallSpan::end_with(span, &joined);
            Ok(joined)
        }
    };
}

app_host!(
    crate::bindings::taskhost::plugin::app::Host,
    types::TaskInfo,
    std::convert::identity,
    {
        since_0_2!(
            crate::bindings::taskhost::plugin::app::TaskOptions,
            crate::bindings::taskhost::plugin::app::PlacedTask
        );

        since_0_4!(crate::bindings::taskhost::plugin::app::TaskRef);
    }
);
app_host!(
    crate::bindings::v0_4::taskhost::plugin::app::Host,
    types::TaskInfo,
    std::convert::identity,
    {
        since_0_2!(
            crate::bindings::v0_4::taskhost::plugin::app::TaskOptions,
            crate::bindings::v0_4::taskhost::plugin::app::PlacedTask
        );
        since_0_4!(crate::bindings::v0_4::taskhost::plugin::app::TaskRef);
    }
);
app_host!(
    crate::bindings::v0_3::taskhost::plugin::app::Host,
    types::TaskInfo,
    std::convert::identity,
    {
        since_0_2!(
            crate::bindings::v0_3::taskhost::plugin::app::TaskOptions,
            crate::bindings::v0_3::taskhost::plugin::app::PlacedTask
        );
    }
);
app_host!(
    crate::bindings::v0_2::taskhost::plugin::app::Host,
    crate::bindings::v0_2_types::TaskInfo,
    crate::bindings::v0_2_types::TaskInfo::from,
    {
        since_0_2!(
            crate::bindings::v0_2::taskhost::plugin::app::TaskOptions,
            crate::bindings::v0_2::taskhost::plugin::app::PlacedTask
        );
    }
);
app_host!(
    crate::bindings::v0_1::taskhost::plugin::app::Host,
    crate::bindings::v0_2_types::TaskInfo,
    crate::bindings::v0_2_types::TaskInfo::from
);
