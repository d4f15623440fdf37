//! An application: app.toml's plugins loaded and its tasks checked
//! ([`Application::load`]), then run ([`Application::run`]).
//!
//! Loading does every check that can fail before anything runs, so a bad
//! config or plugin never leaves a half-started host behind.

use crate::app::AppContext;
use crate::config::{AppConfig, PluginSource, Scope, TaskConfig};
use crate::engine::{EngineSettings, EpochTicker, build_engine};
use crate::plugin::build::{self, BuildOptions};
use crate::plugin::{Plugin, PluginLoader};
use crate::runner;
use crate::task::{TaskState, WorkerId};
use crate::worker::{TaskEnv, TaskStats, Worker};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::task::TaskTracker;
use wasmtime::Engine;

/// How long shutdown waits, after forcing, for tasks to be gone. Forced
/// tasks end within a tick or two, so this only bounds a host bug.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// A loaded application, ready to run.
pub struct Application {
    config: AppConfig,
    engine: Engine,
    app: Arc<AppContext>,
    plugins: BTreeMap<String, Arc<Plugin>>,
}

/// How `run` ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// End once no task is left, instead of waiting for a signal.
    pub until_idle: bool,
}

/// What happened during a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub done: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// The run was ended by the shutdown signal.
    pub interrupted: bool,
    /// Tasks that had not ended when shutdown gave up waiting.
    pub abandoned: usize,
}

impl Application {
    /// Builds (for `build = ...` plugins) and loads every plugin, then checks
    /// every task: its factory exists and its arguments decode.
    pub async fn load(config: AppConfig, build_options: &BuildOptions) -> Result<Application> {
        let engine = build_engine(EngineSettings::default())?;
        let app = Arc::new(AppContext::new(config.name.clone(), &config.config));
        let loader = PluginLoader::new(&engine, app.clone())?;
        let file = config.source.display().to_string();

        let mut plugins = BTreeMap::new();
        for (name, plugin) in &config.plugins {
            let path = match &plugin.source {
                PluginSource::File(path) => path.clone(),
                PluginSource::Build(dir) => {
                    let dir = dir.clone();
                    let options = build_options.clone();
                    tokio::task::spawn_blocking(move || build::build(&dir, &options))
                        .await
                        .context("build thread failed")?
                        .with_context(|| format!("{file}: [plugins.{name}]: build failed"))?
                }
            };
            let loaded = loader
                .load(name, &path)
                .await
                .with_context(|| format!("{file}: [plugins.{name}]"))?;
            plugins.insert(name.clone(), Arc::new(loaded));
        }

        for task in &config.tasks {
            check_task(&loader, &plugins[&task.plugin], task)
                .await
                .with_context(|| format!("{file}: {task}"))?;
        }

        Ok(Application {
            config,
            engine,
            app,
            plugins,
        })
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Runs the `main` tasks to their end, then starts the workers with
    /// their tasks, until `shutdown` resolves (or, with `until_idle`, until
    /// no task is left). On shutdown every task is cancelled, cooperatively
    /// first, and awaited.
    pub async fn run(
        self,
        options: RunOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary> {
        let _ticker = EpochTicker::start(&self.engine)?;
        let env = Arc::new(TaskEnv {
            engine: self.engine.clone(),
            app: self.app.clone(),
            tracker: TaskTracker::new(),
            cancel_grace: self.config.cancel_grace,
            stats: TaskStats::default(),
        });
        tokio::pin!(shutdown);

        // Main scope: once, before any worker exists; workers wait for it.
        let main = Worker::start(WorkerId::Main)?;
        let mut handles = Vec::new();
        for task in self.tasks(Scope::Main) {
            handles.push(self.spawn(&main, &env, task)?);
        }
        let all_ended = async {
            for handle in &mut handles {
                handle.ended().await;
            }
        };
        tokio::select! {
            _ = all_ended => {}
            _ = &mut shutdown => {
                tracing::info!("shutdown requested before the workers started");
                let abandoned = stop(&[&main], &env).await;
                return Ok(summary(&env, true, abandoned));
            }
        }
        let failed: Vec<String> = main
            .registry()
            .snapshot()
            .into_iter()
            .filter(|info| info.state == TaskState::Failed)
            .map(|info| info.ident.label())
            .collect();
        if !failed.is_empty() {
            stop(&[&main], &env).await;
            bail!(
                "main task(s) failed: {}; the workers were not started",
                failed.join(", ")
            );
        }

        let workers = (0..self.config.workers)
            .map(|index| Worker::start(WorkerId::Index(index)))
            .collect::<Result<Vec<_>>>()?;
        for worker in &workers {
            for task in self.tasks(Scope::Worker) {
                self.spawn(worker, &env, task)?;
            }
        }
        tracing::info!(
            app = self.config.name,
            workers = self.config.workers,
            "{} started with {} worker(s)",
            self.config.name,
            self.config.workers
        );

        // Closing only means "the startup tasks are all spawned": tasks can
        // still be added, and `wait` resolves once none is left.
        env.tracker.close();
        let idle = async {
            if options.until_idle {
                env.tracker.wait().await
            } else {
                std::future::pending().await
            }
        };
        let interrupted = tokio::select! {
            _ = idle => false,
            _ = &mut shutdown => true,
        };
        let mut everyone: Vec<&Worker> = vec![&main];
        everyone.extend(workers.iter());
        let abandoned = if interrupted {
            tracing::info!("shutting down: cancelling every task");
            stop(&everyone, &env).await
        } else {
            0
        };
        Ok(summary(&env, interrupted, abandoned))
    }

    fn tasks(&self, scope: Scope) -> impl Iterator<Item = &TaskConfig> {
        self.config.tasks.iter().filter(move |t| t.scope == scope)
    }

    fn spawn(
        &self,
        worker: &Worker,
        env: &Arc<TaskEnv>,
        task: &TaskConfig,
    ) -> Result<crate::registry::TaskHandle> {
        let plugin = self.plugins[&task.plugin].clone();
        worker
            .spawn(
                env,
                plugin,
                &task.factory,
                task.args.to_string(),
                task.name.clone(),
            )
            .map_err(|e| anyhow!("{}: {task}: {e}", self.config.source.display()))
    }
}

/// The task's factory exists and accepts its arguments.
async fn check_task(loader: &PluginLoader, plugin: &Plugin, task: &TaskConfig) -> Result<()> {
    if plugin.factory(&task.factory).is_none() {
        bail!(
            "plugin `{}` has no factory `{}` (it has: {})",
            plugin.name,
            task.factory,
            plugin.factory_names()
        );
    }
    let args = task.args.to_string();
    match loader
        .check_args(plugin, &task.factory, &args)
        .await
        .context("checking its arguments failed")?
    {
        Ok(()) => Ok(()),
        Err(error) => bail!("bad args {args}: {}", runner::describe(&error)),
    }
}

/// Cancels every live task of `workers`, gives them the grace period, forces
/// the rest, and waits a bounded time. Returns how many never ended.
async fn stop(workers: &[&Worker], env: &TaskEnv) -> usize {
    env.tracker.close();
    let live = || -> Vec<_> { workers.iter().flat_map(|w| w.registry().live()).collect() };
    for handle in live() {
        handle.cancel.cancel();
    }
    if tokio::time::timeout(env.cancel_grace, env.tracker.wait())
        .await
        .is_ok()
    {
        return 0;
    }
    for handle in live() {
        handle.cancel.force();
    }
    if tokio::time::timeout(SHUTDOWN_MARGIN, env.tracker.wait())
        .await
        .is_ok()
    {
        return 0;
    }
    let abandoned = live().len();
    tracing::error!(
        abandoned,
        "{abandoned} task(s) did not end after being forced"
    );
    abandoned
}

fn summary(env: &TaskEnv, interrupted: bool, abandoned: usize) -> RunSummary {
    RunSummary {
        done: env.stats.done.load(Ordering::Relaxed),
        failed: env.stats.failed.load(Ordering::Relaxed),
        cancelled: env.stats.cancelled.load(Ordering::Relaxed),
        interrupted,
        abandoned,
    }
}
