//! `wasi:config/store`: a task reads its plugin's
//! `[plugins.NAME.variables]` (`get`, `get-all`), read-only, through the
//! standard interface (the `0.2.0-rc.1` that wasmtime implements), so code
//! that reads its configuration that way needs nothing of taskhost's. The app-wide `[config]` table stays
//! `app.config` (JSON values); these are strings, one set per plugin, and
//! no plugin sees another's.
//!
//! The section's schema and checks are [`section`]'s; serving them is
//! `wasmtime-wasi-config`'s (wasmtime's implementation of the interface).

pub(crate) mod section;

use crate::interface::{Holds, HostInterface, TaskInit};
use section::Variables;
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime_wasi_config::WasiConfig;

/// The interface's state in one task's store: its plugin's variables,
/// shared with every task of the plugin.
pub(crate) struct VariablesState(Arc<Variables>);

impl HostInterface for VariablesState {
    fn new(task: &TaskInit<'_>) -> VariablesState {
        VariablesState(task.policy.variables.clone())
    }

    fn add_to_linker<T: Holds<Self> + Send + 'static>(
        linker: &mut Linker<T>,
    ) -> anyhow::Result<()> {
        wasmtime_wasi_config::add_to_linker(linker, |data: &mut T| {
            WasiConfig::from(Holds::<VariablesState>::state(data).0.served())
        })
        .map_err(|e| anyhow::anyhow!("cannot add wasi:config/store to the linker: {e:#}"))
    }
}
