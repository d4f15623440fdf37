//! The `connections` interface: what a task does with a websocket
//! connection the public listener accepted (`recv`, `send`, `close`),
//! through the app's [`ConnectionHub`].

use crate::bindings::taskhost::plugin::connections::{self as wit, Message};
use crate::bindings::taskhost::plugin::types::Error as GuestError;
use crate::connection_hub::{Connection, ConnectionHub};
use crate::interface::{Holds, HostInterface, TaskInit};
use crate::task::CancelSignal;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

/// The interface's state in one task's store: its plugin, its cancel
/// signal, and the app's connections.
pub(crate) struct ConnectionsState {
    plugin: Arc<str>,
    cancel: Arc<CancelSignal>,
    hub: Arc<ConnectionHub>,
}

struct HasConnections;

impl HasData for HasConnections {
    type Data<'a> = &'a mut ConnectionsState;
}

impl HostInterface for ConnectionsState {
    fn new(task: &TaskInit<'_>) -> ConnectionsState {
        ConnectionsState {
            plugin: task.ident.plugin.clone(),
            cancel: task.cancel.clone(),
            hub: task.connections.clone(),
        }
    }

    fn add_to_linker<T: Holds<Self> + Send + 'static>(
        linker: &mut Linker<T>,
    ) -> anyhow::Result<()> {
        wit::add_to_linker::<T, HasConnections>(linker, Holds::<ConnectionsState>::state)
            // Plugins built against 0.4.0, 0.3.0 or 0.2.0 import their own
            // version (0.1.0 had no connections).
            .and_then(|()| {
                crate::bindings::v0_4::taskhost::plugin::connections::add_to_linker::<
                    T,
                    HasConnections,
                >(linker, Holds::<ConnectionsState>::state)
            })
            .and_then(|()| {
                crate::bindings::v0_3::taskhost::plugin::connections::add_to_linker::<
                    T,
                    HasConnections,
                >(linker, Holds::<ConnectionsState>::state)
            })
            .and_then(|()| {
                crate::bindings::v0_2::taskhost::plugin::connections::add_to_linker::<
                    T,
                    HasConnections,
                >(linker, Holds::<ConnectionsState>::state)
            })
            .map_err(|e| {
                anyhow::anyhow!("cannot add the connections interface to the linker: {e:#}")
            })
    }
}

impl ConnectionsState {
    /// The connection (none: it is over) and the caller's signal, owned:
    /// the call's future must not borrow the store's data across an await.
    fn target(&self, id: u64) -> Result<(Option<Arc<Connection>>, Arc<CancelSignal>), GuestError> {
        Ok((self.hub.get(id, &self.plugin)?, self.cancel.clone()))
    }
}

fn closed(id: u64) -> GuestError {
    GuestError::Failed(format!("connection {id} is closed"))
}

impl wit::Host for ConnectionsState {
    async fn recv(&mut self, id: u64) -> wasmtime::Result<Result<Option<Message>, GuestError>> {
        Ok(match self.target(id) {
            Ok((Some(connection), cancel)) => connection.recv(&cancel).await,
            Ok((None, _)) => Ok(None),
            Err(error) => Err(error),
        })
    }

    async fn send(
        &mut self,
        id: u64,
        message: Message,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(match self.target(id) {
            Ok((Some(connection), cancel)) => connection.send(message, &cancel).await,
            Ok((None, _)) => Err(closed(id)),
            Err(error) => Err(error),
        })
    }

    async fn close(
        &mut self,
        id: u64,
        code: u16,
        reason: String,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        Ok(match self.target(id) {
            Ok((Some(connection), cancel)) => connection.close(code, reason, &cancel).await,
            Ok((None, _)) => Err(closed(id)),
            Err(error) => Err(error),
        })
    }
}

/// `connections` of an older WIT version (`$old`, its generated module),
/// which has the same functions and messages: the current functions, its
/// messages converted.
macro_rules! older_connections {
    ($old:path) => {
        const _: () = {
            use $old as old;

            fn message_from_old(message: old::Message) -> Message {
                match message {
                    old::Message::Text(text) => Message::Text(text),
                    old::Message::Binary(bytes) => Message::Binary(bytes),
                }
            }

            fn message_to_old(message: Message) -> old::Message {
                match message {
                    Message::Text(text) => old::Message::Text(text),
                    Message::Binary(bytes) => old::Message::Binary(bytes),
                }
            }

            impl old::Host for ConnectionsState {
                async fn recv(
                    &mut self,
                    id: u64,
                ) -> wasmtime::Result<Result<Option<old::Message>, GuestError>> {
                    let received = wit::Host::recv(self, id).await?;
                    Ok(received.map(|message| message.map(message_to_old)))
                }

                async fn send(
                    &mut self,
                    id: u64,
                    message: old::Message,
                ) -> wasmtime::Result<Result<(), GuestError>> {
                    wit::Host::send(self, id, message_from_old(message)).await
                }

                async fn close(
                    &mut self,
                    id: u64,
                    code: u16,
                    reason: String,
                ) -> wasmtime::Result<Result<(), GuestError>> {
                    wit::Host::close(self, id, code, reason).await
                }
            }
        };
    };
}

older_connections!(crate::bindings::v0_4::taskhost::plugin::connections);
older_connections!(crate::bindings::v0_3::taskhost::plugin::connections);
older_connections!(crate::bindings::v0_2::taskhost::plugin::connections);
