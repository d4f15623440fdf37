//! Workers: where tasks run.
//!
//! A worker is an OS thread with a single-threaded tokio runtime and its own
//! task registry, like a Sanic worker process with its event loop. All of a
//! worker's tasks share its thread; the epoch callback makes a busy task
//! yield each tick so the others still get their turn.
//!
//! Durable tasks (recorded in storage, run again after a crash) start here
//! too, through `durable`.

mod builds;
mod durable;
mod ready;
mod supervision;

pub(crate) use durable::{recover, run_handed_over};

use crate::app::{AppContext, TaskScope};
use crate::bindings::GuestError;
use crate::config::{Limit, LimitUnit, OnLoad, RestartPolicy, RetryPolicy, TaskSpec};
use crate::engine::HostEngine;
use crate::events::EventHub;
use crate::lifecycle::{self, LifecycleEvent, TaskRef};
use crate::logging;
use crate::metrics::Metrics;
use crate::operations::types::{ErrorKind, OpError, Submission, Submitted};
use crate::plugin::Plugin;
use crate::queues::{Entered, Owner, Queues, Refused, Turn};
use crate::registry::{AddTaskError, Added, RegisterError, TaskHandle, TaskRegistry, next_task_id};
use crate::runner;
use crate::task::{CancelPolicy, CancelStage, Outcome, TaskId, TaskIdent, WorkerId};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot};
use tokio_util::task::TaskTracker;

/// What every running task needs from its host, shared by all workers.
pub struct TaskEnv {
    /// The warm and cold engines (see [`crate::engine`]).
    pub engines: HostEngine,
    /// The app as tasks see it: its name, `[config]`, `[limits]` and each
    /// plugin's bounds and grants.
    pub app: Arc<AppContext>,
    /// What the host keeps: key-value state, durable tasks, schedules.
    pub storage: crate::storage::Storage,
    /// The plugins new tasks start from, by name.
    pub plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// Event waiters of every worker.
    pub events: EventHub,
    /// Every task of the host, so "no task left" can be awaited.
    pub tracker: TaskTracker,
    /// How long a cancelled task may run on before it is interrupted.
    pub cancel_grace: Duration,
    /// The host's Prometheus metrics, which `GET /metrics` encodes.
    pub metrics: Metrics,
    /// Lifecycle events (the JSON objects of the lifecycle log lines), for
    /// the control API's stream. Sending costs nothing without listeners.
    pub lifecycle: broadcast::Sender<LifecycleEvent>,
    /// Every worker of the host, the main scope included, so a durable
    /// task found by its idempotency key is found on the worker it runs on.
    pub workers: RwLock<Vec<Weak<WorkerCtx>>>,
    /// Held from the lookup of an idempotency key to the listing of its
    /// task, so two submissions with one key cannot both start it.
    pub durable_submit: tokio::sync::Mutex<()>,
    /// The host's schedules, once they started: what a guest's
    /// `add-schedule` and `remove-schedule` reach.
    pub schedules: OnceLock<Weak<dyn ScheduleControl>>,
    /// Starting tasks on other hosts, once the cluster serves (none
    /// without a cluster).
    pub remote: OnceLock<Weak<dyn RemoteTasks>>,
    /// Set once the host began to stop: no instance is made ahead of
    /// demand from then on.
    pub stopping: AtomicBool,
    /// The app's queues (`[[queues]]`), shared by every worker.
    pub(crate) queues: Queues,
    /// Loads plugins: hot-loads, and the builds resuming tasks began on.
    pub(crate) loader: crate::plugin::PluginLoader,
    /// The replaced builds loaded again for tasks that resume on them
    /// (`builds`), by version, while one of their tasks holds them.
    pub(crate) first_builds: std::sync::Mutex<std::collections::HashMap<String, Weak<Plugin>>>,
}

/// What starting tasks on other hosts resolves to: where each runs, or
/// why not.
pub(crate) type Placed = Pin<Box<dyn Future<Output = Result<Submitted, OpError>> + Send>>;

/// Tasks a guest starts on other hosts of the cluster (`start-task-on`).
/// The operations implement it once the cluster serves, so the workers
/// never name the operations or the cluster.
pub trait RemoteTasks: Send + Sync {
    /// Places `submission` (its `host`: `any`, `all` or a name).
    fn submit(self: Arc<Self>, submission: Submission) -> Placed;

    /// This host's name in the cluster.
    fn host_name(&self) -> String;

    /// Waits until task `id` of `host`, another host of the cluster, has
    /// ended: its record (a guest's join of a placed task).
    fn join(self: Arc<Self>, host: String, id: TaskId) -> crate::app::Joined;
}

/// What guests may do to the host's schedules. The scheduler implements
/// it; it sits above the workers, so they reach it through this.
pub trait ScheduleControl: Send + Sync {
    /// Adds (or replaces) a schedule from its spec (JSON, as app.toml's
    /// `[[schedules]]`), of `plugin` unless the spec names another.
    fn add_schedule(
        self: Arc<Self>,
        plugin: String,
        spec: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), GuestError>> + Send>>;

    /// Removes a schedule added at run time; whether there was one.
    fn remove_schedule(
        self: Arc<Self>,
        name: String,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;
}

impl TaskEnv {
    /// How many more tasks this host takes now: `tasks_per_worker` on each
    /// worker, less the tasks alive (what a cluster's heartbeat tells the
    /// other hosts, and when this host fetches tasks for any host).
    pub fn room(&self) -> usize {
        let workers = self
            .workers
            .read()
            .map(|w| w.len().saturating_sub(1))
            .unwrap_or(0);
        (self.app.limits.tasks_per_worker * workers).saturating_sub(self.tracker.len())
    }

    /// The host's schedules, if they have started.
    pub fn schedules(&self) -> Option<Arc<dyn ScheduleControl>> {
        self.schedules.get().and_then(Weak::upgrade)
    }

    /// The serving build of plugin `name`, if one is loaded.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The worker `id`, if it has started.
    pub fn worker(&self, id: WorkerId) -> Option<Arc<WorkerCtx>> {
        self.workers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .find(|w| w.id == id)
    }

    /// Where the durable task `seq` is listed in this process, if it is.
    pub fn durable_task(&self, seq: u64) -> Option<(Arc<WorkerCtx>, TaskHandle)> {
        self.workers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .find_map(|worker| {
                let handle = worker.registry.handle_of_record(seq)?;
                Some((worker, handle))
            })
    }
}

/// A worker as its tasks see it: its registry, its runtime, the host.
pub struct WorkerCtx {
    id: WorkerId,
    registry: TaskRegistry,
    runtime: Handle,
    env: Arc<TaskEnv>,
    /// Instances made ahead of demand for the plugins it runs.
    ready: ready::ReadyInstances,
}

/// Idempotency key prefixes the host gives its own durable tasks
/// (app.toml's `app.toml/WORKER/NAME`, a schedule's `schedule/NAME/TICK`),
/// which a submission may not take.
const RESERVED_KEYS: [&str; 2] = ["app.toml/", "schedule/"];

/// A durable task's run in this process: its record, the attempt it starts
/// with, and the key its guest sees.
struct DurableRun {
    seq: u64,
    first_attempt: u32,
    key: Arc<str>,
    /// Its first attempt is in its record already: a queued task whose
    /// turn came at its submission. Its turn then writes none.
    counted: bool,
    /// It resumes from its journal (`durable = "resume"`).
    resume: bool,
}

/// Everything `start` needs, resolved.
struct Launch {
    plugin: Arc<Plugin>,
    factory: String,
    args: String,
    name: Option<String>,
    tries: Option<Box<Tries>>,
    durable: Option<DurableRun>,
    connection: Option<u64>,
    parent: Option<TaskId>,
    /// The trace it joins (see `TaskSpec::trace`).
    trace: Option<crate::trace_context::TraceParent>,
    /// The lease its copy acts under (a singleton's claim in a cluster):
    /// attached before its store exists, so it is fenced from the start.
    lease: Option<Arc<crate::task::Lease>>,
}

impl Launch {
    fn new(plugin: Arc<Plugin>, spec: TaskSpec, durable: Option<DurableRun>) -> Launch {
        Launch {
            tries: Tries::of(&spec),
            plugin,
            factory: spec.factory,
            args: spec.args,
            name: spec.name,
            durable,
            connection: spec.connection,
            parent: spec.parent,
            trace: spec.trace,
            lease: None,
        }
    }
}

/// How a task is tried again: retried within a run (`retry`), started
/// again once a run ended (`restart`). Boxed, as most tasks have neither
/// and a waiting task holds this.
#[derive(Debug)]
struct Tries {
    retry: Option<RetryPolicy>,
    restart: Option<RestartPolicy>,
    /// Whether it moves to a newer build; none: as its plugin says.
    on_load: Option<OnLoad>,
}

impl Tries {
    fn of(spec: &TaskSpec) -> Option<Box<Tries>> {
        (spec.retry.is_some() || spec.restart.is_some() || spec.on_load.is_some()).then(|| {
            Box::new(Tries {
                retry: spec.retry,
                restart: spec.restart,
                on_load: spec.on_load,
            })
        })
    }
}

/// Waits for the factory's verdict on a task's arguments.
async fn await_verdict(
    checked: oneshot::Receiver<Result<(), GuestError>>,
) -> Result<(), AddTaskError> {
    match checked.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(AddTaskError::Refused(error)),
        // The task was dropped before it could answer: the worker is
        // shutting down.
        Err(_) => Err(AddTaskError::Refused(GuestError::Cancelled)),
    }
}

impl WorkerCtx {
    /// Which worker it is: an index, or the main scope.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Its tasks, live and ended (until purged).
    pub fn registry(&self) -> &TaskRegistry {
        &self.registry
    }

    /// What its tasks share with every other worker's.
    pub fn env(&self) -> &Arc<TaskEnv> {
        &self.env
    }

    /// The worker thread's runtime: work spawned here shares the thread
    /// with the worker's tasks (embedders and the speed benchmark use it to
    /// drive tasks without a cross-thread hop).
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Registers a task that lives in memory only and starts it on this
    /// worker; returns at once. Its arguments are not checked: use this
    /// for tasks checked beforehand (app.toml's, at load). A durable spec
    /// is refused: it must be recorded first ([`WorkerCtx::start_task`]).
    pub fn spawn(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        spec: TaskSpec,
    ) -> Result<TaskHandle, AddTaskError> {
        if spec.durable {
            return Err(AddTaskError::Invalid(
                "a durable task is recorded before it starts: use `start_task`".into(),
            ));
        }
        if spec.queue.is_some() {
            return self.enqueue(plugin, spec, None).map(|(_, handle)| handle);
        }
        Ok(self.start(Launch::new(plugin, spec, None), None)?)
    }

    /// Starts an app-scoped task (`scope = "app"`) whose claim this host
    /// won in its cluster, under `lease`: once the claim may be another
    /// host's, this copy is fenced (its host calls trap, it is forced).
    pub(crate) fn spawn_leased(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        spec: TaskSpec,
        lease: Arc<crate::task::Lease>,
    ) -> Result<TaskHandle, AddTaskError> {
        let mut launch = Launch::new(plugin, spec, None);
        launch.lease = Some(lease);
        Ok(self.start(launch, None)?)
    }

    /// [`WorkerCtx::spawn`] for any spec: a durable one is recorded first
    /// (or found by its idempotency key).
    pub async fn start_task(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        spec: TaskSpec,
    ) -> Result<TaskHandle, AddTaskError> {
        if spec.durable {
            return self
                .submit(plugin, spec, false)
                .await
                .map(|(_, handle)| handle);
        }
        self.spawn(plugin, spec)
    }

    /// Sanic's `add_task`: registers a task and starts it on this worker,
    /// returning once the factory has accepted the arguments. The check
    /// runs in the task's own instance, so it costs no extra
    /// instantiation. A refused task leaves no trace in the registry (nor,
    /// for a durable one, in storage).
    pub async fn add_task(
        self: &Arc<Self>,
        plugin: &str,
        spec: TaskSpec,
    ) -> Result<Added, AddTaskError> {
        // Not echoed back in an unknown-plugin error: it could be huge.
        Limit::check_name("a plugin name", plugin).map_err(RegisterError::from)?;
        let plugin = self
            .env
            .plugin(plugin)
            .ok_or_else(|| AddTaskError::UnknownPlugin(plugin.to_string()))?;
        if spec.connection.is_none()
            && let Some(why) = spec.name.as_deref().and_then(crate::config::reserved_name)
        {
            return Err(AddTaskError::Invalid(why));
        }
        if let Some(key) = &spec.idempotency_key
            && let Some(reserved) = RESERVED_KEYS.iter().find(|p| key.starts_with(*p))
        {
            return Err(AddTaskError::Invalid(format!(
                "idempotency keys starting with `{reserved}` are the host's own (startup tasks \
                 and schedules): pick another"
            )));
        }
        if spec.queue.is_some() && !spec.durable {
            return self.enqueue(plugin, spec, None).map(|(added, _)| added);
        }
        if spec.durable {
            return self
                .submit(plugin, spec, true)
                .await
                .map(|(added, _)| added);
        }
        if spec.idempotency_key.is_some() {
            return Err(AddTaskError::Invalid(
                "an idempotency key is for durable tasks: add `durable`".into(),
            ));
        }
        let name = spec.name.clone();
        let (verdict, checked) = oneshot::channel();
        let handle = self.start(Launch::new(plugin, spec, None), Some(verdict))?;
        await_verdict(checked).await?;
        Ok(Added {
            worker: self.id,
            id: handle.id,
            name,
            created: true,
        })
    }

    /// Registers a task that waits in its queue (state `queued`) and
    /// answers at once: its arguments are checked when it starts, in its
    /// own instance, and a refusal then fails the task. A `dedupe` queue
    /// whose key already has a task waiting answers with that task
    /// (`created` false) and registers nothing.
    /// A durable task (`durable`: its record, written first) waits the
    /// same way; one put back in its queue by a restart (with the time it
    /// was submitted) is not refused for the queue's bounds or
    /// deduplicated: it was taken before, and its wait goes on from then.
    fn enqueue(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        spec: TaskSpec,
        durable: Option<(DurableRun, Option<std::time::SystemTime>)>,
    ) -> Result<(Added, TaskHandle), AddTaskError> {
        let Some(placement) = spec.queue.clone() else {
            unreachable!("enqueue is called for a spec with a queue");
        };
        if spec.durable != durable.is_some() {
            return Err(AddTaskError::Invalid(
                "a durable task is recorded before it waits: use `start_task`".into(),
            ));
        }
        let (durable, resumed) = match durable {
            Some((run, resumed)) => (Some(run), resumed),
            None => (None, None),
        };
        if self.id == WorkerId::Main {
            return Err(AddTaskError::Invalid(
                "the main scope runs before the workers and has no queues: pick a worker".into(),
            ));
        }
        let queue = self
            .env
            .queues
            .get(&placement.queue)
            .map_err(AddTaskError::Invalid)?;
        // Checked before it takes a place: a refused task leaves none.
        self.check(&spec.name, &spec.factory, &spec.args)?;
        // Registered first, so a task that has a place always has its
        // entry (a `dedupe` answer finds it); withdrawn if refused.
        let run = self.register(
            Launch::new(plugin, spec, durable),
            Some(queue.name().clone()),
            None,
        )?;
        let ident = run.ident.clone();
        let owner = Owner {
            worker: self.id,
            id: ident.id,
        };
        let (place, placed) = match queue.enter(&placement, &run.args, owner, resumed) {
            Ok(Entered::Waiting(waiting, placed)) => (Ok(waiting), placed),
            Ok(Entered::Started(turn, placed)) => (Err(turn), placed),
            refused => {
                self.registry.withdraw(ident.id);
                return Err(match refused {
                    Err(Refused::Full(limit)) => RegisterError::from(limit).into(),
                    Err(Refused::Invalid(why)) => AddTaskError::Invalid(why),
                    Err(Refused::Draining(why)) => AddTaskError::Draining(why),
                    Ok(Entered::Existing(owner)) => return self.existing(owner, &placement),
                    Ok(Entered::Waiting(..) | Entered::Started(..)) => {
                        unreachable!("matched above")
                    }
                });
            }
        };
        self.announce(|| LifecycleEvent::Queued {
            task: TaskRef::from(&*ident),
            queue: placement.queue.clone(),
            key: placed.key,
            priority: placed.priority,
            run_at: placed.run_at.map(crate::config::tick_label),
        });
        self.adopt_durable(&run);
        let handle = run.handle.clone();
        let queued = Box::new(QueuedRun {
            run,
            tracked: self.env.tracker.token(),
        });
        match place {
            // Its turn may come as soon as its place is filled: only
            // then. A task started at once needs no hook (a cancel
            // reaches its run).
            Ok(waiting) => {
                if let Some(ticket) = waiting.fill(queued) {
                    handle.signal().on_cancel(queue.clone(), ticket);
                }
            }
            Err(turn) => crate::queues::Start::start(queued, turn),
        }
        let added = Added {
            worker: self.id,
            id: ident.id,
            name: ident.name.clone(),
            created: true,
        };
        Ok((added, handle))
    }

    /// The answer to a `dedupe` submission whose key has `owner` waiting.
    fn existing(
        &self,
        owner: Owner,
        placement: &crate::config::Placement,
    ) -> Result<(Added, TaskHandle), AddTaskError> {
        let found = self.env.worker(owner.worker).and_then(|worker| {
            let info = worker.registry.get(owner.id)?;
            Some((
                worker.registry.handle_of(owner.id)?,
                info.ident.name.clone(),
            ))
        });
        let (handle, name) = found.ok_or_else(|| {
            AddTaskError::Invalid(format!(
                "task {} waited with this key in queue `{}` and is gone: submit again",
                owner.id, placement.queue
            ))
        })?;
        let added = Added {
            worker: owner.worker,
            id: owner.id,
            name,
            created: false,
        };
        Ok((added, handle))
    }

    /// Keeps `letter` in `queue`'s dead letters (at most its `max_dead`).
    /// A store that refuses it is logged with the letter, so nothing is
    /// lost without a trace.
    async fn keep_dead(&self, queue: &crate::queues::Queue, letter: &crate::storage::DeadLetter) {
        let keep = queue.config().max_dead;
        match self
            .env
            .storage
            .queues()
            .add_dead(queue.name(), letter, keep)
            .await
        {
            Ok((id, dropped)) => {
                queue.count_dead();
                tracing::info!(
                    queue = &**queue.name(),
                    dead_letter = id,
                    task_id = letter.task_id,
                    "queue {}: task {} failed its last attempt; kept as dead letter {id} \
                     (`taskhost dead retry {id}` submits it again)",
                    queue.name(),
                    letter.task_id
                );
                if dropped > 0 {
                    tracing::warn!(
                        queue = &**queue.name(),
                        dropped,
                        "queue {}: {dropped} oldest dead letter(s) dropped to keep max_dead = \
                         {keep}",
                        queue.name()
                    );
                }
            }
            Err(error) => tracing::error!(
                queue = &**queue.name(),
                "queue {}: cannot keep a dead letter ({error:#}): {}",
                queue.name(),
                serde_json::to_string(letter).unwrap_or_default()
            ),
        }
    }

    /// Makes the next instance of `plugin` on this worker once the tasks
    /// queued now have had their turn (see [`ready`]), unless one is ready
    /// or being made. Not on the main scope (its tasks run once, before the
    /// workers), nor while the host is stopping.
    fn prepare_next(self: &Arc<Self>, plugin: &Arc<Plugin>) {
        if self.id == WorkerId::Main
            || plugin.has_large_image()
            || self.env.stopping.load(Ordering::Relaxed)
            || !self.ready.begin(&plugin.name)
        {
            return;
        }
        let worker = self.clone();
        let plugin = plugin.clone();
        // Queued behind the tasks already waiting for their turn.
        self.runtime.spawn(async move {
            let env = &worker.env;
            let prepared = match env.stopping.load(Ordering::Relaxed) {
                true => None,
                false => runner::prepare(&env.engines, &env.app, plugin.clone(), worker.id).await,
            };
            worker
                .ready
                .finish(&plugin.name, prepared, env.plugin(&plugin.name));
        });
    }

    /// Drops the instance made ahead of demand of `plugin`, if there is
    /// one: a new build of it was loaded.
    pub(crate) fn forget_prepared(&self, plugin: &str) {
        self.ready.forget(plugin);
    }

    /// Moves a task whose build was replaced to the build its plugin
    /// serves now: its identity names that build from here on (its
    /// registry entry too, so listings count it there), and `reloaded` is
    /// told. False when there is no other build to move to.
    fn move_to_newer(&self, plugin: &mut Arc<Plugin>, ident: &mut Arc<TaskIdent>) -> bool {
        let Some(newer) = self.env.plugin(&plugin.name) else {
            return false;
        };
        if Arc::ptr_eq(&newer, plugin) {
            return false;
        }
        let from = std::mem::replace(plugin, newer);
        *ident = Arc::new(TaskIdent {
            plugin_version: plugin.version.clone(),
            ..TaskIdent::clone(ident)
        });
        self.registry.set_ident(ident.clone());
        self.announce(|| LifecycleEvent::Reloaded {
            task: TaskRef::from(&**ident),
            from: from.version.to_string(),
            version: plugin.version.to_string(),
        });
        true
    }

    /// Logs a lifecycle step and sends it to the stream's listeners. The
    /// event (a few strings copied from the task's identity) is built only
    /// if the log or a listener will see it.
    fn announce(&self, event: impl FnOnce() -> LifecycleEvent) {
        let listeners = self.env.lifecycle.receiver_count() > 0;
        if !listeners && !logging::lifecycle_enabled() {
            return;
        }
        let event = event();
        logging::lifecycle(&event);
        if listeners {
            let _ = self.env.lifecycle.send(event);
        }
    }

    /// The bounds a task is checked against before it is registered (or,
    /// if durable, recorded).
    fn check(&self, name: &Option<String>, factory: &str, args: &str) -> Result<(), RegisterError> {
        let limits = &self.env.app.limits;
        if let Some(name) = name {
            Limit::check_name("a task name", name)?;
        }
        Limit::check_name("a factory name", factory)?;
        if args.len() > limits.args_bytes {
            return Err(Limit {
                what: "task arguments".into(),
                max: limits.args_bytes as u64,
                got: args.len() as u64,
                unit: LimitUnit::Bytes,
                setting: Some("args_bytes"),
            }
            .into());
        }
        let waiting = usize::try_from(self.env.queues.waiting()).unwrap_or(usize::MAX);
        if self.env.tracker.len().saturating_sub(waiting) >= limits.tasks_per_app {
            return Err(Limit {
                what: "the live tasks of the app".into(),
                max: limits.tasks_per_app as u64,
                got: limits.tasks_per_app as u64 + 1,
                unit: LimitUnit::Tasks,
                setting: Some("tasks_per_app"),
            }
            .into());
        }
        Ok(())
    }

    /// Registers a task and starts it on this worker now.
    fn start(
        self: &Arc<Self>,
        mut launch: Launch,
        verdict: Option<oneshot::Sender<Result<(), GuestError>>>,
    ) -> Result<TaskHandle, RegisterError> {
        let registered = Instant::now();
        self.check(&launch.name, &launch.factory, &launch.args)?;
        let lease = launch.lease.take();
        let run = self.register(launch, None, verdict)?;
        if let Some(lease) = lease {
            run.handle.signal().set_lease(lease);
        }
        self.adopt_durable(&run);
        let handle = run.handle.clone();
        let supervisor = run.handle.clone();
        self.env.tracker.spawn_on(
            async move {
                let task = std::pin::pin!(run.run(None, registered));
                supervisor.supervise(task).await
            },
            &self.runtime,
        );
        Ok(handle)
    }

    /// Registers `launch`'s task: waiting in `queue` (state `queued`, not
    /// counted against `tasks_per_worker`), or pending (counted).
    fn register(
        self: &Arc<Self>,
        launch: Launch,
        queue: Option<Arc<str>>,
        verdict: Option<oneshot::Sender<Result<(), GuestError>>>,
    ) -> Result<Run, RegisterError> {
        let Launch {
            plugin,
            factory,
            args,
            name,
            tries,
            durable,
            connection,
            parent,
            trace,
            lease: _,
        } = launch;
        // Its span's place, fixed now: child tasks and outbound calls name
        // it as their parent before it ends.
        let trace = self.env.app.telemetry().map(|telemetry| {
            Box::new(crate::trace_context::TaskTrace::start(
                trace,
                telemetry.sample,
            ))
        });
        let ident = Arc::new(TaskIdent {
            id: next_task_id(),
            name,
            worker: self.id,
            plugin: plugin.name.clone(),
            plugin_version: plugin.version.clone(),
            factory,
            durable: durable.as_ref().map(|d| d.seq),
            connection,
            queue,
            parent,
            trace,
            args: crate::task::ShownArgs::of(&args),
        });
        let handle = match &ident.queue {
            Some(_) => self.registry.register_queued(ident.clone())?,
            None => self
                .registry
                .register(ident.clone(), self.env.app.limits.tasks_per_worker)?,
        };
        Ok(Run {
            worker: self.clone(),
            plugin,
            ident,
            args,
            tries,
            durable: durable.map(Box::new),
            handle,
            verdict,
        })
    }

    /// Makes a registered durable task this worker's: listed by its
    /// record, under its lease in a cluster, its attempts counted on.
    fn adopt_durable(&self, run: &Run) {
        let Some(durable) = &run.durable else {
            return;
        };
        // In a cluster, this copy acts only while its lease holds.
        if let Some(lease) = self.env.storage.tasks().lease(durable.seq) {
            run.handle.signal().set_lease(lease);
        }
        // A re-run after a restart goes on counting.
        if durable.first_attempt > 1 {
            self.registry
                .set_attempt(run.ident.id, durable.first_attempt);
        }
    }
}

/// A registered task's run, from its turn (or its registration) to its
/// end: what `start` spawns, and what a queued task's place holds while it
/// waits (104 bytes, no future).
struct Run {
    worker: Arc<WorkerCtx>,
    plugin: Arc<Plugin>,
    ident: Arc<TaskIdent>,
    args: String,
    tries: Option<Box<Tries>>,
    durable: Option<Box<DurableRun>>,
    handle: TaskHandle,
    /// Told the factory's verdict on the arguments (`add_task` waits).
    verdict: Option<oneshot::Sender<Result<(), GuestError>>>,
}

/// A queued task while it waits: data in its queue's place, spawned at its
/// turn.
struct QueuedRun {
    run: Run,
    /// Counts it among the host's tasks until it is spawned, as a spawned
    /// one counts: shutdown waits for it and `room` counts it.
    tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl QueuedRun {
    /// Spawns what `task` makes of the run on its worker: tracked from
    /// then on by its own future, so the token goes after.
    fn spawn<F: Future<Output = ()> + Send + 'static>(self, task: impl FnOnce(Run) -> F) {
        let QueuedRun { run, tracked } = self;
        let worker = run.worker.clone();
        worker.env.tracker.spawn_on(task(run), &worker.runtime);
        drop(tracked);
    }
}

impl crate::queues::Start for QueuedRun {
    fn start(self: Box<Self>, turn: Turn) {
        self.run.handle.signal().clear_on_cancel();
        self.spawn(|run| run.at_turn(turn));
    }

    fn withdraw(self: Box<Self>) {
        self.spawn(Run::withdrawn);
    }
}

impl Run {
    /// A queued task given its turn: it waits for its share of the
    /// cluster's limits and for room on its worker (`tasks_per_worker`),
    /// then runs, supervised (a cancel forced after its grace) from then
    /// on. A cancel meanwhile ends it without an instance ever made.
    async fn at_turn(self, mut turn: Turn) {
        let max_live = self.worker.env.app.limits.tasks_per_worker;
        // Cancelled before its turn was run (while it was filled, or as
        // the host stops): it takes no room and no attempt (a durable one
        // whose record counted its first attempt keeps that count).
        let admitted = !self.handle.is_cancelled()
            && tokio::select! {
                // Admitted at once most often: the cancel is not waited
                // for then.
                biased;
                () = async {
                    turn.share().await;
                    self.worker.registry.admit(self.ident.id, max_live).await;
                } => true,
                () = self.handle.signal().cancelled() => false,
            };
        if !admitted {
            drop(turn);
            return self.withdrawn().await;
        }
        turn.admitted();
        let supervisor = self.handle.clone();
        // Its start is timed from its turn, not its wait.
        let task = std::pin::pin!(self.run(Some(turn), Instant::now()));
        supervisor.supervise(task).await
    }

    /// A queued task cancelled before it ran: it ends `cancelled`. A
    /// durable one ends only if its cancel was recorded; stopped with the
    /// host, it waits again after the restart.
    async fn withdrawn(self) {
        let Run {
            worker,
            ident,
            durable,
            ..
        } = self;
        let outcome = Outcome::Cancelled {
            stage: CancelStage::Cooperative,
        };
        if let Some(durable) = &durable
            && let Err(error) = worker
                .env
                .storage
                .tasks()
                .ended(durable.seq, &outcome, true)
                .await
        {
            tracing::error!(
                "task {}: cannot record its end in storage ({error:#}); the next start will \
                 queue it again",
                ident.label()
            );
        }
        worker.announce(|| LifecycleEvent::Cancelled {
            task: TaskRef::from(&*ident),
            stage: CancelStage::Cooperative,
            elapsed_ms: 0.0,
        });
        worker.env.metrics.record_end(&outcome);
        worker.registry.finish(ident.id, outcome);
    }

    /// Runs the task to its end (its attempts, its retries), holding its
    /// queue's `turn` if it has one; `registered` is when its start is
    /// timed from.
    async fn run(self, turn: Option<Turn>, registered: Instant) {
        let Run {
            worker,
            mut plugin,
            mut ident,
            args,
            tries,
            durable,
            handle: task_handle,
            verdict,
        } = self;
        let retry = tries.as_ref().and_then(|tries| tries.retry);
        let mut supervisor = tries
            .as_ref()
            .and_then(|tries| tries.restart)
            .map(supervision::Supervisor::new);
        // When the run under supervision began: a long one resets the
        // restart backoff.
        let mut run_began = Instant::now();
        // A resuming task stays on the build it began with: its journal
        // is that build's calls.
        let moves_on_load = tries
            .as_ref()
            .and_then(|tries| tries.on_load)
            .unwrap_or(worker.env.app.policy(&plugin.name).on_load)
            == OnLoad::Restart
            && !durable.as_ref().is_some_and(|d| d.resume);
        let begun = Instant::now();
        let mut verdict = verdict;
        let mut attempt = durable.as_ref().map_or(1, |d| d.first_attempt);
        let storage = durable.as_ref().map(|_| worker.env.storage.tasks().clone());
        // A durable queued task's first attempt is counted at its turn,
        // unless its record counted it (its turn came at its submission).
        if turn.is_some()
            && let (Some(storage), Some(durable)) = (&storage, &durable)
            && !durable.counted
            && let Err(error) = storage.attempt_started(durable.seq, attempt).await
        {
            tracing::error!(
                "task {}: cannot record attempt {attempt} in storage ({error:#}); after a \
                 crash its attempt count will be low",
                ident.label()
            );
        }
        // The task starts with the first attempt that reaches its
        // factory: an earlier one may fail to instantiate.
        let started = std::sync::atomic::AtomicBool::new(false);
        // The last attempt's instance, given back once the end is told.
        let mut spent = None;
        let outcome = loop {
            // A build replaced while it waited (a retry, a restart, its
            // queue): it starts on the new one.
            if moves_on_load && plugin.is_replaced() {
                worker.move_to_newer(&mut plugin, &mut ident);
            }
            let site = runner::Site {
                engines: &worker.env.engines,
                app: &worker.env.app,
                scope: worker.clone(),
                prepared: worker.ready.take(&plugin),
            };
            if site.prepared.is_some() {
                worker.env.metrics.prepared_starts.inc();
            }
            worker.prepare_next(&plugin);
            // A resuming task's attempt replays its journal: the one a
            // crash cut short. A retry after a failure starts afresh (its
            // replay would only fail again the same way).
            let journal = match &durable {
                Some(durable) if durable.resume => {
                    let afresh = attempt > durable.first_attempt;
                    let cancel = task_handle.signal().clone();
                    match worker.journal(durable.seq, afresh, cancel).await {
                        Ok(journal) => Some(journal),
                        Err(error) => break Outcome::Failed { error },
                    }
                }
                _ => None,
            };
            let stopped_by = journal.clone();
            let run = Box::pin(runner::run(
                site,
                &plugin,
                ident.clone(),
                &args,
                task_handle.clone(),
                verdict.take(),
                runner::Attempt {
                    number: attempt,
                    idempotency_key: durable.as_ref().map(|d| d.key.clone()),
                    moves_on_load,
                    journal,
                },
                || {
                    if !started.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        worker.env.metrics.record_spawn(registered.elapsed());
                        worker.registry.mark_running(ident.id);
                        worker.announce(|| LifecycleEvent::Started {
                            task: TaskRef::from(&*ident),
                            version: ident.plugin_version.to_string(),
                        });
                    }
                },
            ))
            .await;
            // No child outlives the attempt that started it.
            task_handle.signal().cancel_children();
            let Some(mut ended) = run else {
                worker.registry.withdraw(ident.id);
                return;
            };
            spent = ended.spent.take();
            // A journal that stopped (a call that differs from the one
            // recorded, a full journal, a failed write) fails the attempt,
            // whatever the guest made of the error it was given.
            if let Some(error) = stopped_by.as_deref().and_then(|j| j.failed()) {
                ended.retriable = matches!(error, crate::journal::JournalError::Storage(_));
                ended.outcome = Outcome::Failed {
                    error: error.to_string(),
                };
            }
            // Stopped for a newer build: the same task goes on there, its
            // attempt and restarts counted on.
            if ended.moved && worker.move_to_newer(&mut plugin, &mut ident) {
                spent = None;
                continue;
            }
            let retried = match (&retry, &ended.outcome) {
                (Some(policy), Outcome::Failed { error })
                    if ended.retriable && attempt < policy.attempts =>
                {
                    Some((policy, error))
                }
                _ => None,
            };
            let Some((policy, error)) = retried else {
                let Some(supervisor) = &mut supervisor else {
                    break ended.outcome;
                };
                // Never after a cancel, whatever the attempt said (one
                // that could not even instantiate says it may be retried).
                let restartable = !task_handle.is_cancelled()
                    && match &ended.outcome {
                        Outcome::Done { .. } => true,
                        _ => ended.retriable,
                    };
                let now = Instant::now();
                let (number, delay) = match supervisor.after(
                    &ended.outcome,
                    restartable,
                    now.saturating_duration_since(run_began),
                    now,
                ) {
                    supervision::Next::End => break ended.outcome,
                    supervision::Next::GiveUp { error } => break Outcome::Failed { error },
                    supervision::Next::Restart { number, delay } => (number, delay),
                };
                worker.announce(|| LifecycleEvent::Restarting {
                    task: TaskRef::from(&*ident),
                    restart: number,
                    delay_ms: lifecycle::millis(delay),
                    error: match &ended.outcome {
                        Outcome::Failed { error } => Some(error.clone()),
                        _ => None,
                    },
                });
                worker.env.metrics.record_restart(&plugin.name);
                worker.registry.set_restarts(ident.id, number);
                spent = None;
                if !waited_out(delay, &task_handle).await {
                    break Outcome::Cancelled {
                        stage: CancelStage::Cooperative,
                    };
                }
                // A restart is a new run: its retries start over.
                attempt = 1;
                run_began = Instant::now();
                continue;
            };
            let delay = policy.delay(attempt, random_u64());
            attempt += 1;
            worker.announce(|| LifecycleEvent::Retrying {
                task: TaskRef::from(&*ident),
                attempt,
                delay_ms: lifecycle::millis(delay),
                error: error.clone(),
            });
            worker.registry.set_attempt(ident.id, attempt);
            spent = None;
            if !waited_out(delay, &task_handle).await {
                break Outcome::Cancelled {
                    stage: CancelStage::Cooperative,
                };
            }
            if let (Some(storage), Some(durable)) = (&storage, &durable)
                && let Err(error) = storage.attempt_started(durable.seq, attempt).await
            {
                tracing::error!(
                    "task {}: cannot record attempt {attempt} in storage ({error:#}); \
                     after a crash its attempt count will be low",
                    ident.label()
                );
            }
        };
        // Recorded before the end is told to anyone: whoever saw
        // it end will not see it run again after a crash. A task
        // stopped by a cancel nobody recorded (the host stopping)
        // has not ended, whatever it returned on the way out.
        let stopped = task_handle.is_cancelled();
        // A cancelled task's instance is given back after its end is told
        // (see `Spent::release`): whoever cancelled it is usually waiting
        // (`cancel_task`, a closed websocket's cleanup), and it slept, so
        // its pages are cold anyway. Any other's now: it is hot in cache,
        // and the next task of a stream reuses its slot (deferred, the 64
        // trivial tasks of a bench batch each held their slot until all
        // had run: 0.49-0.78x raw on one worker in 9 runs, 0.67-0.92x
        // before). None
        // is held across a write to storage: its slot could serve a task.
        if durable.is_some() || !matches!(outcome, Outcome::Cancelled { .. }) {
            spent = None;
        }
        if let (Some(storage), Some(durable)) = (&storage, &durable)
            && let Err(error) = storage.ended(durable.seq, &outcome, stopped).await
        {
            tracing::error!(
                "task {}: cannot record its end in storage ({error:#}); the next \
                 start will run it again",
                ident.label()
            );
        }
        // A queued task that failed its last attempt is kept in its
        // queue's dead letters, before its end is told to anyone.
        if let (Some(turn), Outcome::Failed { error }) = (&turn, &outcome) {
            let letter = crate::storage::DeadLetter {
                plugin: plugin.name.to_string(),
                factory: ident.factory.to_string(),
                args: serde_json::from_str(&args).unwrap_or(serde_json::Value::Null),
                name: ident.name.clone(),
                key: turn.key().map(str::to_string),
                priority: turn.priority(),
                retry: retry.as_ref().map(|policy| policy.spec()),
                restart: tries
                    .as_ref()
                    .and_then(|tries| tries.restart)
                    .map(|policy| policy.spec()),
                durable: durable.is_some(),
                error: error.clone(),
                attempts: attempt,
                failed_at: crate::config::tick_label(std::time::SystemTime::now()),
                worker: worker.id,
                task_id: ident.id,
            };
            worker.keep_dead(turn.queue(), &letter).await;
        }
        let elapsed_ms = lifecycle::millis(begun.elapsed());
        worker.announce(|| {
            let task = TaskRef::from(&*ident);
            match &outcome {
                Outcome::Done { result } => LifecycleEvent::Done {
                    task,
                    result: result.clone(),
                    elapsed_ms,
                },
                Outcome::Failed { error } => LifecycleEvent::Failed {
                    task,
                    error: error.clone(),
                    elapsed_ms,
                },
                Outcome::Cancelled { stage } => LifecycleEvent::Cancelled {
                    task,
                    stage: *stage,
                    elapsed_ms,
                },
            }
        });
        if let (Some(&trace), Some(telemetry)) =
            (ident.trace.as_deref(), worker.env.app.telemetry())
            && trace.span.sampled
        {
            telemetry.record(crate::telemetry::task_span(
                &ident,
                trace,
                attempt,
                &outcome,
                begun.elapsed(),
            ));
        }
        worker.env.metrics.record_end(&outcome);
        worker.registry.finish(ident.id, outcome);
        // The queue's share goes back once the end is told, so no log
        // shows more of the queue's tasks running than it allows.
        drop(turn);
        if let Some(spent) = spent {
            spent.release(&worker.env.engines).await;
        }
    }
}

impl crate::registry::Listing for WorkerCtx {
    fn registry(&self) -> &TaskRegistry {
        &self.registry
    }
}

impl TaskScope for WorkerCtx {
    fn events(&self) -> &EventHub {
        &self.env.events
    }

    fn storage(&self) -> &crate::storage::Storage {
        &self.env.storage
    }

    fn add_task(
        self: Arc<Self>,
        plugin: String,
        spec: TaskSpec,
    ) -> Pin<Box<dyn Future<Output = Result<TaskId, AddTaskError>> + Send>> {
        Box::pin(async move {
            WorkerCtx::add_task(&self, &plugin, spec)
                .await
                .map(|added| added.id)
        })
    }

    fn add_schedule(
        self: Arc<Self>,
        plugin: String,
        spec: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), GuestError>> + Send>> {
        Box::pin(async move {
            let schedules = self.env.schedules().ok_or_else(no_schedules)?;
            schedules.add_schedule(plugin, spec).await
        })
    }

    fn remove_schedule(
        self: Arc<Self>,
        name: String,
    ) -> Pin<Box<dyn Future<Output = Result<bool, GuestError>> + Send>> {
        Box::pin(async move {
            let schedules = self.env.schedules().ok_or_else(no_schedules)?;
            schedules
                .remove_schedule(name)
                .await
                .map_err(GuestError::Failed)
        })
    }

    fn awaited(&self, id: TaskId) -> Option<crate::joins::Awaited> {
        self.env
            .workers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .find_map(|worker| crate::joins::Awaited::by_id(worker, id))
    }

    fn host_name(&self) -> Option<String> {
        let remote = self.env.remote.get().and_then(Weak::upgrade)?;
        Some(remote.host_name())
    }

    fn join_on(self: Arc<Self>, host: String, id: TaskId) -> crate::app::Joined {
        match self.env.remote.get().and_then(Weak::upgrade) {
            Some(remote) => remote.join(host, id),
            None => Box::pin(std::future::ready(Err(OpError::new(
                ErrorKind::NoCluster,
                format!(
                    "task {id} is placed on host {host}, and this app has no [cluster] (or its \
                     cluster does not serve yet)"
                ),
            )))),
        }
    }

    fn start_task_on(self: Arc<Self>, submission: Submission) -> Placed {
        let remote = self.env.remote.get().and_then(Weak::upgrade);
        Box::pin(async move {
            let remote = remote.ok_or_else(|| {
                OpError::new(
                    ErrorKind::Refused,
                    "start-task-on starts tasks on the hosts of a cluster, and this app has no \
                     [cluster] (or its cluster does not serve yet): use start-task",
                )
            })?;
            remote.submit(submission).await
        })
    }
}

/// What a guest gets for a schedule call before the schedules started
/// (a `main` task runs before them).
fn no_schedules() -> GuestError {
    GuestError::Failed("schedules start with the workers: not from a `main` task".into())
}

/// One worker thread and its registry. Dropping it stops the thread; tasks
/// still running then are dropped mid-call (wasmtime unwinds them safely),
/// so cancel and await them first for an orderly end.
pub(crate) struct Worker {
    ctx: Arc<WorkerCtx>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn start(id: WorkerId, env: Arc<TaskEnv>) -> Result<Worker> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("taskhost-worker-{id}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = handle_tx.send(Err(error));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .with_context(|| format!("cannot start worker {id}"))?;
        let runtime = handle_rx
            .recv()
            .context("worker thread died at start")?
            .with_context(|| format!("cannot start the runtime of worker {id}"))?;
        let worker = Worker {
            ctx: Arc::new(WorkerCtx {
                id,
                registry: TaskRegistry::new(
                    id,
                    env.app.limits.ended_tasks_per_worker,
                    CancelPolicy {
                        grace: env.cancel_grace,
                        latency: env.metrics.cancel_latency(),
                    },
                )
                .keeping_ended_for(env.app.limits.keep_ended),
                runtime,
                ready: ready::ReadyInstances::new(env.metrics.prepared.clone()),
                env,
            }),
            stop: Some(stop),
            thread: Some(thread),
        };
        worker
            .ctx
            .env
            .workers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&worker.ctx));
        Ok(worker)
    }

    pub(crate) fn ctx(&self) -> &Arc<WorkerCtx> {
        &self.ctx
    }

    pub(crate) fn registry(&self) -> &TaskRegistry {
        &self.ctx.registry
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits `delay` before a task's retry or restart: the wait is part of
/// the task, so a cancel ends it (false) rather than waiting it out.
async fn waited_out(delay: std::time::Duration, task: &TaskHandle) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = task.signal().cancelled() => false,
    }
}

/// A random u64 for a retry's jitter (no need for more than the OS gives
/// cheaply; a failure only loses the jitter).
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or(0)
}
