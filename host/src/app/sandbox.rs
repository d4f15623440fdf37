//! What one task may reach and spend: the WASI context its plugin's grants
//! allow, and the memory budget its store's limiter enforces.

use super::TaskOutput;
use crate::config::{Grants, TaskLimits};
use crate::task::TaskIdent;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// How a plugin's tasks are bounded and what they may reach, resolved
/// from app.toml once, shared by every task of the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginPolicy {
    pub limits: TaskLimits,
    pub grants: Grants,
}

/// The WASI context of a task of a plugin with `grants`: stdout and stderr
/// become log lines; files, environment and stdin only as granted; never
/// the network.
pub(super) fn wasi_ctx(
    ident: &Arc<TaskIdent>,
    grants: &Grants,
    stdout: TaskOutput,
    stderr: TaskOutput,
) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(stdout)
        .stderr(stderr)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if grants.stdin {
        builder.inherit_stdin();
    }
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    for dir in &grants.dirs {
        let perms = if dir.write {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        // The directory existed when app.toml was loaded; if it has gone
        // since, the task runs without it rather than not at all, and the
        // operator is told.
        if let Err(error) = builder.preopened_dir(&dir.host, &dir.guest, perms) {
            tracing::warn!(
                task = %ident.label(),
                plugin = %ident.plugin,
                "granted directory {} is unavailable: {error:#}",
                dir.host.display()
            );
        }
    }
    builder.build()
}

/// Table elements one task may grow a table to: function tables of real
/// programs hold thousands, not millions.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Bounds the linear memory of one task's store, across all its memories,
/// and keeps the host-wide gauge of task memory current. Dropped with the
/// store, giving its memory back to the gauge.
pub struct MemoryBudget {
    limit: usize,
    /// What all live tasks may hold together (`memory_total_mb`); the
    /// gauge is their sum.
    total_limit: i64,
    used: usize,
    /// Growth allowed but not yet done: taken back if the grow fails.
    pending: usize,
    gauge: Gauge,
}

impl MemoryBudget {
    pub fn new(limit: usize, total_limit: u64, gauge: Gauge) -> MemoryBudget {
        MemoryBudget {
            limit,
            total_limit: i64::try_from(total_limit).unwrap_or(i64::MAX),
            used: 0,
            pending: 0,
            gauge,
        }
    }

    fn gauge_sub(&self, bytes: usize) {
        self.gauge.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

impl ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        if self.used.saturating_add(growth) > self.limit {
            return Ok(false);
        }
        let delta = i64::try_from(growth).unwrap_or(i64::MAX);
        let before = self.gauge.inc_by(delta);
        if before.saturating_add(delta) > self.total_limit {
            self.gauge.dec_by(delta);
            return Ok(false);
        }
        self.used += growth;
        self.pending = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.used -= self.pending;
        self.gauge_sub(self.pending);
        self.pending = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl Drop for MemoryBudget {
    fn drop(&mut self) {
        self.gauge_sub(self.used);
    }
}
