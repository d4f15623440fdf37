//! What one task's store holds, composed from the host interfaces it
//! imports (each owns its state: [`AppState`] for `app`, [`WasiState`] for
//! WASI, [`HttpState`] for `wasi:http`, [`ConnectionsState`] for
//! `connections`; `wasi:keyvalue` borrows what the
//! others hold) plus what the store itself enforces: the plugin's policy and the
//! memory budget. [`linker`] links every interface; a new host interface
//! adds its state here and one line there.

use crate::app::{AppContext, AppState, TaskScope};
use crate::config::PluginPolicy;
use crate::engine::MAX_TABLE_ELEMENTS;
use crate::http::HttpState;
use crate::interface::{Holds, HostInterface, TaskInit};
use crate::keyvalue::KvView;
use crate::logging::LogGate;
use crate::sockets::{SocketsState, SocketsView};
use crate::task::{CancelSignal, TaskIdent};
use crate::wasi::WasiState;
use anyhow::Result;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

/// The data of one task's store.
pub(crate) struct TaskData {
    /// The `app` interface's state.
    pub(crate) app: AppState,
    /// WASI's state, built on first use.
    wasi: WasiState,
    /// `wasi:sockets`' state: the task's TCP sockets and their grant's
    /// checks.
    sockets: SocketsState,
    /// Outbound HTTP's state, built on the task's first request: most
    /// tasks send none, and a task's start should not pay for it.
    http: Option<HttpState>,
    /// The task's cancellation, as the epoch callback reads it.
    cancel: Arc<CancelSignal>,
    pub(crate) policy: Arc<PluginPolicy>,
    /// Bounds the task's memory (`memory_mb`).
    memory: MemoryBudget,
    /// `wasi:keyvalue` handles the task holds (bounded).
    kv_handles: u32,
    /// The states of the interfaces [`interfaces!`] lists.
    interfaces: Interfaces,
}

impl TaskData {
    /// Whether the task runs under a lease (a durable task of a cluster).
    pub(crate) fn is_leased(&self) -> bool {
        self.cancel.is_leased()
    }

    /// Whether an allow-list refused one of the task's HTTP requests or
    /// sockets: its next attempt would be refused the same.
    pub(crate) fn grant_denied(&self) -> bool {
        self.http.as_ref().is_some_and(HttpState::denied) || self.sockets.denied()
    }

    /// Whether the task's cancel failed one of its socket calls.
    pub(crate) fn io_cut_by_cancel(&self) -> bool {
        self.sockets.cut_by_cancel()
    }

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
        // One rate limit for every line of the task: app.log, stdout, stderr.
        let log = Arc::new(LogGate::new(
            ident.clone(),
            &app.limits,
            Some((cancel.clone(), app.log_book.clone())),
        ));
        let sockets = SocketsState::new(&ident, &policy, &cancel, &app.sockets_open);
        let interfaces = Interfaces::new(&TaskInit {
            ident: &ident,
            policy: &policy,
            cancel: &cancel,
            connections: &app.connections,
            sockets: sockets.shared(),
            telemetry: app.telemetry(),
        });
        TaskData {
            interfaces,
            wasi: WasiState::new(
                ident.clone(),
                policy.clone(),
                log.clone(),
                sockets.shared().cloned(),
            ),
            sockets,
            http: None,
            app: AppState::new(ident, app, cancel.clone(), log),
            cancel,
            policy,
            memory,
            kv_handles: 0,
        }
    }

    /// The data of an instance made before its task exists (see
    /// [`crate::runner::Prepared`]): a stand-in identity, a signal nobody
    /// sends, and a memory budget outside the host's gauge, since no task
    /// holds that memory yet.
    pub(crate) fn stand_in(ident: Arc<TaskIdent>, app: Arc<AppContext>) -> TaskData {
        let mut data = TaskData::new(ident, app, Arc::default());
        data.memory.gauge = Gauge::default();
        data
    }

    /// Takes over the memory `stand_in`'s instantiation grew, as if this
    /// task had grown it: counted against its limit and in the gauge.
    pub(crate) fn adopt_memory(&mut self, mut stand_in: TaskData) {
        let grown = std::mem::take(&mut stand_in.memory.used);
        self.memory.used += grown;
        self.memory
            .gauge
            .inc_by(i64::try_from(grown).unwrap_or(i64::MAX));
    }

    /// Whether the instance reached for WASI, outbound HTTP or key-value
    /// state: a prepared instance that did is not handed to a task, since
    /// what it opened would be the stand-in's.
    pub(crate) fn reached_out(&self) -> bool {
        self.wasi.used()
            || self.http.is_some()
            || self.kv_handles > 0
            || self.interfaces.db.opened()
    }

    /// The task resumes from `journal` (`durable = "resume"`): its host
    /// calls and randomness come from it while it replays.
    pub(crate) fn journaled(&mut self, journal: Arc<crate::journal::Journal>) {
        self.wasi.journaled(journal.clone());
        self.app.journal = Some(journal);
    }

    /// The task runs on the worker `scope` stands for.
    pub(crate) fn on_worker(mut self, scope: Arc<dyn TaskScope>) -> TaskData {
        self.app.scope = Some(scope);
        self
    }

    /// What the task last wrote to stderr (a panic message, typically).
    pub(crate) fn last_stderr_line(&self) -> Option<String> {
        self.wasi.last_stderr_line()
    }
}

impl WasiView for TaskData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.view()
    }
}

impl TaskData {
    /// What `wasi:keyvalue` works with: borrowed, nothing of its own.
    fn kv(&mut self) -> KvView<'_> {
        KvView {
            ident: &self.app.ident,
            policy: &self.policy,
            storage: self.app.scope.as_ref().map(|scope| scope.storage().kv()),
            table: self.wasi.table(),
            handles: &mut self.kv_handles,
            telemetry: self.app.app.telemetry(),
            journal: self.app.journal.as_ref(),
        }
    }
}

impl TaskData {
    /// What `wasi:sockets`' replaced parts work with: their state, and
    /// WASI's context and table.
    fn sockets(&mut self) -> SocketsView<'_> {
        let WasiCtxView { ctx, table } = self.wasi.view();
        SocketsView {
            state: &mut self.sockets,
            ident: &self.app.ident,
            policy: &self.policy,
            ctx: ctx.sockets(),
            table,
        }
    }
}

impl WasiHttpView for TaskData {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let TaskData {
            http,
            app,
            policy,
            cancel,
            wasi,
            ..
        } = self;
        let http = http.get_or_insert_with(|| {
            HttpState::new(
                app.ident.clone(),
                policy.clone(),
                cancel.clone(),
                app.app.http_metrics.clone(),
                app.app.telemetry().cloned(),
                app.journal.clone().zip(app.idempotency_key.clone()),
            )
        });
        http.view(wasi.table())
    }
}

/// A linker with every interface a task may import: WASI 0.2 (what it may
/// reach decided per task, see [`WasiState`]), outbound HTTP behind its
/// allow-list, the `app` handle, and key-value state.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<TaskData>> {
    let mut linker = Linker::new(engine);
    crate::wasi::add_to_linker(&mut linker)?;
    crate::sockets::add_to_linker(&mut linker, TaskData::sockets)?;
    crate::http::add_to_linker(&mut linker)?;
    crate::app::add_to_linker(&mut linker, |data: &mut TaskData| &mut data.app)?;
    crate::keyvalue::add_to_linker(&mut linker, TaskData::kv)?;
    Interfaces::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Declares [`Interfaces`], one field per host interface whose state is
/// its own ([`HostInterface`]), and links them all.
macro_rules! interfaces {
    ($($(#[$doc:meta])* $field:ident: $state:ty,)*) => {
        /// The states of the host interfaces that [`interfaces!`] lists,
        /// in one task's store.
        struct Interfaces {
            $($(#[$doc])* $field: $state,)*
        }

        impl Interfaces {
            fn new(task: &TaskInit<'_>) -> Interfaces {
                Interfaces {
                    $($field: <$state as HostInterface>::new(task),)*
                }
            }

            fn add_to_linker(linker: &mut Linker<TaskData>) -> Result<()> {
                $(<$state as HostInterface>::add_to_linker(linker)?;)*
                Ok(())
            }
        }

        $(impl Holds<$state> for TaskData {
            fn state(&mut self) -> &mut $state {
                &mut self.interfaces.$field
            }
        })*
    };
}

// The registration list: a new host interface is one line here.
interfaces! {
    /// `taskhost:plugin/connections`: the public listener's websockets.
    connections: crate::connections::ConnectionsState,
    /// `wasi:config/store`: the plugin's `[plugins.NAME.variables]`.
    variables: crate::variables::VariablesState,
    /// `taskhost:db`: Postgres and Redis connections the host holds.
    db: crate::db::DbState,
}

/// Epoch ticks from a task's store being made (or a prepared instance
/// being handed to its task) to the end of its first turn. With 1, the
/// first turn ended at the next tick, anywhere 0-1 ms away: in a burst of
/// short tasks (a JavaScript task runs 0.3-0.7 ms here) about half were
/// stopped partway and sent behind every task of the burst not yet
/// started, each holding its instance meanwhile. The burst then held more
/// instances than the warm image pool's 32 slots, and the tasks past it
/// ran on demand, each faulting its interpreter's pages in afresh: of the
/// guests bench's 2,000 trivial Python tasks, 1,052 ran on demand with 1
/// and 21 with 2 (throughput 391-613/s against 1,257-1,684/s).
pub(crate) const FIRST_TURN_TICKS: u64 = 2;

/// A store set up the way every task's store must be: its epoch deadline
/// callback yields to the worker's other tasks each tick (fairness), and
/// interrupts the guest once its cancellation has been forced.
///
/// The yield is tokio's `yield_now`, not wasmtime's plain `Yield`: tokio
/// defers its wake-up until the runtime has polled its timers and I/O, so a
/// sleeping task next to a spinner wakes within a tick. A plain re-queue
/// keeps the run queue busy, and tokio then checks timers only every 61
/// polls (61 ms with one spinner).
///
/// A task's first turn ends at the second tick after its store is made,
/// not the first ([`FIRST_TURN_TICKS`]), so it lasts at least one whole
/// tick (1-2 ms); later turns end at the next tick.
pub(crate) fn new_store(engine: &Engine, data: TaskData) -> Store<TaskData> {
    // The lease is attached when the task registers, before its store.
    let leased = data.cancel.is_leased();
    let mut store = Store::new(engine, data);
    store.limiter(|data| &mut data.memory);
    store.set_epoch_deadline(FIRST_TURN_TICKS);
    store.epoch_deadline_callback(|cx| {
        let cancel = &cx.data().cancel;
        if cancel.is_forced() {
            Ok(UpdateDeadline::Interrupt)
        } else if cancel.is_fenced() {
            // A copy whose lease is over stops even in a loop that makes
            // no host call.
            cancel.force();
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(crate::grace::yield_to_siblings()),
            ))
        }
    });
    if leased {
        fence(&mut store);
    }
    store
}

/// Makes every host call of the store's task trap once the task's lease
/// is over ([`crate::task::Lease`]): a copy of a durable task that another
/// host of the cluster may be running performs no effect, however it was
/// held up (a pause, a stall) and whatever it calls next. The task is
/// forced too, so it ends `cancelled` (forced) rather than `failed`, and
/// its end is not recorded as the task's (it was stopped, not ended).
/// Only the stores of leased tasks (durable tasks of a cluster) carry the
/// hook.
pub(crate) fn fence(store: &mut Store<TaskData>) {
    store.call_hook(|cx, hook| {
        if matches!(hook, wasmtime::CallHook::CallingHost) && cx.data().cancel.is_fenced() {
            let data = cx.data();
            if !data.cancel.is_forced() {
                // Said once, before the forced cancel's own line, so the log
                // tells a fenced copy from one cancelled by hand.
                let ident = &data.app.ident;
                tracing::warn!(
                    task = ident.name.as_deref().unwrap_or(""),
                    task_id = ident.id,
                    "task {} (id {}): this host's lease lapsed (the host was paused or cut off \
                     from NATS past `ack_wait`), so its copy stops at its next host call; \
                     another host may run the task now",
                    ident.name.as_deref().unwrap_or("(unnamed)"),
                    ident.id
                );
            }
            data.cancel.force();
            return Err(wasmtime::Trap::Interrupt.into());
        }
        Ok(())
    });
}

/// Bounds the linear memory of one task's store, across all its memories,
/// and keeps the host-wide gauge of task memory current. Dropped with the
/// store, giving its memory back to the gauge.
pub(crate) struct MemoryBudget {
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
    pub(crate) fn new(limit: usize, total_limit: u64, gauge: Gauge) -> MemoryBudget {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::atomic::{AtomicU32, Ordering};
    use wasmtime::{Config, Linker as CoreLinker, Module};

    /// Whether a guest that advances the epoch `ticks` times from its
    /// store's start, then runs through a loop header, is sent to the back
    /// of its worker's queue (its call is pending) or finishes at once.
    fn yields_after(ticks: u32) -> bool {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let module = Module::new(
            &engine,
            wat::parse_str(
                r#"(module
                    (import "host" "tick" (func $tick))
                    (func (export "run") (param $ticks i32)
                        (loop $next
                            (if (local.get $ticks)
                                (then
                                    (call $tick)
                                    (local.set $ticks (i32.sub (local.get $ticks) (i32.const 1)))
                                    (br $next))))))"#,
            )
            .unwrap(),
        )
        .unwrap();
        let ticked = Arc::new(AtomicU32::new(0));
        let mut linker = CoreLinker::<TaskData>::new(&engine);
        let counter = ticked.clone();
        linker
            .func_wrap(
                "host",
                "tick",
                move |caller: wasmtime::Caller<'_, TaskData>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    caller.engine().increment_epoch();
                },
            )
            .unwrap();
        let config = crate::config::AppConfig::parse(
            "name = \"deadline\"\n",
            std::path::Path::new("app.toml"),
            std::path::Path::new("/nonexistent"),
        )
        .unwrap();
        let ident = Arc::new(TaskIdent::for_tests(1, "p", "run"));
        let data = TaskData::stand_in(ident, Arc::new(AppContext::new(&config)));
        let mut store = new_store(&engine, data);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
            let run = instance
                .get_typed_func::<u32, ()>(&mut store, "run")
                .unwrap();
            let call = run.call_async(&mut store, ticks);
            tokio::pin!(call);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let pending = call.as_mut().poll(&mut cx).is_pending();
            assert_eq!(ticked.load(Ordering::Relaxed), ticks);
            pending
        })
    }

    /// A task's first turn lasts at least one whole tick: with the next
    /// tick as its deadline (as before), a burst of short tasks had about
    /// half of them stopped partway, each holding its instance while every
    /// task of the burst not yet started ran first (docs/speed.md). Failed
    /// before: `yields_after(1)` was true.
    #[test]
    fn a_first_turn_runs_through_one_tick_and_yields_at_the_next() {
        assert!(!yields_after(1), "the first tick does not end the turn");
        assert!(yields_after(2), "the second does");
    }
}
