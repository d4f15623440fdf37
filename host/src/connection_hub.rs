//! The open websocket connections of the public listener, as tasks see
//! them: what the `connections` interface (`crate::connections`) calls.
//!
//! The listener (`crate::listener`) owns the socket; a [`Connection`] is
//! the two bounded queues between it and tasks, kept in the app's
//! [`ConnectionHub`] under the id the connection's task gets in its
//! arguments. Bounded both ways: a task that does not `recv` back-pressures
//! its client, and a client that does not read makes `send` wait, then is
//! dropped: the host never holds more than `send_buffer` messages of
//! `max_message_bytes` for one connection.

pub(crate) use crate::bindings::taskhost::plugin::connections::Message;
use crate::bindings::taskhost::plugin::types::Error as GuestError;
use crate::config::{Limit, LimitUnit};
use crate::task::CancelSignal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a task asks the listener to do with its connection.
#[derive(Debug)]
pub enum Outgoing {
    Message(Message),
    Close(u16, String),
}

impl Message {
    /// Its size in bytes (the text's UTF-8 or the binary's): what a route's
    /// `max_message_bytes` bounds.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
        }
    }

    /// Whether it holds no byte: an empty text or binary message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One open connection, as tasks see it.
pub struct Connection {
    pub id: u64,
    /// Only tasks of this plugin may use it.
    pub plugin: String,
    outgoing: mpsc::Sender<Outgoing>,
    /// One receiver at a time: a second `recv` waits its turn.
    incoming: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    max_message_bytes: usize,
    send_timeout: Duration,
    send_buffer: usize,
    /// Cancelled when `send` gave up on a full buffer: the listener drops
    /// the client.
    too_slow: CancellationToken,
}

/// The listener's ends of a [`Connection`]'s queues.
pub struct ConnectionEnds {
    pub outgoing: mpsc::Receiver<Outgoing>,
    pub incoming: mpsc::Sender<Message>,
    /// Cancelled once a task's `send` timed out on a full buffer.
    pub too_slow: CancellationToken,
}

/// How a connection's queues are bounded (from its route).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_message_bytes: usize,
    pub send_buffer: usize,
    pub send_timeout: Duration,
}

/// Messages from the client that wait for a `recv`; beyond them the
/// listener stops reading the socket, which back-pressures the client.
pub(crate) const RECEIVE_BUFFER: usize = 16;

/// Every open connection of the app, by id.
#[derive(Default)]
pub struct ConnectionHub {
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
    next_id: AtomicU64,
}

impl ConnectionHub {
    /// Registers a new connection for `plugin`'s tasks; returns it and the
    /// listener's ends of its queues.
    pub fn open(
        &self,
        plugin: &str,
        limits: ConnectionLimits,
    ) -> (Arc<Connection>, ConnectionEnds) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (out_tx, out_rx) = mpsc::channel(limits.send_buffer);
        let (in_tx, in_rx) = mpsc::channel(RECEIVE_BUFFER);
        let too_slow = CancellationToken::new();
        let connection = Arc::new(Connection {
            id,
            plugin: plugin.to_string(),
            outgoing: out_tx,
            incoming: tokio::sync::Mutex::new(in_rx),
            max_message_bytes: limits.max_message_bytes,
            send_timeout: limits.send_timeout,
            send_buffer: limits.send_buffer,
            too_slow: too_slow.clone(),
        });
        self.lock().insert(id, connection.clone());
        let ends = ConnectionEnds {
            outgoing: out_rx,
            incoming: in_tx,
            too_slow,
        };
        (connection, ends)
    }

    /// Forgets connection `id`: later calls naming it fail `not-found`.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connection `id`, if it is open and `plugin`'s. `Ok(None)`: it was
    /// open once and is over; an id never handed out, or one of another
    /// plugin's open connections, is `not-found`.
    pub(crate) fn get(&self, id: u64, plugin: &str) -> Result<Option<Arc<Connection>>, GuestError> {
        let not_found = || GuestError::NotFound(format!("connection {id}"));
        match self.lock().get(&id) {
            Some(connection) if connection.plugin == plugin => Ok(Some(connection.clone())),
            // Another plugin's: as if it did not exist.
            Some(_) => Err(not_found()),
            None if id >= 1 && id <= self.next_id.load(Ordering::Relaxed) => Ok(None),
            None => Err(not_found()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Connection>>> {
        // A panic while holding the map leaves it consistent (single
        // inserts and removes): keep serving.
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Connection {
    pub(crate) async fn recv(&self, cancel: &CancelSignal) -> Result<Option<Message>, GuestError> {
        if cancel.is_cancelled() {
            return Err(GuestError::Cancelled);
        }
        tokio::select! {
            message = async { self.incoming.lock().await.recv().await } => Ok(message),
            _ = cancel.cancelled() => Err(GuestError::Cancelled),
        }
    }

    async fn queue(&self, item: Outgoing, cancel: &CancelSignal) -> Result<(), GuestError> {
        if cancel.is_cancelled() {
            return Err(GuestError::Cancelled);
        }
        let closed = || GuestError::Failed(format!("connection {} is closed", self.id));
        let permit = match self.outgoing.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(closed()),
            Err(mpsc::error::TrySendError::Full(())) => {
                let waited = tokio::select! {
                    permit = tokio::time::timeout(self.send_timeout, self.outgoing.reserve()) => permit,
                    _ = cancel.cancelled() => return Err(GuestError::Cancelled),
                };
                match waited {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(closed()),
                    Err(_) => {
                        self.too_slow.cancel();
                        return Err(GuestError::Failed(format!(
                            "connection {} dropped: its client read too slowly (its send \
                             buffer of {} messages stayed full for {:?}; raise the route's \
                             `send_buffer` or `send_timeout`)",
                            self.id, self.send_buffer, self.send_timeout
                        )));
                    }
                }
            }
        };
        permit.send(item);
        Ok(())
    }

    pub(crate) async fn send(
        &self,
        message: Message,
        cancel: &CancelSignal,
    ) -> Result<(), GuestError> {
        if message.len() > self.max_message_bytes {
            let limit = Limit {
                what: format!("a message to connection {}", self.id),
                max: self.max_message_bytes as u64,
                got: message.len() as u64,
                unit: LimitUnit::Bytes,
                setting: None,
            };
            return Err(GuestError::Limit(format!(
                "{limit} (the route's `max_message_bytes`)"
            )));
        }
        self.queue(Outgoing::Message(message), cancel).await
    }

    pub(crate) async fn close(
        &self,
        code: u16,
        reason: String,
        cancel: &CancelSignal,
    ) -> Result<(), GuestError> {
        if !(code == 1000 || (3000..=4999).contains(&code)) {
            return Err(GuestError::InvalidArgs(format!(
                "close code {code}: use 1000 (normal) or 3000-4999 (the app's own)"
            )));
        }
        if reason.len() > 123 {
            return Err(GuestError::InvalidArgs(format!(
                "a close reason is at most 123 bytes (got {})",
                reason.len()
            )));
        }
        self.queue(Outgoing::Close(code, reason), cancel).await
    }
}
