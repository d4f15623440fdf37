//! The host side of the `app` interface, and what a task's store holds.
//!
//! One file per part of the interface: `identity` (name, worker, config),
//! `log`, `time` (sleep). `output` turns a guest's stdout/stderr into
//! attributed log lines.

mod identity;
mod log;
mod output;
mod time;

use crate::bindings::taskhost::plugin::types;
use crate::task::{CancelSignal, TaskIdent};
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use output::TaskOutput;

/// What every task of an application shares: built once from app.toml.
#[derive(Debug)]
pub struct AppContext {
    pub name: String,
    /// `[config]` values, already encoded as the JSON text `app.config`
    /// returns, so a call costs a lookup and a copy.
    config: HashMap<String, String>,
}

impl AppContext {
    pub fn new(
        name: String,
        config: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> AppContext {
        let config = config
            .iter()
            .map(|(key, value)| (key.clone(), value.to_string()))
            .collect();
        AppContext { name, config }
    }

    pub fn config_json(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
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
    wasi: Option<WasiCtx>,
    /// The task's stderr, once WASI exists: its last lines explain a crash.
    stderr: Option<TaskOutput>,
    table: ResourceTable,
}

impl TaskData {
    pub fn new(ident: Arc<TaskIdent>, app: Arc<AppContext>, cancel: Arc<CancelSignal>) -> TaskData {
        TaskData {
            ident,
            app,
            cancel,
            wasi: None,
            stderr: None,
            table: ResourceTable::new(),
        }
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
        let stderr = &mut self.stderr;
        let ctx = self.wasi.get_or_insert_with(|| {
            let errors = TaskOutput::stderr(ident.clone());
            *stderr = Some(errors.clone());
            // Deny by default: no files, no environment, no network, no
            // stdin. stdout and stderr become log lines of this task.
            WasiCtxBuilder::new()
                .stdout(TaskOutput::stdout(ident.clone()))
                .stderr(errors)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build()
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
}
