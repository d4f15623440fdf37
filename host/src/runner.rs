//! Runs one task: a fresh store and instance, the factory call, and the
//! outcome, told apart into done / failed / cancelled (and by which stage).

use crate::app::{AppContext, TaskData};
use crate::bindings::GuestError;
use crate::plugin::Plugin;
use crate::task::{CancelSignal, CancelStage, Outcome, TaskIdent};
use std::sync::Arc;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

/// A store set up the way every task's store must be: its epoch deadline
/// callback yields to the worker's other tasks each tick (fairness), and
/// interrupts the guest once its cancellation has been forced.
pub(crate) fn new_store(engine: &Engine, data: TaskData) -> Store<TaskData> {
    let mut store = Store::new(engine, data);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|cx| {
        if cx.data().cancel.is_forced() {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// Runs `ident.factory` of `plugin` with `args` in its own instance.
/// `started` is called once the instance exists and the factory is about to
/// run.
pub(crate) async fn run(
    engine: &Engine,
    app: Arc<AppContext>,
    plugin: &Plugin,
    ident: Arc<TaskIdent>,
    args: &str,
    cancel: Arc<CancelSignal>,
    started: impl FnOnce(),
) -> Outcome {
    let mut store = new_store(engine, TaskData::new(ident.clone(), app, cancel.clone()));
    let instance = match plugin.pre().instantiate_async(&mut store).await {
        Ok(instance) => instance,
        Err(error) => {
            return Outcome::Failed {
                error: format!("cannot instantiate plugin `{}`: {error:#}", plugin.name),
            };
        }
    };
    started();
    let result = instance
        .taskhost_plugin_factories()
        .call_run(&mut store, &ident.factory, args)
        .await;
    classify(result, &cancel, store.data())
}

fn classify(
    result: wasmtime::Result<Result<String, GuestError>>,
    cancel: &CancelSignal,
    data: &TaskData,
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
            let mut error = format!("{trap:?}");
            if let Some(line) = data.last_stderr_line() {
                error = format!("{line}\n{error}");
            }
            Outcome::Failed { error }
        }
    }
}

pub(crate) fn describe(error: &GuestError) -> String {
    match error {
        GuestError::Cancelled => "returned `cancelled` without being cancelled".into(),
        GuestError::UnknownFactory(name) => format!("unknown factory `{name}`"),
        GuestError::InvalidArgs(message) | GuestError::Failed(message) => message.clone(),
    }
}
