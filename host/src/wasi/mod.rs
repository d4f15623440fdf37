//! WASI 0.2 as a task sees it: deny by default, with what its plugin's
//! grants in app.toml allow (directories, environment variables, stdin,
//! TCP addresses through `crate::sockets`), and stdout/stderr as log lines
//! of the task. This
//! module owns the interface's state ([`WasiState`], built on first use)
//! and its linking ([`add_to_linker`]).

mod output;

pub(crate) use output::TaskOutput;

use crate::config::{Grants, PluginPolicy};
use crate::logging::LogGate;
use crate::sockets::TaskSockets;
use crate::task::TaskIdent;
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The WASI state of one task's store.
///
/// The context is created on first use: most tasks never touch WASI, and
/// building a `WasiCtx` is the most expensive part of starting an instance.
pub(crate) struct WasiState {
    ident: Arc<TaskIdent>,
    /// Whose grants say what WASI may reach: shared by every task of the
    /// plugin, not copied per task.
    policy: Arc<PluginPolicy>,
    log: Arc<LogGate>,
    /// What the `tcp` grant's address checks share with the store; none
    /// without the grant.
    sockets: Option<Arc<TaskSockets>>,
    ctx: Option<WasiCtx>,
    /// The task's stderr, once WASI exists: its last lines explain a crash.
    stderr: Option<TaskOutput>,
    table: ResourceTable,
    /// A resuming task's journal: its randomness is seeded from it.
    journal: Option<Arc<crate::journal::Journal>>,
}

impl WasiState {
    pub(crate) fn new(
        ident: Arc<TaskIdent>,
        policy: Arc<PluginPolicy>,
        log: Arc<LogGate>,
        sockets: Option<Arc<TaskSockets>>,
    ) -> WasiState {
        // Every handle the task makes (WASI's, wasi:http's, key-value's)
        // lives here: bounded, so a guest that creates them without end
        // traps instead of growing the host (wasmtime's own bound is
        // 1,000,000 entries).
        let mut table = ResourceTable::new();
        table.set_max_capacity(policy.limits.handles);
        WasiState {
            ident,
            policy,
            log,
            sockets,
            ctx: None,
            stderr: None,
            table,
            journal: None,
        }
    }

    /// What `wasmtime-wasi` works with, building the context if need be.
    pub(crate) fn view(&mut self) -> WasiCtxView<'_> {
        let ident = &self.ident;
        let log = &self.log;
        let stderr = &mut self.stderr;
        let grants = &self.policy.grants;
        let sockets = self.sockets.as_ref();
        let journal = self.journal.as_ref();
        let ctx = self.ctx.get_or_insert_with(|| {
            let errors = TaskOutput::stderr(log.clone());
            *stderr = Some(errors.clone());
            let mut builder = wasi_ctx(
                ident,
                grants,
                sockets,
                TaskOutput::stdout(log.clone()),
                errors,
            );
            if let Some(journal) = journal {
                seed_from(&mut builder, journal.seed());
                builder
                    .wall_clock(crate::journal::WallClock(journal.clone()))
                    .monotonic_clock(crate::journal::MonotonicClock {
                        journal: journal.clone(),
                        zero: std::time::Instant::now(),
                    });
            }
            builder.build()
        });
        WasiCtxView {
            ctx,
            table: &mut self.table,
        }
    }

    /// Seeds the task's randomness from `journal` (a resuming task's).
    pub(crate) fn journaled(&mut self, journal: Arc<crate::journal::Journal>) {
        self.journal = Some(journal);
    }

    /// Whether the task has made a WASI call (the context exists).
    pub(crate) fn used(&self) -> bool {
        self.ctx.is_some()
    }

    /// The store's one resource table, which wasi:http shares.
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// What the task last wrote to stderr (a panic message, typically).
    pub(crate) fn last_stderr_line(&self) -> Option<String> {
        let tail = self.stderr.as_ref()?.tail();
        (!tail.is_empty()).then(|| tail.join("\n"))
    }
}

/// Links WASI 0.2 (async) for stores whose data is a [`WasiView`].
pub(crate) fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
        .map_err(|e| anyhow::anyhow!("cannot add WASI to the linker: {e:#}"))
}

/// The environment variable that carries a task's `traceparent`.
const TRACEPARENT: &str = "TRACEPARENT";

/// The WASI context of a task of a plugin with `grants`: stdout and stderr
/// become log lines; files, environment, stdin and TCP addresses only as
/// granted.
fn wasi_ctx(
    ident: &Arc<TaskIdent>,
    grants: &Grants,
    sockets: Option<&Arc<TaskSockets>>,
    stdout: TaskOutput,
    stderr: TaskOutput,
) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder.stdout(stdout).stderr(stderr);
    crate::sockets::configure(&mut builder, sockets);
    if grants.stdin {
        builder.inherit_stdin();
    }
    // The task's own trace context, as OpenTelemetry's environment
    // carrier names it: a guest's own spans (or its SDK's `traceparent()`)
    // join the task's trace under the task's span. A host variable of that
    // name, even granted, would name the wrong parent.
    let trace = ident.trace.as_deref().map(|trace| trace.span.header());
    for name in &grants.env {
        if trace.is_some() && name == TRACEPARENT {
            continue;
        }
        if let Ok(value) = std::env::var(name) {
            builder.env(name, value);
        }
    }
    if let Some(trace) = trace {
        builder.env(TRACEPARENT, trace);
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
    builder
}

/// A resuming task's randomness: `wasi:random`'s generators and seed, all
/// drawn from the journal's `seed`, so they give the same values on
/// replay as in the run that was cut short.
fn seed_from(builder: &mut WasiCtxBuilder, seed: [u8; 32]) {
    use rand::SeedableRng;
    let mut insecure = seed;
    insecure[0] ^= 0x5a;
    builder
        .secure_random(rand::rngs::StdRng::from_seed(seed))
        .insecure_random(rand::rngs::StdRng::from_seed(insecure))
        .insecure_random_seed(u128::from_le_bytes(
            seed[16..].try_into().expect("16 bytes"),
        ));
}
