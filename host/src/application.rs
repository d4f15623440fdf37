//! An application: app.toml's plugins loaded and its tasks checked
//! ([`Application::load`]), then run ([`Application::run`]).
//!
//! Loading does every check that can fail before anything runs, so a bad
//! config or plugin never leaves a half-started host behind.

use crate::app::AppContext;
use crate::compile_cache::CompileCache;
use crate::config::{AppConfig, PluginSource};
use crate::control::ControlOptions;
use crate::engine::{EngineSettings, build_engine};
use crate::host::{Host, RunSummary};
use crate::plugin::build::{self, BuildOptions};
use crate::plugin::{Plugin, PluginLoader};
use crate::storage::{KvLimits, SqliteStore, StoreOptions};

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

/// A loaded application, ready to run.
pub struct Application {
    config: AppConfig,
    build_options: BuildOptions,
    loader: PluginLoader,
    app: Arc<AppContext>,
    plugins: BTreeMap<String, Arc<Plugin>>,
    /// Their components, which the launch hands to the storage to keep.
    components: BTreeMap<String, Vec<u8>>,
    /// When loading began, before any build: a watch started later
    /// rebuilds what changed since (an edit made while the app started).
    loading_began: std::time::SystemTime,
}

/// How long shutdown waits, beyond the grace period, for the public
/// listener's connections to close.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How `run` runs and ends.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// End once no task is left, instead of waiting for a signal.
    pub until_idle: bool,
    /// Serve the control API (from when the workers start).
    pub control: Option<ControlOptions>,
    /// Rebuild and hot-load plugins when their files or sources change.
    pub watch: bool,
    /// Where the public listener binds instead of `[listen] address`.
    pub listen: Option<std::net::SocketAddr>,
}

/// What `run` takes before anything is built or run: the storage lock and
/// the sockets of the control API and the public listener. Each fails
/// alone if its resource is taken, before a plugin is compiled or a task
/// started, so such a start exits 2 with nothing run.
pub struct Reserved {
    store: SqliteStore,
    control: Option<crate::control::BoundControl>,
    listener: Option<crate::listener::BoundListener>,
}

impl Reserved {
    /// Takes the storage lock and binds the sockets `config` and
    /// `options` ask for.
    pub async fn take(config: &AppConfig, options: &RunOptions) -> Result<Reserved> {
        // The control file first: "another host (app, pid) serves here"
        // says more than the storage lock the same host also holds.
        let control = match &options.control {
            Some(control) => Some(crate::control::bind(control).await?),
            None => None,
        };
        let store = open_store(config)?;
        let listener = match &config.listen {
            Some(listen) => {
                Some(crate::listener::bind(&config.source, listen, options.listen).await?)
            }
            None => None,
        };
        Ok(Reserved {
            store,
            control,
            listener,
        })
    }
}

/// Opens (and locks) app.toml's `[storage]`.
fn open_store(config: &AppConfig) -> Result<SqliteStore> {
    let storage = &config.storage;
    let options = StoreOptions {
        kv: KvLimits::from(&config.limits),
        fsync: storage.fsync,
        keep_ended: storage.keep_ended_tasks,
    };
    SqliteStore::open(&storage.dir, options)
        .with_context(|| format!("{}: [storage]", config.source.display()))
}

impl Application {
    /// Builds (for `build = ...` plugins) and loads every plugin, then checks
    /// every task: its factory exists and its arguments decode.
    pub async fn load(
        config: AppConfig,
        engine_settings: &EngineSettings,
        build_options: &BuildOptions,
    ) -> Result<Application> {
        let loading_began = std::time::SystemTime::now();
        let engine = build_engine(&EngineSettings {
            max_instances: config.limits.instances,
            warm_instances: config.limits.warm_instances,
            warm_image_instances: config.limits.warm_image_instances,
            max_wasm_stack: config.limits.wasm_stack_bytes(),
            ..engine_settings.clone()
        })?;
        let app = Arc::new(AppContext::new(&config));
        let loader = PluginLoader::new(&engine, app.clone())?;
        let file = config.source.display().to_string();

        let mut plugins = BTreeMap::new();
        let mut components = BTreeMap::new();
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
            plugins.insert(name.clone(), Arc::new(loaded.plugin));
            components.insert(name.clone(), loaded.component);
        }

        for task in &config.tasks {
            check_task(
                &loader,
                &plugins[&task.plugin],
                &task.factory,
                &task.args.to_string(),
            )
            .await
            .with_context(|| format!("{file}: {task}"))?;
        }
        for (index, schedule) in config.schedules.iter().enumerate() {
            check_task(
                &loader,
                &plugins[&schedule.plugin],
                &schedule.factory,
                &schedule.args,
            )
            .await
            .with_context(|| format!("{file}: schedules[{index}] ({:?})", schedule.name))?;
        }
        for route in &config.routes {
            check_task(
                &loader,
                &plugins[&route.plugin],
                &route.factory,
                &route.sample_args(),
            )
            .await
            .with_context(|| {
                format!(
                    "{file}: routes[{}] ({}): the factory must take the route's `args` and a \
                     `request` argument",
                    route.index,
                    route.label()
                )
            })?;
        }

        Ok(Application {
            config,
            build_options: build_options.clone(),
            loader,
            app,
            plugins,
            components,
            loading_began,
        })
    }

    /// The app.toml it was loaded from, checked.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// The compile cache, if enabled: its hit and miss counts say whether
    /// loading compiled anything.
    pub fn compile_cache(&self) -> Option<&CompileCache> {
        self.loader.compile_cache()
    }

    /// The plugins app.toml names, loaded and their tasks' arguments
    /// checked, in name order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// Starts the host: the epoch ticker and the main scope, whose tasks
    /// begin at once. Workers start with [`Host::start_workers`], once the
    /// main tasks have ended ([`Host::main_tasks_ended`]).
    pub async fn launch(self) -> Result<Host> {
        let store = open_store(&self.config)?;
        self.launch_on(store).await
    }

    async fn launch_on(self, store: SqliteStore) -> Result<Host> {
        let metrics = store.metrics().clone();
        Host::launch(
            self.config,
            self.loader,
            self.app,
            self.plugins,
            self.components,
            crate::storage::Storage::sqlite(store),
            metrics,
        )
        .await
    }

    /// Splits off how plugins are built, and since when, which outlive the
    /// launch (watch).
    async fn launch_keeping_build(
        self,
        store: SqliteStore,
    ) -> Result<(Host, BuildOptions, std::time::SystemTime)> {
        let build_options = self.build_options.clone();
        let since = self.loading_began;
        Ok((self.launch_on(store).await?, build_options, since))
    }

    /// The whole life of `taskhost run`: main tasks, then workers with their
    /// tasks, until `shutdown` resolves (or, with `until_idle`, until no task
    /// is left); then every task is cancelled, cooperatively first, and
    /// awaited.
    /// `reserved` holds what [`Reserved::take`] took for `options`.
    pub async fn run(
        self,
        reserved: Reserved,
        options: RunOptions,
        shutdown: impl Future<Output = ()>,
    ) -> Result<RunSummary> {
        tokio::pin!(shutdown);
        let Reserved {
            store,
            control: bound_control,
            listener: bound_listener,
        } = reserved;
        let (mut host, build_options, loading_began) = self.launch_keeping_build(store).await?;
        let main_result = tokio::select! {
            result = host.main_tasks_ended() => Some(result),
            _ = &mut shutdown => None,
        };
        match main_result {
            None => {
                tracing::info!("shutdown requested before the workers started");
                return Ok(host.shutdown(true).await);
            }
            Some(Err(error)) => {
                host.shutdown(false).await;
                return Err(error);
            }
            Some(Ok(())) => {}
        }
        if let Err(error) = host.start_workers().await {
            host.shutdown(false).await;
            return Err(error);
        }
        let host = Arc::new(host);
        // Every operation on the host: guests' `start-task-on` and the
        // other hosts' requests. Held here for the run, weakly by the host
        // (the operations point back at it).
        let operations = crate::operations::Operations::new(host.clone());
        // Other hosts' tasks come once this host's workers run.
        if let Some(cluster) = host.cluster() {
            let served = async {
                operations.serve_cluster(cluster).await?;
                cluster.start_serving();
                anyhow::Ok(())
            };
            if let Err(error) = served.await {
                host.shutdown(false).await;
                return Err(error.context(format!(
                    "{}: [cluster]: cannot take tasks from the other hosts",
                    host.config().source.display()
                )));
            }
        }
        let control = match (&options.control, bound_control) {
            (Some(control), Some(bound)) => {
                match crate::control::serve(host.clone(), control, bound).await {
                    Ok(server) => Some(server),
                    Err(error) => {
                        host.shutdown(false).await;
                        return Err(error);
                    }
                }
            }
            _ => None,
        };
        let listener = match (&host.config().listen, bound_listener) {
            (Some(listen), Some(bound)) => {
                match crate::listener::serve(host.clone(), listen, bound).await {
                    Ok(listener) => Some(listener),
                    Err(error) => {
                        host.shutdown(false).await;
                        if let Some(control) = control {
                            control.stop().await;
                        }
                        return Err(error);
                    }
                }
            }
            _ => None,
        };
        let _watch = if options.watch {
            let config = host.config().clone();
            match crate::watch::start(host.clone(), &config, build_options, loading_began) {
                Ok(watch) => Some(watch),
                Err(error) => {
                    host.shutdown(false).await;
                    if let Some(control) = control {
                        control.stop().await;
                    }
                    return Err(error);
                }
            }
        } else {
            None
        };
        let interrupted = tokio::select! {
            _ = host.idle(), if options.until_idle => false,
            _ = &mut shutdown => true,
        };
        if interrupted {
            tracing::info!("shutting down: cancelling every task");
        }
        // Connections first: each closes with 1001 after what its task
        // queued, then its task is cancelled like every other.
        if let Some(listener) = listener {
            listener
                .stop(host.config().cancel_grace + SHUTDOWN_WAIT)
                .await;
        }
        let summary = host.shutdown(interrupted).await;
        if let Some(control) = control {
            control.stop().await;
        }
        Ok(summary)
    }
}

/// The factory exists and accepts the arguments (JSON text).
async fn check_task(
    loader: &PluginLoader,
    plugin: &Plugin,
    factory: &str,
    args: &str,
) -> Result<()> {
    if plugin.factory(factory).is_none() {
        bail!(
            "plugin `{}` has no factory `{factory}` (it has: {})",
            plugin.name,
            plugin.factory_names()
        );
    }
    match loader
        .check_args(plugin, factory, args)
        .await
        .context("checking its arguments failed")?
    {
        Ok(()) => Ok(()),
        Err(error) => bail!("bad args {args}: {}", crate::bindings::describe(&error)),
    }
}
