//! Websocket connections of the host's public listener (`[[routes]]
//! websocket = "/path"` in app.toml). Each connection starts one task whose
//! `request` argument is a [`Request`]; [`Request::connection`] is the
//! connection, which any task of the plugin given its id may use too.
//!
//! ```no_run
//! # use taskhost_guest_sdk::*;
//! fn echo(app: &App, request: Request) -> Result<()> {
//!     let connection = request.connection()?;
//!     while let Some(message) = connection.recv()? {
//!         if message.as_text() == Some("bye") {
//!             connection.close(1000, "bye")?;
//!             break;
//!         }
//!         connection.send(message)?;
//!     }
//!     Ok(())
//! }
//! // Another task of the plugin reaches it by id (`Request`'s `connection`
//! // id, passed along as an argument):
//! fn notify(app: &App, connection: u64) -> Result<()> {
//!     Connection::new(connection).send("an update")
//! }
//! ```
//!
//! The client closing cancels the connection's task (its `recv` fails
//! with a cancelled [`Error`]); the task returning closes the connection.

use crate::__private::bindings::taskhost::plugin::connections as wit;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a route passes to its task as `request`: for a websocket route, the
/// connection and the request that opened it; for an HTTP route (a
/// webhook), the request with its method and body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    /// The connection's id (websocket routes).
    #[serde(rename = "connection")]
    pub connection_id: Option<u64>,
    pub path: String,
    /// The query string's pairs, decoded.
    pub query: BTreeMap<String, String>,
    /// The headers the route's `headers` lets through, lower case.
    pub headers: BTreeMap<String, String>,
    /// The client's address.
    pub remote: String,
    /// The method (HTTP routes).
    pub method: Option<String>,
    /// The body (HTTP routes): parsed JSON when the content type is JSON,
    /// else a JSON string of its text.
    pub body: Option<serde_json::Value>,
}

impl Request {
    /// The websocket connection; an error for an HTTP route's request.
    pub fn connection(&self) -> Result<Connection> {
        self.connection_id
            .map(Connection::new)
            .ok_or_else(|| Error::msg("this request has no websocket connection"))
    }
}

/// One websocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

impl Message {
    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
        }
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Message {
        Message::Text(text.to_string())
    }
}

impl From<String> for Message {
    fn from(text: String) -> Message {
        Message::Text(text)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Message {
        Message::Binary(bytes)
    }
}

/// A websocket connection of the host's listener, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    id: u64,
}

impl Connection {
    /// The connection `id` (from a [`Request`], or passed on by its task).
    pub fn new(id: u64) -> Connection {
        Connection { id }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the client's next message; `None` once the connection is
    /// over. Fails with a cancelled [`Error`] when the task is cancelled.
    pub fn recv(&self) -> Result<Option<Message>> {
        Ok(wit::recv(self.id)
            .map_err(Error::from_wit)?
            .map(|m| match m {
                wit::Message::Text(text) => Message::Text(text),
                wit::Message::Binary(bytes) => Message::Binary(bytes),
            }))
    }

    /// Queues a message for the client (waits while its buffer is full;
    /// fails once the client was dropped as too slow, or closed).
    pub fn send(&self, message: impl Into<Message>) -> Result<()> {
        let message = match message.into() {
            Message::Text(text) => wit::Message::Text(text),
            Message::Binary(bytes) => wit::Message::Binary(bytes),
        };
        wit::send(self.id, &message).map_err(Error::from_wit)
    }

    /// Closes the connection with `code` (1000, or 3000-4999) and `reason`
    /// once what was queued is sent.
    pub fn close(&self, code: u16, reason: &str) -> Result<()> {
        wit::close(self.id, code, reason).map_err(Error::from_wit)
    }
}
