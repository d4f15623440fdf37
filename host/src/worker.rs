//! Workers: where tasks run.
//!
//! A worker is an OS thread with a single-threaded tokio runtime and its own
//! task registry, like a Sanic worker process with its event loop. All of a
//! worker's tasks share its thread; the epoch callback makes a busy task
//! yield each tick so the others still get their turn.

use crate::app::AppContext;
use crate::logging::{self, Lifecycle};
use crate::plugin::Plugin;
use crate::registry::{RegisterError, TaskHandle, TaskRegistry, next_task_id};
use crate::runner;
use crate::task::{Outcome, TaskIdent, WorkerId};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use wasmtime::Engine;

/// What every running task needs from its host, shared by all workers.
pub struct TaskEnv {
    pub engine: Engine,
    pub app: Arc<AppContext>,
    /// Every task of the host, so "no task left" can be awaited.
    pub tracker: TaskTracker,
    /// How long a cancelled task may run on before it is interrupted.
    pub cancel_grace: Duration,
    pub stats: TaskStats,
}

/// How many tasks ended which way, host-wide.
#[derive(Debug, Default)]
pub struct TaskStats {
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    pub cancelled: AtomicUsize,
}

impl TaskStats {
    fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Done { .. } => &self.done,
            Outcome::Failed { .. } => &self.failed,
            Outcome::Cancelled { .. } => &self.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One worker thread and its registry. Dropping it stops the thread; tasks
/// still running then are dropped mid-call (wasmtime unwinds them safely),
/// so cancel and await them first for an orderly end.
pub struct Worker {
    id: WorkerId,
    registry: Arc<TaskRegistry>,
    runtime: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn start(id: WorkerId) -> Result<Worker> {
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
            id,
            registry: Arc::new(TaskRegistry::new(id)),
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn id(&self) -> WorkerId {
        self.id
    }

    pub fn registry(&self) -> &Arc<TaskRegistry> {
        &self.registry
    }

    /// Registers a task and starts it on this worker; returns at once.
    pub fn spawn(
        &self,
        env: &Arc<TaskEnv>,
        plugin: Arc<Plugin>,
        factory: &str,
        args: String,
        name: Option<String>,
    ) -> Result<TaskHandle, RegisterError> {
        let ident = Arc::new(TaskIdent {
            id: next_task_id(),
            name,
            worker: self.id,
            plugin: plugin.name.as_str().into(),
            plugin_version: plugin.version.as_str().into(),
            factory: factory.to_string(),
        });
        let handle = self.registry.register(ident.clone())?;
        let cancel = handle.cancel.clone();
        let registry = self.registry.clone();
        let env = env.clone();
        let tracker = env.tracker.clone();
        tracker.spawn_on(
            async move {
                let begun = Instant::now();
                let outcome = runner::run(
                    &env.engine,
                    env.app.clone(),
                    &plugin,
                    ident.clone(),
                    &args,
                    cancel,
                    || {
                        registry.mark_running(ident.id);
                        logging::lifecycle(&ident, Lifecycle::Started);
                    },
                )
                .await;
                let elapsed = begun.elapsed();
                logging::lifecycle(
                    &ident,
                    match &outcome {
                        Outcome::Done { result } => Lifecycle::Done { result, elapsed },
                        Outcome::Failed { error } => Lifecycle::Failed { error, elapsed },
                        Outcome::Cancelled { stage } => Lifecycle::Cancelled {
                            stage: *stage,
                            elapsed,
                        },
                    },
                );
                env.stats.record(&outcome);
                registry.finish(ident.id, outcome);
            },
            &self.runtime,
        );
        Ok(handle)
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
