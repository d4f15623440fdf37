//! Helpers for tests of the public listener (`[[routes]]`): a host
//! started on a free port, a blocking websocket client, and the seed's
//! feed session that every guest language must pass.

use crate::{Api, Running, TestApp};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use taskhost::control::routes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

pub type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket client with a blocking face, so tests read top to bottom
/// beside the host's (blocking) log reader.
pub struct Client {
    pub runtime: tokio::runtime::Runtime,
    pub stream: Stream,
}

/// How long a test waits for any one thing from the host.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Client {
    pub fn connect(address: SocketAddr, path: &str) -> Result<Client, WsError> {
        let runtime = runtime();
        let url = format!("ws://{address}{path}");
        let (stream, _) = runtime.block_on(tokio_tungstenite::connect_async(url))?;
        Ok(Client { runtime, stream })
    }

    pub fn send(&mut self, text: &str) {
        self.runtime
            .block_on(self.stream.send(Message::text(text)))
            .unwrap();
    }

    /// The next text, binary or close message; none when the stream ended.
    pub fn receive(&mut self) -> Option<Message> {
        loop {
            let stream = &mut self.stream;
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(PATIENCE, stream.next()).await })
                .expect("the host answers in time");
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub fn text(&mut self) -> String {
        match self.receive() {
            Some(Message::Text(text)) => text.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Reads until the host's close frame: its code and reason.
    pub fn close_frame(&mut self) -> (u16, String) {
        loop {
            match self.receive() {
                Some(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Message::Close(None)) => return (1005, String::new()),
                Some(_) => continue,
                None => panic!("the connection ended without a close frame"),
            }
        }
    }

    pub fn close(&mut self) {
        self.runtime
            .block_on(self.stream.close(Some(
                tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: CloseCode::Normal,
                    reason: "bye".into(),
                },
            )))
            .unwrap();
    }
}

/// Starts the host with its listener on a free port: the host and the
/// listener's address.
pub fn start(app: &TestApp) -> (Running, SocketAddr) {
    let mut host = app.spawn_with(&["--listen", "127.0.0.1:0"]);
    let address = listen_address(&mut host);
    (host, address)
}

/// Waits until `host` serves its control API and its listener, and
/// returns the listener's address (from its log).
pub fn listen_address(host: &mut Running) -> SocketAddr {
    host.wait_until_serving();
    host.wait_for(1, |l| l["listen"].is_string());
    host.seen()
        .iter()
        .find_map(|l| l["listen"].as_str())
        .unwrap()
        .parse()
        .unwrap()
}

pub fn line(task: &str, event: &str) -> impl Fn(&Value) -> bool {
    let (task, event) = (task.to_string(), event.to_string());
    move |l: &Value| l["task"] == task.as_str() && l["event"] == event.as_str()
}

pub fn message(task: &str, text: &str) -> impl Fn(&Value) -> bool {
    let (task, text) = (task.to_string(), text.to_string());
    move |l: &Value| l["task"] == task.as_str() && l["message"] == text.as_str()
}

pub fn over(connection: u64) -> impl Fn(&Value) -> bool {
    move |l: &Value| {
        l["connection"] == connection
            && l["message"].as_str().is_some_and(|m| m.contains(" over ("))
    }
}

/// Dispatches `event` once a task waits for it (the API's `wait_for`):
/// a dispatch that wakes nobody is lost, as in Sanic.
pub fn dispatch_heard(api: &Api, event: &str) {
    let woken = api.post(
        &routes::DISPATCH.path_with(&[event]),
        serde_json::json!({ "payload": "", "wait_for": 1 }),
    );
    assert_eq!(woken["woken"], 1, "{woken}");
}

/// The seed's session against a `feed` factory on `path` (any guest
/// language): connect, get "A message" per dispatch of `my.custom.event`
/// (`events` times), send two messages the receiver logs, close; then the
/// connection's task and its receiver were both cancelled cooperatively
/// and nothing is left in the registry. Leaves the host running.
pub fn seed_session(
    app: &TestApp,
    host: &mut Running,
    address: SocketAddr,
    path: &str,
    events: usize,
) -> u64 {
    let (api, _) = Api::of(app);
    let mut client = Client::connect(address, path).unwrap();
    let connection = {
        host.wait_for(1, |l| l["connection"].is_u64() && l["route"].is_string());
        host.seen()
            .iter()
            .rev()
            .find_map(|l| l["connection"].as_u64())
            .unwrap()
    };
    let (task, receiver) = (format!("ws:{connection}"), format!("receiver:{connection}"));
    host.wait_for(1, line(&receiver, "started"));
    for _ in 0..events {
        dispatch_heard(&api, "my.custom.event");
        assert_eq!(client.text(), "A message");
    }
    client.send("first");
    client.send("second");
    host.wait_for(1, message(&receiver, "received first"));
    host.wait_for(1, message(&receiver, "received second"));
    client.close();
    // The host answers the close: a clean handshake, not a dropped socket.
    assert!(
        matches!(client.receive(), Some(Message::Close(Some(_)))),
        "the host did not answer the close"
    );
    host.wait_for(1, over(connection));
    for name in [&task, &receiver] {
        let ended = host
            .seen()
            .iter()
            .find(|l| l["task"] == name.as_str() && l["event"] == "cancelled")
            .unwrap_or_else(|| panic!("{name} was not cancelled"));
        assert_eq!(ended["stage"], "cooperative", "{ended}");
    }
    // The connection's task's lifecycle lines carry its connection id.
    let started = host
        .seen()
        .iter()
        .find(|l| l["task"] == task.as_str() && l["event"] == "started")
        .unwrap();
    assert_eq!(started["connection"], connection, "{started}");
    let tasks = api.get(routes::LIST_TASKS.path);
    assert_eq!(
        tasks,
        serde_json::json!([]),
        "the connection left tasks behind"
    );
    connection
}
