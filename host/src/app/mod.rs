//! The host side of the `app` interface, and what a task's store holds.
//!
//! One file per part of the interface: `identity` (name, worker, config),
//! `log`, `time` (sleep), `tasks`, `events`. `output` turns a guest's
//! stdout/stderr into attributed log lines; `sandbox` holds what a task may
//! reach and spend.

mod events;
mod identity;
mod log;
mod output;
mod sandbox;
mod tasks;
mod time;

use crate::bindings::taskhost::plugin::types;
use crate::config::{AppConfig, Grants, Limits, PluginLimits};
use crate::task::{CancelSignal, TaskIdent};
use crate::worker::WorkerCtx;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

pub use output::TaskOutput;
pub use sandbox::{MemoryBudget, PluginPolicy};

/// What every task of an application shares: built once from app.toml.
#[derive(Debug)]
pub struct AppContext {
    pub name: String,
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
    /// What `task_memory` may reach (`memory_total_mb`, resolved once).
    pub memory_total_bytes: u64,
}

impl AppContext {
    pub fn new(config: &AppConfig) -> AppContext {
        let limits = config.limits;
        let policies = config
            .plugins
            .iter()
            .map(|(name, plugin)| {
                let policy = PluginPolicy {
                    limits: limits.for_task(&plugin.limits),
                    grants: plugin.grants.clone(),
                };
                (name.clone(), Arc::new(policy))
            })
            .collect();
        AppContext {
            name: config.name.clone(),
            limits,
            config: config
                .config
                .iter()
                .map(|(key, value)| (key.clone(), value.to_string()))
                .collect(),
            policies,
            default_policy: Arc::new(PluginPolicy {
                limits: limits.for_task(&PluginLimits::default()),
                grants: Grants::default(),
            }),
            task_memory: Gauge::default(),
            memory_total_bytes: limits.memory_total_bytes(),
        }
    }

    pub fn config_json(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }

    /// The bounds and grants of `plugin`'s tasks.
    pub fn policy(&self, plugin: &str) -> &Arc<PluginPolicy> {
        self.policies.get(plugin).unwrap_or(&self.default_policy)
    }
}

/// The data of one task's store.
///
/// WASI state is created on first use: most tasks never touch WASI, and
/// building a `WasiCtx` is the most expensive part of starting an instance.
pub struct TaskData {
    pub(crate) ident: Arc<TaskIdent>,
    pub(crate) app: Arc<AppContext>,
    pub(crate) cancel: Arc<CancelSignal>,
    /// The worker the task runs on; none for the throw-away instances that
    /// list factories and check arguments at load.
    pub(crate) worker: Option<Arc<WorkerCtx>>,
    pub(crate) policy: Arc<PluginPolicy>,
    /// Bounds the task's memory (`memory_mb`).
    pub(crate) memory: MemoryBudget,
    /// Bounds the rate of its log lines.
    log: Arc<log::LogGate>,
    wasi: Option<WasiCtx>,
    /// The task's stderr, once WASI exists: its last lines explain a crash.
    stderr: Option<TaskOutput>,
    table: ResourceTable,
}

impl TaskData {
    pub(crate) fn new(
        ident: Arc<TaskIdent>,
        app: Arc<AppContext>,
        cancel: Arc<CancelSignal>,
    ) -> TaskData {
        let policy = app.policy(&ident.plugin).clone();
        let memory = MemoryBudget::new(
            policy.limits.memory_bytes,
            app.memory_total_bytes,
            app.task_memory.clone(),
        );
        TaskData {
            log: Arc::new(log::LogGate::new(ident.clone(), &app.limits)),
            ident,
            app,
            cancel,
            policy,
            memory,
            worker: None,
            wasi: None,
            stderr: None,
            table: ResourceTable::new(),
        }
    }

    pub fn on_worker(mut self, worker: Arc<WorkerCtx>) -> TaskData {
        self.worker = Some(worker);
        self
    }

    /// What the task last wrote to stderr (a panic message, typically).
    pub(crate) fn last_stderr_line(&self) -> Option<String> {
        let tail = self.stderr.as_ref()?.tail();
        (!tail.is_empty()).then(|| tail.join("\n"))
    }
}

impl WasiView for TaskData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let ident = &self.ident;
        let log = &self.log;
        let stderr = &mut self.stderr;
        let grants = &self.policy.grants;
        let ctx = self.wasi.get_or_insert_with(|| {
            let errors = TaskOutput::stderr(log.clone());
            *stderr = Some(errors.clone());
            sandbox::wasi_ctx(ident, grants, TaskOutput::stdout(log.clone()), errors)
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }
}

impl types::Host for TaskData {}

impl crate::bindings::taskhost::plugin::app::Host for TaskData {
    async fn name(&mut self) -> wasmtime::Result<String> {
        Ok(self.app_name())
    }

    async fn worker(&mut self) -> wasmtime::Result<Option<u32>> {
        Ok(self.app_worker())
    }

    async fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.app_config(&key))
    }

    async fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        self.app_log(level, &message);
        Ok(())
    }

    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<Result<(), types::Error>> {
        Ok(time::sleep(self.cancel.clone(), ms).await)
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
        Ok(match self.add_task_target(plugin) {
            Ok((worker, plugin)) => tasks::add_task(worker, plugin, factory, args, name).await,
            Err(error) => Err(error),
        })
    }

    async fn get_task(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<types::TaskInfo, types::Error>> {
        Ok(self.app_get_task(&name))
    }

    async fn cancel_task(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<types::TaskInfo, types::Error>> {
        Ok(match self.cancel_request(&name) {
            Ok(request) => tasks::cancel_task(request).await,
            Err(error) => Err(error),
        })
    }

    async fn tasks(&mut self) -> wasmtime::Result<Vec<types::TaskInfo>> {
        Ok(self.app_tasks())
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
        let Some(worker) = &self.worker else {
            return Ok(Err(types::Error::Failed(
                "no worker: events cannot be awaited here".into(),
            )));
        };
        let env = worker.env().clone();
        Ok(events::wait_event(env, self.cancel.clone(), event, timeout_ms).await)
    }
}
