//! A running host: its workers, their tasks, and the operations the host
//! itself (not a guest) performs on them. `taskhost run` drives one; the
//! control API and in-process tests use the same calls.

use crate::app::AppContext;
use crate::config::{AppConfig, Scope, TaskConfig, TaskSpec};
use crate::engine::EpochTicker;
use crate::events::EventHub;
use crate::lifecycle::LifecycleEvent;
use crate::metrics::Metrics;
use crate::plugin::{LoadError, Loaded, Plugin, PluginLoader};
use crate::registry::{AddTaskError, Added, TaskHandle};
use crate::scheduler::Scheduler;
use crate::task::{TaskInfo, TaskState, WorkerId};
use crate::worker::{TaskEnv, Worker, WorkerCtx};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

/// How long shutdown waits beyond the grace period for tasks to be gone,
/// and then for each further task to end. Forced tasks end within a tick
/// or two, so running out of it means a host bug, not a slow crowd.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// How many lifecycle events a slow stream listener may fall behind before
/// it is told it missed some.
const LIFECYCLE_BACKLOG: usize = 4096;

/// What happened during a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Tasks that ended `done` over the whole run
    /// (`taskhost_tasks_done_total`), purged ones included.
    pub done: usize,
    /// Tasks that ended `failed` over the whole run
    /// (`taskhost_tasks_failed_total`).
    pub failed: usize,
    /// Tasks that ended `cancelled` over the whole run, shutdown's cancels
    /// included (`taskhost_tasks_cancelled_total`).
    pub cancelled: usize,
    /// The run was ended by the shutdown signal.
    pub interrupted: bool,
    /// Tasks that had not ended when shutdown gave up waiting.
    pub abandoned: usize,
}

/// Why the host could not cancel a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// The cancel named a worker this host does not have.
    #[error("no worker {0}")]
    NoWorker(WorkerId),
    /// The worker has no task of that name (never, or purged).
    #[error("no task named `{0}` on that worker")]
    NotFound(String),
    /// A durable task's cancel could not be recorded, so it was not sent.
    #[error("{0}")]
    Storage(String),
}

/// A running application.
pub struct Host {
    config: AppConfig,
    env: Arc<TaskEnv>,
    main: Worker,
    workers: Vec<Worker>,
    main_handles: Vec<TaskHandle>,
    /// The worker-scope startup tasks as running now: which worker, which
    /// app.toml task, which registry entry. `load --restart-tasks` replaces
    /// entries here.
    startup: Mutex<Vec<(Arc<WorkerCtx>, TaskConfig, TaskHandle)>>,
    /// Builds replaced by a hot-load, while their tasks drain.
    retired: Mutex<Vec<Weak<Plugin>>>,
    /// The last [`LOAD_HISTORY`] loads and refusals, oldest first.
    loads: Mutex<std::collections::VecDeque<LoadRecord>>,
    /// The schedules, once the workers started.
    scheduler: Option<Arc<Scheduler>>,
    /// This host's membership in its cluster (`[cluster]`); none alone.
    cluster: Option<crate::cluster::Cluster>,
    /// Set while a heap trim is due (see [`Host::trim_heap_soon`]).
    trim_due: Arc<std::sync::atomic::AtomicBool>,
    _ticker: EpochTicker,
}

/// Loads and refusals a host remembers for `GET /v1/loads` (the
/// dashboard's hot-load history): the newest ones, a few KiB each at most.
pub const LOAD_HISTORY: usize = 100;

/// A build loaded or refused: the lifecycle event the stream carried
/// (`plugin_loaded`, `plugin_refused`), and when.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadRecord {
    /// When (Unix ms).
    pub at_ms: u64,
    /// What happened: the event as the stream sent it.
    #[serde(flatten)]
    pub event: LifecycleEvent,
}

/// One loaded build of a plugin, as [`Host::builds`] lists it.
#[derive(Debug, Clone)]
pub struct Build {
    /// The build: its name, version, file and factories.
    pub plugin: Arc<Plugin>,
    /// New tasks start from it; otherwise a newer build replaced it and it
    /// only runs the tasks that started on it.
    pub serving: bool,
    /// Its tasks that have not ended.
    pub live_tasks: usize,
}

/// Applies what operators set on the queues at run time before this
/// start (pauses, drains, limits), as storage kept it. A queue app.toml no
/// longer lists, or a setting its queue no longer takes, is logged and
/// left out: the app starts as app.toml says.
async fn restore_queue_settings(
    queues: &crate::queues::Queues,
    storage: &crate::storage::Storage,
    source: &std::path::Path,
) -> Result<()> {
    let stored = storage
        .queues()
        .queue_settings()
        .await
        .with_context(|| format!("{}: [storage]: the queues' settings", source.display()))?;
    for (name, json) in stored {
        let applied = queues
            .get(&name)
            .and_then(|queue| queue.apply_stored(Some(&json)));
        match applied {
            Ok(()) => tracing::info!(
                queue = name,
                settings = json,
                "queue {name}: run-time settings kept from before: {json}"
            ),
            Err(why) => tracing::warn!(
                queue = name,
                "queue {name}: run-time settings from before not applied: {why}"
            ),
        }
    }
    Ok(())
}

impl Drop for Host {
    fn drop(&mut self) {
        // After a shutdown none is left; without one, the tasks still
        // waiting in a queue are dropped with the host, not leaked.
        self.env.queues.clear();
    }
}

impl Host {
    pub(crate) async fn launch(
        config: AppConfig,
        loader: PluginLoader,
        app: Arc<AppContext>,
        plugins: BTreeMap<String, Arc<Plugin>>,
        components: BTreeMap<String, Vec<u8>>,
        storage: crate::storage::Storage,
        storage_metrics: crate::storage::StorageMetrics,
    ) -> Result<Host> {
        let engines = loader.engines().clone();
        // In a cluster, key-value state and durable tasks live in it: the
        // connection comes first, so the storage is whole from the start.
        let connection = match &config.cluster {
            Some(cluster) => {
                Some(crate::cluster::Connection::open(cluster, &config.source, &app.limits).await?)
            }
            None => None,
        };
        let storage = match &connection {
            Some(connection) => connection.storage(storage),
            None => storage,
        };
        let mut ticked = vec![&engines.engine, &engines.cold, &engines.images];
        ticked.extend(&engines.warm_images);
        let ticker = EpochTicker::start(&ticked)?;
        let mut metrics = Metrics::new(app.task_memory.clone(), app.http_metrics.clone())
            .with_storage(storage_metrics.call_seconds, storage_metrics.waiting)
            .with_sockets(app.sockets_open.clone())
            .with_pools(engines.pools.made.clone(), engines.pools.free.clone());
        if let Some(telemetry) = &config.telemetry {
            let traces = crate::metrics::TraceMetrics::default();
            metrics = metrics.with_traces(&traces);
            let instance = config.cluster.as_ref().map(|cluster| cluster.host.as_str());
            let exporter =
                crate::telemetry::Telemetry::start(telemetry, &config.name, instance, traces)
                    .context("cannot start the trace exporter ([telemetry])")?;
            app.set_telemetry(Arc::new(exporter));
        }
        let queues = crate::queues::Queues::new(&config.queues, metrics.queues.clone());
        restore_queue_settings(&queues, &storage, &config.source).await?;
        let env = Arc::new(TaskEnv {
            engines,
            plugins: RwLock::new(plugins),
            events: EventHub::default(),
            tracker: TaskTracker::new(),
            cancel_grace: config.cancel_grace,
            metrics,
            app,
            storage,
            lifecycle: broadcast::channel(LIFECYCLE_BACKLOG).0,
            workers: RwLock::default(),
            durable_submit: tokio::sync::Mutex::new(()),
            schedules: std::sync::OnceLock::new(),
            remote: std::sync::OnceLock::new(),
            stopping: AtomicBool::new(false),
            queues,
            loader,
            first_builds: Mutex::default(),
        });
        // Each loaded build is kept (once) while a task that resumes may
        // need it.
        for (name, component) in components {
            if let Some(plugin) = env.plugin(&name) {
                env.keep_build(&plugin, component).await;
            }
        }
        // Joined before any task runs, so waiters hear the other hosts'
        // events from the start.
        let cluster = match connection {
            Some(connection) => {
                Some(crate::cluster::Cluster::join(connection, &config.source, env.clone()).await?)
            }
            None => None,
        };
        let main = Worker::start(WorkerId::Main, env.clone())?;
        let mut host = Host {
            cluster,
            config,
            env,
            main,
            workers: Vec::new(),
            main_handles: Vec::new(),
            startup: Mutex::default(),
            retired: Mutex::default(),
            loads: Mutex::default(),
            scheduler: None,
            trim_due: Arc::default(),
            _ticker: ticker,
        };
        host.load_cluster_builds().await;
        // Durable tasks first: an unfinished one runs again before any
        // startup task, and a durable startup task that ended is listed,
        // so it is found rather than started.
        let recovered = crate::worker::recover(std::slice::from_ref(host.main.ctx()))
            .await
            .with_context(|| format!("{}: [storage]", host.config.source.display()))?;
        host.main_handles.extend(recovered);
        // The builds no unfinished task began on go once it has resumed
        // (those that run now hold theirs).
        host.env.drop_builds().await;
        let main_tasks: Vec<TaskConfig> = host.startup_tasks(Scope::Main).cloned().collect();
        for task in &main_tasks {
            let handle = host.spawn_startup(host.main.ctx(), task).await?;
            host.main_handles.push(handle);
        }
        Ok(host)
    }

    /// A host joining a cluster serves the builds the cluster rolled out
    /// before any of its tasks starts: otherwise its startup tasks would
    /// start on app.toml's build, and drain there once the roll-out's watch
    /// loaded the cluster's. A build refused here (it does not load, or
    /// does not match its digest) is logged, and app.toml's keeps serving.
    async fn load_cluster_builds(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let serving = |name: &str| self.env.plugin(name).map(|p| p.version.to_string());
        let latest = match cluster.rollout().latest_builds(serving).await {
            Ok(latest) => latest,
            Err(error) => {
                tracing::warn!(
                    "cannot read the builds the cluster rolled out ({error:#}): the tasks start \
                     on app.toml's builds, and the roll-out's watch loads the cluster's later"
                );
                return;
            }
        };
        for (name, from, fetched) in latest {
            match fetched {
                // A refused build is announced by the load itself.
                Ok(bytes) => drop(self.load_plugin_bytes(&name, &from, bytes).await),
                Err(error) => self.refuse_plugin(&name, &from, &format!("{error:#}")),
            }
        }
    }

    /// The app-scoped tasks (`scope = "app"`): alone, on worker 0 as
    /// startup tasks; in a cluster, each on whichever host holds its
    /// claim, under the claim's lease.
    async fn start_singletons(&self, first: &Arc<WorkerCtx>) -> Result<()> {
        let singletons: Vec<TaskConfig> = self.startup_tasks(Scope::App).cloned().collect();
        for task in singletons {
            let Some(cluster) = &self.cluster else {
                let handle = self.spawn_startup(first, &task).await?;
                self.startup_entries().push((first.clone(), task, handle));
                continue;
            };
            let name = task.name.clone().unwrap_or_default();
            let (env, worker) = (self.env.clone(), first.clone());
            let start: crate::cluster::singletons::Starter = Arc::new(move |lease| {
                let (env, worker, task) = (env.clone(), worker.clone(), task.clone());
                Box::pin(async move {
                    let plugin = env
                        .plugin(&task.plugin)
                        .ok_or_else(|| format!("no plugin `{}` is loaded", task.plugin))?;
                    // A copy that ran here before (it lost the claim, or
                    // ended) frees the name for this one.
                    if let Some(name) = &task.name
                        && let Some(before) = worker.registry().get_by_name(name)
                        && before.state.is_ended()
                    {
                        worker.registry().forget(before.ident.id);
                    }
                    worker
                        .spawn_leased(plugin, task.spec(worker.id()), lease)
                        .map_err(|error| format!("{task}: {error}"))
                })
            });
            cluster.run_singleton(name, start);
        }
        Ok(())
    }

    fn startup_tasks(&self, scope: Scope) -> impl Iterator<Item = &TaskConfig> {
        self.config.tasks.iter().filter(move |t| t.scope == scope)
    }

    async fn spawn_startup(
        &self,
        worker: &Arc<WorkerCtx>,
        task: &TaskConfig,
    ) -> Result<TaskHandle> {
        let plugin = self
            .env
            .plugin(&task.plugin)
            .ok_or_else(|| anyhow!("no plugin `{}`", task.plugin))?;
        worker
            .start_task(plugin, task.spec(worker.id()))
            .await
            .map_err(|e| anyhow!("{}: {task}: {e}", self.config.source.display()))
    }

    /// Resolves once every `main` task has ended; an error names those that
    /// failed (the workers must then not start).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits, so a later call waits for what is left.
    pub async fn main_tasks_ended(&mut self) -> Result<()> {
        for handle in &mut self.main_handles {
            handle.ended().await;
        }
        let failed: Vec<String> = self
            .main
            .registry()
            .snapshot()
            .into_iter()
            .filter(|info| info.state == TaskState::Failed)
            .map(|info| info.ident.label())
            .collect();
        if !failed.is_empty() {
            bail!(
                "main task(s) failed: {}; the workers were not started",
                failed.join(", ")
            );
        }
        Ok(())
    }

    /// Starts the workers: first the durable tasks that had not ended
    /// when the app last stopped, then on each the `scope = "worker"`
    /// tasks.
    pub async fn start_workers(&mut self) -> Result<()> {
        for index in 0..self.config.workers {
            let worker = Worker::start(WorkerId::Index(index), self.env.clone())?;
            self.workers.push(worker);
        }
        let contexts: Vec<Arc<WorkerCtx>> = self.workers.iter().map(|w| w.ctx().clone()).collect();
        crate::worker::recover(&contexts)
            .await
            .with_context(|| format!("{}: [storage]", self.config.source.display()))?;
        if let Some(cluster) = &self.cluster {
            cluster.run_durable(self.env.clone());
        }
        let tasks: Vec<TaskConfig> = self.startup_tasks(Scope::Worker).cloned().collect();
        for worker in &contexts {
            for task in &tasks {
                let handle = self.spawn_startup(worker, task).await?;
                self.startup_entries()
                    .push((worker.clone(), task.clone(), handle));
            }
        }
        self.start_singletons(&contexts[0]).await?;
        let claims = self
            .cluster
            .as_ref()
            .map(|cluster| -> Arc<dyn crate::scheduler::TickClaims> { cluster.ticks() });
        let scheduler =
            Scheduler::start(self.env.clone(), contexts, &self.config.schedules, claims)
                .await
                .with_context(|| format!("{}: [[schedules]]", self.config.source.display()))?;
        self.scheduler = Some(scheduler);
        // Closing only means "the startup tasks are all spawned": tasks can
        // still be added, and `idle` resolves once none is left.
        self.env.tracker.close();
        tracing::info!(
            app = self.config.name,
            workers = self.config.workers,
            "{} started with {} worker(s)",
            self.config.name,
            self.config.workers
        );
        Ok(())
    }

    /// Resolves once no task is left on any worker (after `start_workers`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn idle(&self) {
        self.env.tracker.wait().await
    }

    /// Lets guests start tasks on other hosts (`start-task-on`) through
    /// `remote`; only the first call counts.
    pub fn serve_remote_tasks(&self, remote: std::sync::Weak<dyn crate::worker::RemoteTasks>) {
        let _ = self.env.remote.set(remote);
    }

    /// This host's membership in its cluster, if it has a `[cluster]`.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// The main scope and every started worker.
    pub fn workers(&self) -> impl Iterator<Item = &Arc<WorkerCtx>> {
        std::iter::once(self.main.ctx()).chain(self.workers.iter().map(Worker::ctx))
    }

    /// The main scope (`WorkerId::Main`) or worker `id`; none past the workers.
    pub fn worker(&self, id: WorkerId) -> Option<&Arc<WorkerCtx>> {
        self.workers().find(|w| w.id() == id)
    }

    /// Every registered task of every worker.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        self.workers()
            .flat_map(|w| w.registry().snapshot())
            .collect()
    }

    /// The tasks `keep` selects, oldest first; with `newest`, only that
    /// many, the newest first. Only what is returned is copied: a page of
    /// 100 of 100,000 kept tasks copies 100, after a pass over the ids.
    pub fn select_tasks(
        &self,
        keep: impl Fn(&TaskInfo) -> bool,
        newest: Option<usize>,
    ) -> Vec<TaskInfo> {
        let Some(newest) = newest else {
            let mut tasks: Vec<TaskInfo> = self
                .workers()
                .flat_map(|w| w.registry().matching(&keep))
                .collect();
            tasks.sort_unstable_by_key(|t| t.ident.id);
            return tasks;
        };
        let workers: Vec<&Arc<WorkerCtx>> = self.workers().collect();
        let mut ids: Vec<(crate::task::TaskId, usize)> = Vec::new();
        for (index, worker) in workers.iter().enumerate() {
            worker.registry().visit(|t| {
                if keep(t) {
                    ids.push((t.ident.id, index));
                }
            });
        }
        if ids.len() > newest {
            ids.select_nth_unstable_by_key(newest - 1, |(id, _)| std::cmp::Reverse(*id));
            ids.truncate(newest);
        }
        ids.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        // A task purged since the pass is left out.
        ids.into_iter()
            .filter_map(|(id, index)| workers[index].registry().get(id))
            .collect()
    }

    /// Starts a task on `worker`, as a guest's `add-task` would. A durable
    /// spec is recorded before this returns; its idempotency key may
    /// answer with a task that exists (`created` false).
    pub async fn add_task(
        &self,
        worker: WorkerId,
        plugin: &str,
        spec: TaskSpec,
    ) -> Result<Added, AddTaskError> {
        let Some(ctx) = self.worker(worker) else {
            return Err(AddTaskError::NoWorker(worker));
        };
        ctx.add_task(plugin, spec).await
    }

    /// Cancels the task `name` of `worker` and waits until it has ended
    /// (forced after the grace period); returns its final info. The cancel
    /// of a durable task is recorded first, so it stays cancelled across a
    /// crash.
    pub async fn cancel_task(&self, worker: WorkerId, name: &str) -> Result<TaskInfo, CancelError> {
        let ctx = self.worker(worker).ok_or(CancelError::NoWorker(worker))?;
        let handle = ctx
            .registry()
            .handle_by_name(name)
            .ok_or_else(|| CancelError::NotFound(name.to_string()))?;
        self.cancel_handle(ctx, handle, name).await
    }

    /// Cancels the task with id `id` (whichever worker lists it, named or
    /// not) and waits until it has ended, as [`Host::cancel_task`] does.
    pub async fn cancel_task_by_id(&self, id: u64) -> Result<TaskInfo, CancelError> {
        let found = self
            .workers()
            .find_map(|w| w.registry().handle_of(id).map(|handle| (w.clone(), handle)));
        let Some((ctx, handle)) = found else {
            return Err(CancelError::NotFound(format!("task {id}")));
        };
        self.cancel_handle(&ctx, handle, &format!("task {id}"))
            .await
    }

    async fn cancel_handle(
        &self,
        ctx: &Arc<WorkerCtx>,
        mut handle: TaskHandle,
        name: &str,
    ) -> Result<TaskInfo, CancelError> {
        let durable = ctx.registry().get(handle.id).and_then(|i| i.ident.durable);
        if let (Some(seq), false) = (durable, handle.is_ended()) {
            self.storage()
                .tasks()
                .cancel_requested(seq)
                .await
                .map_err(|e| CancelError::Storage(format!("cannot record the cancel: {e:#}")))?;
        }
        handle.cancel();
        handle.ended().await;
        ctx.registry()
            .get(handle.id)
            .ok_or_else(|| CancelError::NotFound(name.to_string()))
    }

    /// Gives the heap's free pages back within a second, once however
    /// many callers ask meanwhile: for what is freed without a purge
    /// (connections closing forget their tasks). 1,000 websocket clients
    /// vanishing at once left the host 70 MiB above its baseline before.
    pub(crate) fn trim_heap_soon(&self) {
        use std::sync::atomic::Ordering;
        if self.trim_due.swap(true, Ordering::AcqRel) {
            return;
        }
        let due = self.trim_due.clone();
        let trims = self.env.metrics.heap_trims.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            due.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(give_back_heap).await;
            trims.inc();
        });
    }

    /// Drops every ended task of every worker, and the kept records of
    /// ended durable tasks; returns how many tasks were listed.
    pub async fn purge(&self) -> Result<usize> {
        let purged = self.workers().map(|w| w.registry().purge()).sum();
        if purged > 0 {
            give_back_heap();
            self.env.metrics.heap_trims.inc();
        }
        self.storage().tasks().purge_ended().await?;
        Ok(purged)
    }

    /// What the host's two HTTP servers count of their connections.
    pub(crate) fn server_metrics(&self) -> &crate::metrics::ServerMetrics {
        &self.env.metrics.servers
    }

    /// What the public listener's routes count.
    pub(crate) fn route_metrics(&self) -> &crate::metrics::RouteMetrics {
        &self.env.metrics.routes
    }

    /// The open websocket connections, as tasks reach them.
    pub(crate) fn connections(&self) -> &Arc<crate::connection_hub::ConnectionHub> {
        &self.env.app.connections
    }

    /// Wakes every task waiting for `event`; returns how many woke.
    pub fn dispatch(&self, event: &str, payload: &str) -> u32 {
        self.env.events.dispatch(event, payload)
    }

    /// What the host keeps: key-value state, durable tasks, schedules,
    /// queues' settings and dead letters.
    pub fn storage(&self) -> &crate::storage::Storage {
        &self.env.storage
    }

    /// The app's queues (`[[queues]]`).
    pub(crate) fn queues(&self) -> &crate::queues::Queues {
        &self.env.queues
    }

    /// The schedules (none before the workers started).
    pub fn scheduler(&self) -> Option<&Arc<Scheduler>> {
        self.scheduler.as_ref()
    }

    /// The named events tasks dispatch and wait for (Sanic's signals):
    /// whoever needs to know that a dispatch will be heard can wait here
    /// until enough tasks wait.
    pub fn events(&self) -> &EventHub {
        &self.env.events
    }

    /// The app.toml this host was launched from, checked.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Where every task's kept log lines count (`[limits] task_log_bytes`).
    pub(crate) fn log_book(&self) -> &Arc<crate::task_log::LogBook> {
        &self.env.app.log_book
    }

    /// The Prometheus text exposition of this host's metrics.
    pub fn metrics_text(&self) -> String {
        let plugins: Vec<(String, String)> = self
            .plugins()
            .iter()
            .map(|p| (p.name.to_string(), p.version.to_string()))
            .collect();
        let metrics = &self.env.metrics;
        self.env.engines.pools.set_free(&self.env.engines);
        metrics
            .event_waiters
            .set(i64::try_from(self.env.events.waiting()).unwrap_or(i64::MAX));
        if let Some(cluster) = &self.cluster {
            metrics.cluster_events_dropped(self.env.events.relay_dropped());
            metrics
                .cluster_hosts
                .set(i64::try_from(cluster.hosts().len()).unwrap_or(i64::MAX));
        }
        metrics.encode(&self.tasks(), &plugins)
    }

    /// The lifecycle stream from now on: every task's start and end and
    /// every plugin build loaded, refused or dropped (what the log's
    /// lifecycle lines say, and `GET /v1/stream` serves). Not to be confused
    /// with the named events tasks dispatch and wait for ([`Host::events`]).
    pub fn lifecycle_stream(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.env.lifecycle.subscribe()
    }

    /// The plugins new tasks start from, in name order.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.env
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every loaded build: the serving one of each plugin, in name order,
    /// then the replaced builds that still run tasks, oldest first. A
    /// replaced build is listed until its last task ends.
    pub fn builds(&self) -> Vec<Build> {
        let mut live: HashMap<(Arc<str>, Arc<str>), usize> = HashMap::new();
        for worker in self.workers() {
            for info in worker.registry().snapshot() {
                if !info.state.is_ended() {
                    let key = (info.ident.plugin.clone(), info.ident.plugin_version.clone());
                    *live.entry(key).or_default() += 1;
                }
            }
        }
        let count = |plugin: &Plugin| {
            live.get(&(plugin.name.clone(), plugin.version.clone()))
                .copied()
                .unwrap_or(0)
        };
        let serving = self.plugins().into_iter().map(|plugin| Build {
            live_tasks: count(&plugin),
            serving: true,
            plugin,
        });
        let mut retired = self.retired_builds();
        retired.retain(|build| build.strong_count() > 0);
        // The builds resumed tasks run on (loaded again from storage) are
        // draining too.
        let resumed: Vec<Arc<Plugin>> = self
            .env
            .first_builds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let draining: Vec<Build> = retired
            .iter()
            .filter_map(Weak::upgrade)
            .chain(resumed)
            .map(|plugin| Build {
                live_tasks: count(&plugin),
                serving: false,
                plugin,
            })
            .collect();
        drop(retired);
        serving.chain(draining).collect()
    }

    fn retired_builds(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Plugin>>> {
        self.retired.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn startup_entries(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(Arc<WorkerCtx>, TaskConfig, TaskHandle)>> {
        self.startup.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Restarts the worker-scope startup tasks of `plugin` on its current
    /// build: each running one is cancelled (forced after the grace period),
    /// forgotten by its registry so its name is free, and started again.
    /// Returns how many were restarted.
    pub async fn restart_startup_tasks(&self, plugin: &str) -> Result<usize> {
        // Those that move to a new build on their own are not restarted.
        let moves = self.env.app.policy(plugin).on_load;
        let entries: Vec<(Arc<WorkerCtx>, TaskConfig, TaskHandle)> = self
            .startup_entries()
            .iter()
            .filter(|(_, task, _)| {
                task.plugin == plugin
                    && task.on_load.unwrap_or(moves) != crate::config::OnLoad::Restart
            })
            .cloned()
            .collect();
        let mut restarted = 0;
        for (worker, task, mut old) in entries {
            old.cancel();
            old.ended().await;
            worker.registry().forget(old.id);
            let new = self.spawn_startup(&worker, &task).await?;
            for entry in self.startup_entries().iter_mut() {
                if entry.2.id == old.id {
                    entry.2 = new.clone();
                }
            }
            restarted += 1;
        }
        Ok(restarted)
    }

    /// Hot-loads `path` as plugin `name` (new or replacing one): compiled
    /// off the workers' threads and checked against the world, then swapped
    /// in at once. New tasks use it; running tasks finish on the version they
    /// started with, which is dropped when its last task ends. A component
    /// that does not compile or does not fit the world is refused and the
    /// old version keeps serving.
    pub async fn load_plugin(&self, name: &str, path: &Path) -> Result<Arc<Plugin>, LoadError> {
        let loaded = self.env.loader.load(name, path).await;
        self.install_plugin(name, path, loaded).await
    }

    /// [`Host::load_plugin`] for a component in memory (a cluster's
    /// roll-out); `from` names where it came from.
    pub async fn load_plugin_bytes(
        &self,
        name: &str,
        from: &Path,
        bytes: Vec<u8>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let loaded = self.env.loader.load_component(name, from, bytes).await;
        self.install_plugin(name, from, loaded).await
    }

    /// Swaps a loaded build in, or says why it was refused. Its component
    /// is kept first, so a task that resumes is never begun on a build
    /// the storage does not have.
    async fn install_plugin(
        &self,
        name: &str,
        path: &Path,
        loaded: Result<Loaded, LoadError>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let plugin = match loaded {
            Ok(Loaded { plugin, component }) => {
                self.env.keep_build(&plugin, component).await;
                Arc::new(plugin)
            }
            Err(error) => {
                self.refuse_plugin(name, path, &error);
                return Err(error);
            }
        };
        let previous = self
            .env
            .plugins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), plugin.clone());
        self.remember_load(LifecycleEvent::PluginLoaded {
            plugin: name.to_string(),
            version: plugin.version.to_string(),
            path: plugin.path.clone(),
            replaces: previous.as_ref().map(|p| p.version.to_string()),
        });
        if let Some(previous) = previous {
            for worker in self.workers() {
                worker.forget_prepared(name);
            }
            previous.retire(
                self.env.lifecycle.clone(),
                previous.version != plugin.version,
            );
            self.retired_builds().push(Arc::downgrade(&previous));
            // Dropped here if none of its tasks runs: announced at once.
            drop(previous);
            self.env.drop_builds().await;
        }
        Ok(plugin)
    }

    /// Says, in the log and on the event stream, that a new build of
    /// plugin `name` from `path` (a component, or a crate that did not
    /// build) was refused and the loaded version keeps serving.
    pub fn refuse_plugin(&self, name: &str, path: &Path, error: &dyn std::fmt::Display) {
        self.remember_load(LifecycleEvent::PluginRefused {
            plugin: name.to_string(),
            path: path.to_path_buf(),
            error: format!("{error:#}"),
        });
    }

    /// Announces a load or a refusal and keeps it in the history.
    fn remember_load(&self, event: LifecycleEvent) {
        let record = LoadRecord {
            at_ms: crate::task::unix_millis(std::time::SystemTime::now()),
            event: event.clone(),
        };
        {
            let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
            if loads.len() == LOAD_HISTORY {
                loads.pop_front();
            }
            loads.push_back(record);
        }
        self.announce(event);
    }

    /// The last [`LOAD_HISTORY`] loads and refusals, newest first.
    pub fn loads(&self) -> Vec<LoadRecord> {
        let loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        loads.iter().rev().cloned().collect()
    }

    /// Logs a lifecycle event and sends it to the stream's listeners.
    fn announce(&self, event: LifecycleEvent) {
        crate::logging::lifecycle(&event);
        let _ = self.env.lifecycle.send(event);
    }

    /// Cancels every live task (each forced after the grace period if it
    /// does not end), waits a bounded time for all of them, stops the
    /// workers, and says how the run went.
    pub async fn shutdown(&self, interrupted: bool) -> RunSummary {
        // Other hosts' tasks go elsewhere from now on, and no app-scoped
        // task is claimed or started here.
        if let Some(cluster) = &self.cluster {
            cluster.stop_serving();
            cluster.stop_singletons();
        }
        // No tick may start a task while the others are being cancelled.
        if let Some(scheduler) = &self.scheduler {
            scheduler.stop().await;
        }
        let env = &self.env;
        env.stopping.store(true, Ordering::Relaxed);
        env.tracker.close();
        let live =
            || -> Vec<TaskHandle> { self.workers().flat_map(|w| w.registry().live()).collect() };
        for handle in live() {
            handle.cancel();
        }
        let live_count = || -> usize { self.workers().map(|w| w.registry().live_count()).sum() };
        let mut ended =
            tokio::time::timeout(env.cancel_grace + SHUTDOWN_MARGIN, env.tracker.wait())
                .await
                .is_ok();
        // Thousands of tasks take a while to end (10,000 took longer than
        // the margin): wait on while they do, and give up only once a
        // whole margin passed with none ending.
        let mut left = live_count();
        while !ended {
            ended = tokio::time::timeout(SHUTDOWN_MARGIN, env.tracker.wait())
                .await
                .is_ok();
            let now = live_count();
            if now >= left {
                break;
            }
            left = now;
        }
        let abandoned = if ended {
            0
        } else {
            let abandoned = live().len();
            tracing::error!(
                abandoned,
                "{abandoned} task(s) did not end after being forced"
            );
            abandoned
        };
        // Last: what the ending tasks dispatched still reaches the others.
        if let Some(cluster) = &self.cluster {
            cluster.leave().await;
        }
        // The ended tasks' spans go before the process does.
        if let Some(telemetry) = env.app.telemetry().cloned() {
            let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
        }
        RunSummary {
            done: count(&env.metrics.done),
            failed: count(&env.metrics.failed),
            cancelled: count(&env.metrics.cancelled),
            interrupted,
            abandoned,
        }
    }
}

fn count(counter: &prometheus_client::metrics::counter::Counter) -> usize {
    usize::try_from(counter.get()).unwrap_or(usize::MAX)
}

/// Returns the heap's free pages to the kernel. The host's own allocations
/// are mimalloc's (`main.rs`), which gives a thread's freed pages back by
/// itself after a short delay, at that thread's next allocation;
/// `mi_collect` does it now for the calling thread's and abandoned
/// threads' pages. SQLite and other C code allocate through glibc, which
/// keeps what a burst freed when live allocations sit above it (with
/// glibc for everything: ~37 MiB after 2,000 tasks and ~200 MiB after
/// 10,000, never given back): `malloc_trim`. A trim costs a few ms, so it
/// runs on an operator's purge and after connections close, not on a
/// guest's `purge-tasks`, which a task may call in a loop.
fn give_back_heap() {
    unsafe extern "C" {
        /// mimalloc's (linked through the `mimalloc` crate): frees what
        /// it holds unused (`force`: all of it).
        fn mi_collect(force: bool);
    }
    // SAFETY: takes no pointers; callable from any thread at any time
    // (a no-op on a heap that holds nothing, as in a build whose global
    // allocator is not mimalloc).
    unsafe { mi_collect(true) };
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
