//! What a host interface is to the store: a state per task, made when the
//! task's store is made, and a way to link the interface's functions to
//! that state. `store::interfaces!` lists the interfaces that implement
//! [`HostInterface`]; one line there registers an interface.
//!
//! Four interfaces are wired by hand in `store.rs` instead, for reasons of
//! their own: `app` is the task's identity that the others read, WASI and
//! `wasi:http` are wasmtime's crates whose views the store data itself
//! implements, and `wasi:keyvalue` borrows WASI's resource table.

use crate::config::PluginPolicy;
use crate::connection_hub::ConnectionHub;
use crate::sockets::TaskSockets;
use crate::task::{CancelSignal, TaskIdent};
use crate::telemetry::Telemetry;
use std::sync::Arc;
use wasmtime::component::Linker;

/// What an interface may know of its task when the task's store is made.
pub(crate) struct TaskInit<'a> {
    /// Who the task is: its id, plugin, factory, worker.
    pub(crate) ident: &'a Arc<TaskIdent>,
    /// Its plugin's bounds, grants and `app.toml` sections.
    pub(crate) policy: &'a Arc<PluginPolicy>,
    /// Its cancellation: a call that waits must end when it fires.
    pub(crate) cancel: &'a Arc<CancelSignal>,
    /// The app's open websocket connections.
    pub(crate) connections: &'a Arc<ConnectionHub>,
    /// Its sockets' grant checks and counts; none without a `tcp` grant.
    pub(crate) sockets: Option<&'a Arc<TaskSockets>>,
    /// Where its calls' spans go (`[telemetry]`); none: tracing is off.
    pub(crate) telemetry: Option<&'a Arc<Telemetry>>,
}

/// A host interface whose state is its own.
pub(crate) trait HostInterface: Sized + Send + 'static {
    /// The interface's state for one task.
    fn new(task: &TaskInit<'_>) -> Self;

    /// Links the interface's functions for stores whose data holds its
    /// state (`T: Holds<Self>`).
    fn add_to_linker<T: Holds<Self> + Send + 'static>(linker: &mut Linker<T>)
    -> anyhow::Result<()>;
}

/// Store data that holds an interface's state: what `add_to_linker`
/// reaches it through. `store::interfaces!` implements it.
pub(crate) trait Holds<I> {
    /// The state of interface `I`.
    fn state(&mut self) -> &mut I;
}
