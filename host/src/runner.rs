//! Runs one task: a fresh store and instance, the factory call, and the
//! outcome, told apart into done / failed / cancelled (and by which stage).

use crate::app::{AppContext, TaskScope};
use crate::bindings::{Factories, GuestError, describe};
use crate::engine::{HostEngine, WarmSlot};
use crate::plugin::Plugin;
use crate::registry::TaskHandle;
use crate::store::{TaskData, new_store};
use crate::task::{CancelSignal, CancelStage, Outcome, TaskIdent, WorkerId};
use std::sync::Arc;
use tokio::sync::oneshot;
use wasmtime::{Store, Trap};

/// Where a task runs: the engines its store comes from, the app it belongs
/// to, and the worker it sees through the `app` interface.
pub(crate) struct Site<'a> {
    pub engines: &'a HostEngine,
    pub app: &'a Arc<AppContext>,
    pub scope: Arc<dyn TaskScope>,
    /// An instance of the task's plugin made before the task asked for one
    /// (see [`prepare`]); without it the task instantiates its own.
    pub prepared: Option<Prepared>,
}

/// An instance of a plugin made ahead of demand, on a worker with nothing
/// else to do, so the next task of that plugin starts without
/// instantiating: its store holds a stand-in identity until a task adopts
/// it ([`Prepared::adopt`]).
///
/// Only plugins of the warm pool are prepared, each holding a warm slot:
/// a prepared instance never takes capacity a task could not get
/// otherwise, and the cold pool's `[limits] instances` stay whole.
pub(crate) struct Prepared {
    /// Declared before the slot, so dropped before it: the slot is free
    /// again only once the instance has given it back.
    store: Store<TaskData>,
    instance: Factories,
    _slot: WarmSlot,
    /// The build it was made from: a task of another build (after a
    /// hot-load) cannot use it.
    pub plugin: Arc<Plugin>,
}

impl Prepared {
    /// Hands the instance to the task whose store data is `data`: the
    /// stand-in identity goes, the memory the instantiation grew is now
    /// the task's (and counted in `taskhost_task_memory_bytes` from now
    /// on), and the epoch deadline starts afresh, so the first turn is not
    /// cut short by the ticks the instance spent waiting.
    fn adopt(mut self, data: TaskData) -> (Store<TaskData>, Factories, WarmSlot) {
        if data.is_leased() {
            crate::store::fence(&mut self.store);
        }
        let stand_in = std::mem::replace(self.store.data_mut(), data);
        self.store.data_mut().adopt_memory(stand_in);
        self.store
            .set_epoch_deadline(crate::store::FIRST_TURN_TICKS);
        (self.store, self.instance, self._slot)
    }
}

/// Instantiates `plugin` for a task that does not exist yet, on `worker`,
/// in a warm slot. None if no warm slot is free, the plugin runs on the
/// image engine (its instances are large and their cost is their first
/// call, not instantiation), or instantiation failed or reached for WASI
/// or outbound HTTP (what it reached would belong to the stand-in, not to
/// the task): the task then instantiates its own, and says what failed.
pub(crate) async fn prepare(
    engines: &HostEngine,
    app: &Arc<AppContext>,
    plugin: Arc<Plugin>,
    worker: WorkerId,
) -> Option<Prepared> {
    if plugin.has_large_image() {
        return None;
    }
    let slot = engines.warm_slots.take()?;
    let ident = Arc::new(TaskIdent {
        id: 0,
        name: None,
        worker,
        plugin: plugin.name.clone(),
        plugin_version: plugin.version.clone(),
        factory: String::new(),
        durable: None,
        connection: None,
        queue: None,
        parent: None,
        trace: None,
        args: crate::task::ShownArgs::default(),
    });
    let data = TaskData::stand_in(ident, app.clone());
    let (engine, pre) = plugin.instantiation(engines, true).ok()?;
    let mut store = new_store(engine, data);
    let instance = pre.instantiate_async(&mut store).await.ok()?;
    engines.pools.made(crate::engine::Pool::Warm);
    if store.data().reached_out() {
        return None;
    }
    Some(Prepared {
        store,
        instance,
        _slot: slot,
        plugin,
    })
}

/// Which attempt of a task an instance runs, as its guest sees it.
pub(crate) struct Attempt {
    /// 1 for the first (`app.attempt()`).
    pub number: u32,
    /// A durable task's key (`app.idempotency-key()`).
    pub idempotency_key: Option<Arc<str>>,
    /// The attempt stops (cooperatively, then forced after the grace
    /// period) once a newer build of its plugin is loaded, so the task can
    /// start again on it (`on_load = "restart"`).
    pub moves_on_load: bool,
    /// A resuming task's journal (`durable = "resume"`).
    pub journal: Option<Arc<crate::journal::Journal>>,
}

/// Runs `ident.factory` of `plugin` with `args` in its own instance at
/// `site`. `started` is called once the instance exists and the factory
/// is about to run.
///
/// With a `verdict` channel, the factory first checks `args` and the verdict
/// is sent back (`add_task` waits for it); a refused task returns `None`:
/// it never ran. `attempt` is what the guest's `app.attempt()` and
/// `app.idempotency-key()` say.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    site: Site<'_>,
    plugin: &Arc<Plugin>,
    ident: Arc<TaskIdent>,
    args: &str,
    handle: TaskHandle,
    verdict: Option<oneshot::Sender<Result<(), GuestError>>>,
    attempt: Attempt,
    started: impl FnOnce(),
) -> Option<Ended> {
    let engines = site.engines;
    let timeout = site.app.policy(&ident.plugin).limits.timeout;
    // With a time limit, or moving to a newer build, the attempt gets a
    // signal of its own, so running out of time or a new build stops this
    // attempt and not the task's next one.
    let cancel = match timeout.is_some() || attempt.moves_on_load {
        true => Arc::new(CancelSignal::attempt_of(handle.signal())),
        false => handle.signal().clone(),
    };
    let replaced = attempt.moves_on_load.then(|| plugin.clone());
    // Made where it is moved into the store, never held across an await:
    // a local would keep its 848 bytes in this future for the task's life.
    let data = || {
        let mut data =
            TaskData::new(ident.clone(), site.app.clone(), cancel.clone()).on_worker(site.scope);
        data.app.attempt = attempt.number;
        data.app.idempotency_key = attempt.idempotency_key;
        if let Some(journal) = attempt.journal {
            data.journaled(journal);
        }
        data
    };
    let prepared = site
        .prepared
        .filter(|prepared| Arc::ptr_eq(&prepared.plugin, plugin));
    // Declared before the store, so dropped after it: the slot is free
    // again only once the instance has given it back.
    let (_slot, mut store, instance) = match prepared {
        Some(prepared) => {
            let (store, instance, slot) = prepared.adopt(data());
            (Some(slot), store, instance)
        }
        // Boxed: rustc does not overlap its state with the call's, so it
        // would stay in this future for the task's whole life (measured:
        // 1.1 KB of heap per live task).
        None => match Box::pin(instantiate(engines, plugin, data())).await {
            Ok(instantiated) => instantiated,
            Err(why) => return not_instantiated(&plugin.name, &why, verdict),
        },
    };
    // One call site: each `.await` of `call` would hold a state of its own
    // in this future, on the heap of every live task.
    let mut ended = call(
        &mut store, &instance, &ident, args, handle, verdict, &cancel, timeout, replaced, started,
    )
    .await?;
    ended.spent = Some(Spent {
        _store: store,
        _slot,
    });
    Some(ended)
}

/// A task's instance once its calls are over, handed back with how they
/// ended so that the task's end can be told before the instance is given
/// back to its pool ([`Spent::release`]).
pub(crate) struct Spent {
    /// Declared before the slot, so dropped before it.
    _store: Store<TaskData>,
    _slot: Option<WarmSlot>,
}

impl Spent {
    /// Gives the instance back to its pool after whatever was woken by
    /// the task's end (told just before) has had its turn on this thread:
    /// dropping a store resets its slot's pages and zeroes its fiber stack
    /// (26-30 us measured for a sleeper), which a `cancel_task` would
    /// otherwise wait out. Only cancelled tasks' instances go this way (see
    /// `worker::Run::run`). Counted meanwhile in `engines.releases`.
    pub(crate) async fn release(self, engines: &HostEngine) {
        let releasing = engines.releases.begin();
        BehindTheWoken(false).await;
        drop(self);
        drop(releasing);
    }
}

/// Resolves at its second poll, having put its task at the back of its
/// worker's run queue: behind the tasks woken just before, and ahead of
/// those woken after. Not `tokio::task::yield_now`, which defers the
/// task until the worker next polls its I/O driver (up to 61 other tasks
/// later): in a burst of cancels, ended instances would pile up, holding
/// their slots and going cold in cache before their drop.
struct BehindTheWoken(bool);

impl std::future::Future for BehindTheWoken {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// A new instance for a task whose store data is `data`: in a warm slot if
/// one is free (and the component fits it), else in the cold pool or, for
/// a large image, on demand. The slot comes first: it must be dropped
/// after the store.
async fn instantiate(
    engines: &crate::engine::HostEngine,
    plugin: &Plugin,
    data: TaskData,
) -> Result<(Option<WarmSlot>, Store<TaskData>, Factories), String> {
    let mut warm_slot = match plugin.has_large_image() {
        true => engines.warm_image_slots.take(),
        false => engines.warm_slots.take(),
    };
    let (engine, pre) = plugin.instantiation(engines, warm_slot.is_some())?;
    let mut store = new_store(engine, data);
    let mut instantiated = pre.instantiate_async(&mut store).await;
    if warm_slot.is_some() && crate::engine::pool_was_full(&instantiated) {
        // A component larger than the warm pool's slots expect: run it
        // in the cold pool (or, for a large image, on demand) instead.
        let (engine, pre) = plugin.instantiation(engines, false)?;
        store = new_store(engine, store.into_data());
        drop(warm_slot.take());
        instantiated = pre.instantiate_async(&mut store).await;
    }
    // The cold pool full while ended tasks' instances are still being
    // given back: their slots are as good as free.
    while crate::engine::pool_was_full(&instantiated) && engines.releases.next_done().await {
        // A new store: the failed attempt's may hold the core instances
        // it made before the pool refused one.
        let (engine, pre) = plugin.instantiation(engines, warm_slot.is_some())?;
        store = new_store(engine, store.into_data());
        instantiated = pre.instantiate_async(&mut store).await;
    }
    match instantiated {
        Ok(instance) => {
            let pool = crate::engine::Pool::of(plugin.has_large_image(), warm_slot.is_some());
            engines.pools.made(pool);
            Ok((warm_slot, store, instance))
        }
        Err(error) => {
            let mut message = format!("{error:#}");
            if let Some(hint) = crate::engine::mapping_refused_hint(&error) {
                message = format!("{message} ({hint})");
            }
            Err(message)
        }
    }
}

/// A task whose instance could not be made: its check's verdict says
/// so, or it ends failed (and may be retried), naming `plugin` and `why`.
fn not_instantiated(
    plugin: &str,
    why: &str,
    verdict: Option<oneshot::Sender<Result<(), GuestError>>>,
) -> Option<Ended> {
    let message = format!("cannot instantiate plugin `{plugin}`: {why}");
    match verdict {
        Some(verdict) => {
            let _ = verdict.send(Err(GuestError::Failed(message)));
            None
        }
        None => Some(Ended {
            outcome: Outcome::Failed { error: message },
            retriable: true,
            moved: false,
            spent: None,
        }),
    }
}

/// The calls of a task into its instance: the argument check (with a
/// `verdict` channel), then the factory, to its outcome.
#[allow(clippy::too_many_arguments)]
async fn call(
    store: &mut Store<TaskData>,
    factories: &Factories,
    ident: &TaskIdent,
    args: &str,
    handle: TaskHandle,
    verdict: Option<oneshot::Sender<Result<(), GuestError>>>,
    cancel: &CancelSignal,
    timeout: Option<std::time::Duration>,
    replaced: Option<Arc<Plugin>>,
    started: impl FnOnce(),
) -> Option<Ended> {
    if let Some(verdict) = verdict {
        // Boxed, as the instantiation is: its state would outlive it.
        let checked = match Box::pin(factories.call_check(&mut *store, &ident.factory, args)).await
        {
            Ok(checked) => checked,
            Err(trap) => Err(GuestError::Failed(format!(
                "checking the arguments trapped: {trap:#}"
            ))),
        };
        let accepted = checked.is_ok();
        let _ = verdict.send(checked);
        if !accepted {
            return None;
        }
    }
    if cancel.is_cancelled() {
        // Cancelled before it began: nothing ran, nothing to clean up.
        return Some(Ended {
            outcome: Outcome::Cancelled {
                stage: CancelStage::Cooperative,
            },
            retriable: false,
            moved: false,
            spent: None,
        });
    }
    started();
    let (mut timed_out, mut moved) = (false, false);
    let returned = {
        let call = factories.call_run(&mut *store, &ident.factory, args);
        tokio::pin!(call);
        tokio::select! {
            // A call that returned is taken first: its result stands,
            // whatever else became ready meanwhile.
            biased;
            result = &mut call => Some(result),
            // Epochs cannot interrupt a guest blocked inside a host call (a
            // WASI poll, say): once forced, drop the call; wasmtime unwinds
            // the guest.
            _ = cancel.forced() => None,
            _ = deadline(timeout) => {
                timed_out = true;
                stop_attempt(&mut call, cancel, handle.grace()).await
            }
            _ = replaced_by_newer(replaced.as_deref()) => {
                moved = true;
                stop_attempt(&mut call, cancel, handle.grace()).await
            }
        }
    };
    // Arguments the factory refuses, or a factory it does not have, are
    // refused the same way by the next attempt.
    let permanent = matches!(
        &returned,
        Some(Ok(Err(
            GuestError::InvalidArgs(_) | GuestError::UnknownFactory(_)
        )))
    );
    let outcome = match returned {
        Some(result) => classify(result, cancel, || store.data().last_stderr_line()),
        None => Outcome::Cancelled {
            stage: CancelStage::Forced,
        },
    };
    // A task whose socket call the cancel failed (a blocked read of a slow
    // query, say) and that then failed, ended because of the cancel and on
    // its own: in whatever language, that failure is how it unwinds.
    let outcome = match outcome {
        Outcome::Failed { .. } if cancel.is_cancelled() && store.data().io_cut_by_cancel() => {
            Outcome::Cancelled {
                stage: CancelStage::Cooperative,
            }
        }
        outcome => outcome,
    };
    // A timed-out attempt may be tried again; one of a task that was
    // cancelled may not, nor one the sandbox refused an HTTP request, nor
    // one whose arguments were refused: the next attempt would be refused
    // the same.
    let retriable = (timed_out || matches!(outcome, Outcome::Failed { .. }))
        && !moved
        && !permanent
        && !handle.is_cancelled()
        && !store.data().app.stop_retrying
        && !store.data().grant_denied();
    let outcome = match timeout {
        Some(limit) if timed_out => after_timeout(outcome, limit),
        _ => outcome,
    };
    // A task that returned its result before the stop reached it is done,
    // as one that beat its timeout is: it does not run again elsewhere.
    let moved = moved && !handle.is_cancelled() && !matches!(outcome, Outcome::Done { .. });
    Some(Ended {
        outcome,
        retriable,
        moved,
        spent: None,
    })
}

/// Stops an attempt that ran out of time or whose build was replaced:
/// cancelled like any task, so it may clean up within the grace period,
/// then interrupted. Only this attempt's signal: the task's own stays as
/// it was. What `call` returned, or none if it was forced.
async fn stop_attempt<F: std::future::Future + Unpin>(
    call: &mut F,
    cancel: &CancelSignal,
    grace: std::time::Duration,
) -> Option<F::Output> {
    cancel.cancel();
    tokio::select! {
        result = &mut *call => Some(result),
        _ = cancel.forced() => None,
        _ = tokio::time::sleep(grace) => {
            cancel.force();
            tokio::select! {
                result = call => Some(result),
                _ = cancel.forced() => None,
            }
        }
    }
}

/// Resolves once a newer build replaced `plugin`; never without one.
async fn replaced_by_newer(plugin: Option<&Plugin>) {
    match plugin {
        Some(plugin) => plugin.replaced().await,
        None => std::future::pending().await,
    }
}

/// How one attempt of a task ended, and whether its retry or restart
/// policy may try again (a failure or a timeout, of a task nobody
/// cancelled, not marked permanent by the guest's `stop-retrying`, nor
/// refused by the sandbox or by its own factory's argument check).
pub(crate) struct Ended {
    pub outcome: Outcome,
    /// Its instance, to give back once the end is told; none if it never
    /// ran.
    pub spent: Option<Spent>,
    pub retriable: bool,
    /// It was stopped because a newer build of its plugin was loaded
    /// (`on_load = "restart"`), and nobody cancelled the task: it starts
    /// again on that build.
    pub moved: bool,
}

/// How a task that ran out of time ended: cancelled by the timeout is a
/// failure that says so; a task that returned before the cancel reached it
/// keeps its own outcome.
fn after_timeout(outcome: Outcome, limit: std::time::Duration) -> Outcome {
    match outcome {
        Outcome::Cancelled { stage } => Outcome::Failed {
            error: format!(
                "timed out after {} ms (limit `timeout_ms`); {}",
                limit.as_millis(),
                match stage {
                    CancelStage::Cooperative => "it stopped when told",
                    CancelStage::Forced => "it was interrupted",
                }
            ),
        },
        outcome => outcome,
    }
}

/// Resolves when a task with `timeout` has run out of time; never without.
///
/// # Cancel safety
///
/// A sleep: dropping it forgets how much time had passed.
async fn deadline(timeout: Option<std::time::Duration>) {
    match timeout {
        // Boxed, so a task without a timeout holds no timer's bytes.
        Some(timeout) => Box::pin(tokio::time::sleep(timeout)).await,
        None => std::future::pending().await,
    }
}

/// What a factory's return means: its result, its error, or a
/// cancellation, told apart by whether the task had been cancelled (a
/// `cancelled` error from a task nobody cancelled is a failure) or forced
/// (an interrupt trap of a forced task is its forced end, any other trap a
/// failure, led by the last line the guest wrote to stderr).
fn classify(
    result: wasmtime::Result<Result<String, GuestError>>,
    cancel: &CancelSignal,
    last_stderr: impl FnOnce() -> Option<String>,
) -> Outcome {
    match result {
        Ok(Ok(result)) => Outcome::Done { result },
        Ok(Err(GuestError::Cancelled)) if cancel.is_cancelled() => Outcome::Cancelled {
            stage: CancelStage::Cooperative,
        },
        Ok(Err(error)) => Outcome::Failed {
            error: describe(&error),
        },
        Err(trap)
            if cancel.is_forced() && trap.downcast_ref::<Trap>() == Some(&Trap::Interrupt) =>
        {
            Outcome::Cancelled {
                stage: CancelStage::Forced,
            }
        }
        Err(trap) => {
            // A Rust guest that panics prints the reason to stderr, then
            // traps: the reason is what people need to see first.
            let mut error = describe_trap(&trap);
            let out_of_handles = trap.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<wasmtime::component::ResourceTableError>(),
                    Some(wasmtime::component::ResourceTableError::Full)
                )
            });
            let fields_too_big = trap.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<wasmtime_wasi_http::FieldMapError>(),
                    Some(wasmtime_wasi_http::FieldMapError::TotalSizeTooBig)
                )
            });
            if fields_too_big {
                error = format!(
                    "the task built HTTP header fields past [limits] http_fields_bytes\n{error}"
                );
            }
            if out_of_handles {
                error = format!(
                    "the task holds as many resource handles as it may ([limits] \
                     handles_per_task): drop handles it no longer needs, or raise the bound\n{error}"
                );
            }
            if let Some(line) = last_stderr() {
                error = format!("{line}\n{error}");
            }
            Outcome::Failed { error }
        }
    }
}

/// A trap as people read it: the error and its causes (the wasm backtrace
/// among them), as anyhow's `{:?}` prints them, but never the host's own
/// Rust backtrace, which `{:?}` adds when `RUST_BACKTRACE` is set: it
/// names host internals and reaches the log, the API and other tasks.
fn describe_trap(trap: &wasmtime::Error) -> String {
    let mut text = trap.to_string();
    let mut causes = trap.chain().skip(1).peekable();
    if causes.peek().is_some() {
        text += "\n\nCaused by:";
        for cause in causes {
            text += &format!("\n    {cause}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn trap(trap: Trap) -> wasmtime::Result<Result<String, GuestError>> {
        Err(wasmtime::Error::from(trap))
    }

    fn no_stderr() -> Option<String> {
        None
    }

    #[test]
    fn a_result_is_done_and_an_error_is_failed() {
        let quiet = CancelSignal::default();
        assert_eq!(
            classify(Ok(Ok("7".into())), &quiet, no_stderr),
            Outcome::Done { result: "7".into() }
        );
        assert_eq!(
            classify(Ok(Err(GuestError::Failed("no".into()))), &quiet, no_stderr),
            Outcome::Failed { error: "no".into() }
        );
    }

    #[test]
    fn cancelled_counts_only_when_the_task_was_cancelled() {
        let quiet = CancelSignal::default();
        assert_eq!(
            classify(Ok(Err(GuestError::Cancelled)), &quiet, no_stderr),
            Outcome::Failed {
                error: "returned `cancelled` without being cancelled".into()
            }
        );
        let cancelled = CancelSignal::default();
        cancelled.cancel();
        assert_eq!(
            classify(Ok(Err(GuestError::Cancelled)), &cancelled, no_stderr),
            Outcome::Cancelled {
                stage: CancelStage::Cooperative
            }
        );
    }

    #[test]
    fn an_interrupt_is_a_forced_cancel_only_once_forced() {
        let forced = CancelSignal::default();
        forced.force();
        assert_eq!(
            classify(trap(Trap::Interrupt), &forced, no_stderr),
            Outcome::Cancelled {
                stage: CancelStage::Forced
            }
        );
        let cancelled = CancelSignal::default();
        cancelled.cancel();
        assert!(matches!(
            classify(trap(Trap::Interrupt), &cancelled, no_stderr),
            Outcome::Failed { .. }
        ));
        // Any other trap of a forced task is still a failure.
        assert!(matches!(
            classify(trap(Trap::UnreachableCodeReached), &forced, no_stderr),
            Outcome::Failed { .. }
        ));
    }

    #[test]
    fn a_trap_leads_with_what_the_guest_last_wrote_to_stderr() {
        let quiet = CancelSignal::default();
        let Outcome::Failed { error } =
            classify(trap(Trap::UnreachableCodeReached), &quiet, || {
                Some("panicked at src/lib.rs:3: boom".into())
            })
        else {
            panic!("a trap fails the task");
        };
        assert!(
            error.starts_with("panicked at src/lib.rs:3: boom\n"),
            "{error}"
        );
    }

    #[test]
    fn a_timeout_turns_a_cancel_into_a_failure_that_says_so() {
        let limit = Duration::from_millis(50);
        assert_eq!(
            after_timeout(
                Outcome::Cancelled {
                    stage: CancelStage::Cooperative
                },
                limit
            ),
            Outcome::Failed {
                error: "timed out after 50 ms (limit `timeout_ms`); it stopped when told".into()
            }
        );
        assert_eq!(
            after_timeout(
                Outcome::Cancelled {
                    stage: CancelStage::Forced
                },
                limit
            ),
            Outcome::Failed {
                error: "timed out after 50 ms (limit `timeout_ms`); it was interrupted".into()
            }
        );
        // Returned before the cancel reached it: its own outcome stands.
        assert_eq!(
            after_timeout(Outcome::Done { result: "1".into() }, limit),
            Outcome::Done { result: "1".into() }
        );
    }
}
