//! Workers: where tasks run.
//!
//! A worker is an OS thread with a single-threaded tokio runtime and its own
//! task registry, like a Sanic worker process with its event loop. All of a
//! worker's tasks share its thread; the epoch callback makes a busy task
//! yield each tick so the others still get their turn.

use crate::app::{AppContext, TaskScope};
use crate::bindings::GuestError;
use crate::config::{Limit, LimitUnit, RetryPolicy};
use crate::engine::HostEngine;
use crate::events::EventHub;
use crate::lifecycle::{self, LifecycleEvent, TaskRef};
use crate::logging;
use crate::metrics::Metrics;
use crate::plugin::Plugin;
use crate::registry::{AddTaskError, RegisterError, TaskHandle, TaskRegistry, next_task_id};
use crate::runner;
use crate::task::{CancelPolicy, CancelStage, Outcome, TaskId, TaskIdent, WorkerId};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::{broadcast, oneshot};
use tokio_util::task::TaskTracker;

/// What every running task needs from its host, shared by all workers.
pub struct TaskEnv {
    /// The warm and cold engines (see [`crate::engine`]).
    pub engines: HostEngine,
    pub app: Arc<AppContext>,
    /// The plugins new tasks start from, by name.
    pub plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    /// Event waiters of every worker.
    pub events: EventHub,
    /// Every task of the host, so "no task left" can be awaited.
    pub tracker: TaskTracker,
    /// How long a cancelled task may run on before it is interrupted.
    pub cancel_grace: Duration,
    pub metrics: Metrics,
    /// Lifecycle events (the JSON objects of the lifecycle log lines), for
    /// the control API's stream. Sending costs nothing without listeners.
    pub lifecycle: broadcast::Sender<LifecycleEvent>,
}

impl TaskEnv {
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

/// A worker as its tasks see it: its registry, its runtime, the host.
pub struct WorkerCtx {
    id: WorkerId,
    registry: TaskRegistry,
    runtime: Handle,
    env: Arc<TaskEnv>,
}

impl WorkerCtx {
    pub fn id(&self) -> WorkerId {
        self.id
    }

    pub fn registry(&self) -> &TaskRegistry {
        &self.registry
    }

    pub fn env(&self) -> &Arc<TaskEnv> {
        &self.env
    }

    /// The worker thread's runtime: work spawned here shares the thread
    /// with the worker's tasks (embedders and the speed benchmark use it to
    /// drive tasks without a cross-thread hop).
    pub fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// Registers a task and starts it on this worker; returns at once. Its
    /// arguments are not checked: use this for tasks checked beforehand
    /// (app.toml's, at load).
    pub fn spawn(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        factory: &str,
        args: String,
        name: Option<String>,
        retry: Option<RetryPolicy>,
    ) -> Result<TaskHandle, RegisterError> {
        self.start(plugin, factory, args, name, retry, None)
    }

    /// Sanic's `add_task`: registers a task and starts it on this worker,
    /// returning its id once the factory has accepted the arguments. The
    /// check runs in the task's own instance, so it costs no extra
    /// instantiation. A refused task leaves no trace in the registry.
    pub async fn add_task(
        self: &Arc<Self>,
        plugin: &str,
        factory: &str,
        args: String,
        name: Option<String>,
        retry: Option<RetryPolicy>,
    ) -> Result<TaskId, AddTaskError> {
        // Not echoed back in an unknown-plugin error: it could be huge.
        Limit::check_name("a plugin name", plugin).map_err(RegisterError::from)?;
        let plugin = self
            .env
            .plugin(plugin)
            .ok_or_else(|| AddTaskError::UnknownPlugin(plugin.to_string()))?;
        let (verdict, checked) = oneshot::channel();
        let handle = self.start(plugin, factory, args, name, retry, Some(verdict))?;
        match checked.await {
            Ok(Ok(())) => Ok(handle.id),
            Ok(Err(error)) => Err(AddTaskError::Refused(error)),
            // The task was dropped before it could answer: the worker is
            // shutting down.
            Err(_) => Err(AddTaskError::Refused(GuestError::Cancelled)),
        }
    }

    /// Logs a lifecycle step and sends it to the stream's listeners.
    fn announce(&self, event: LifecycleEvent) {
        logging::lifecycle(&event);
        if self.env.lifecycle.receiver_count() > 0 {
            let _ = self.env.lifecycle.send(event);
        }
    }

    fn start(
        self: &Arc<Self>,
        plugin: Arc<Plugin>,
        factory: &str,
        args: String,
        name: Option<String>,
        retry: Option<RetryPolicy>,
        verdict: Option<oneshot::Sender<Result<(), GuestError>>>,
    ) -> Result<TaskHandle, RegisterError> {
        let ident = Arc::new(TaskIdent {
            id: next_task_id(),
            name,
            worker: self.id,
            plugin: plugin.name.as_str().into(),
            plugin_version: plugin.version.as_str().into(),
            factory: factory.to_string(),
        });
        let registered = Instant::now();
        let limits = &self.env.app.limits;
        if let Some(name) = &ident.name {
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
        if self.env.tracker.len() >= limits.tasks_per_app {
            return Err(Limit {
                what: "the live tasks of the app".into(),
                max: limits.tasks_per_app as u64,
                got: limits.tasks_per_app as u64 + 1,
                unit: LimitUnit::Tasks,
                setting: Some("tasks_per_app"),
            }
            .into());
        }
        let handle = self
            .registry
            .register(ident.clone(), limits.tasks_per_worker)?;
        let task_handle = handle.clone();
        let worker = self.clone();
        self.env.tracker.spawn_on(
            async move {
                let begun = Instant::now();
                let mut verdict = verdict;
                let mut attempt = 1;
                // The task starts with the first attempt that reaches its
                // factory: an earlier one may fail to instantiate.
                let started = std::sync::atomic::AtomicBool::new(false);
                let outcome = loop {
                    let site = runner::Site {
                        engines: &worker.env.engines,
                        app: &worker.env.app,
                        scope: worker.clone(),
                    };
                    let run = runner::run(
                        site,
                        &plugin,
                        ident.clone(),
                        &args,
                        task_handle.clone(),
                        verdict.take(),
                        attempt,
                        || {
                            if !started.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                worker.env.metrics.record_spawn(registered.elapsed());
                                worker.registry.mark_running(ident.id);
                                worker.announce(LifecycleEvent::Started {
                                    task: TaskRef::from(&*ident),
                                    version: ident.plugin_version.to_string(),
                                });
                            }
                        },
                    )
                    .await;
                    let Some(ended) = run else {
                        worker.registry.withdraw(ident.id);
                        return;
                    };
                    let (Some(policy), Outcome::Failed { error }) = (&retry, &ended.outcome) else {
                        break ended.outcome;
                    };
                    if !ended.retriable || attempt >= policy.attempts {
                        break ended.outcome;
                    }
                    let delay = policy.delay(attempt, random_u64());
                    attempt += 1;
                    worker.announce(LifecycleEvent::Retrying {
                        task: TaskRef::from(&*ident),
                        attempt,
                        delay_ms: lifecycle::millis(delay),
                        error: error.clone(),
                    });
                    worker.registry.set_attempt(ident.id, attempt);
                    // The wait is part of the task: a cancel ends it here.
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = task_handle.signal().cancelled() => {
                            break Outcome::Cancelled { stage: CancelStage::Cooperative };
                        }
                    }
                };
                let elapsed_ms = lifecycle::millis(begun.elapsed());
                let task = TaskRef::from(&*ident);
                worker.announce(match &outcome {
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
                });
                worker.env.metrics.record_end(&outcome);
                worker.registry.finish(ident.id, outcome);
            },
            &self.runtime,
        );
        Ok(handle)
    }
}

impl TaskScope for WorkerCtx {
    fn registry(&self) -> &TaskRegistry {
        &self.registry
    }

    fn events(&self) -> &EventHub {
        &self.env.events
    }

    fn add_task(
        self: Arc<Self>,
        plugin: String,
        factory: String,
        args: String,
        name: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Result<TaskId, AddTaskError>> + Send>> {
        Box::pin(
            async move { WorkerCtx::add_task(&self, &plugin, &factory, args, name, None).await },
        )
    }
}

/// One worker thread and its registry. Dropping it stops the thread; tasks
/// still running then are dropped mid-call (wasmtime unwinds them safely),
/// so cancel and await them first for an orderly end.
pub struct Worker {
    ctx: Arc<WorkerCtx>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn start(id: WorkerId, env: Arc<TaskEnv>) -> Result<Worker> {
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
        Ok(Worker {
            ctx: Arc::new(WorkerCtx {
                id,
                registry: TaskRegistry::new(
                    id,
                    env.app.limits.ended_tasks_per_worker,
                    CancelPolicy {
                        grace: env.cancel_grace,
                        latency: env.metrics.cancel_latency(),
                    },
                ),
                runtime,
                env,
            }),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn ctx(&self) -> &Arc<WorkerCtx> {
        &self.ctx
    }

    pub fn registry(&self) -> &TaskRegistry {
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

/// A random u64 for a retry's jitter (no need for more than the OS gives
/// cheaply; a failure only loses the jitter).
fn random_u64() -> u64 {
    getrandom::u64().unwrap_or(0)
}
