//! Websocket routes, against the real binary on 127.0.0.1 with a real
//! websocket client (tokio-tungstenite): the seed's feed and receiver, the
//! close codes of a task's end and of shutdown, a client that never reads,
//! and the limits.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use taskhost_tests::{Api, Running, TestApp};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket client with a blocking face, so tests read top to bottom
/// beside the host's (blocking) log reader.
struct Client {
    runtime: tokio::runtime::Runtime,
    stream: Stream,
}

/// How long a test waits for any one thing from the host.
const PATIENCE: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Client {
    fn connect(address: SocketAddr, path: &str) -> Result<Client, WsError> {
        let runtime = runtime();
        let url = format!("ws://{address}{path}");
        let (stream, _) = runtime.block_on(tokio_tungstenite::connect_async(url))?;
        Ok(Client { runtime, stream })
    }

    fn send(&mut self, text: &str) {
        self.runtime
            .block_on(self.stream.send(Message::text(text)))
            .unwrap();
    }

    /// The next text, binary or close message; none when the stream ended.
    fn next(&mut self) -> Option<Message> {
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

    fn text(&mut self) -> String {
        match self.next() {
            Some(Message::Text(text)) => text.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Reads until the host's close frame: its code and reason.
    fn close_frame(&mut self) -> (u16, String) {
        loop {
            match self.next() {
                Some(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Message::Close(None)) => return (1005, String::new()),
                Some(_) => continue,
                None => panic!("the connection ended without a close frame"),
            }
        }
    }

    fn close(&mut self) {
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

fn app(settings: &str, routes: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "sockets"
        workers = 2
        cancel_grace_ms = 2000
        {settings}
        [plugins.examples]
        path = "{{examples}}"
        [plugins.kit]
        path = "{{testkit}}"
        {routes}
        "#
    ))
}

const PROBE: &str = r#"
    [[routes]]
    websocket = "/probe"
    plugin = "kit"
    factory = "ws_probe"
"#;

/// Starts the host with its listener on a free port: the host and the
/// listener's address.
fn start(app: &TestApp) -> (Running, SocketAddr) {
    let mut host = app.spawn_with(&["--listen", "127.0.0.1:0"]);
    host.wait_until_serving();
    host.wait_for(1, |l| l["listen"].is_string());
    let address = host
        .seen()
        .iter()
        .find_map(|l| l["listen"].as_str())
        .unwrap()
        .parse()
        .unwrap();
    (host, address)
}

fn line(task: &str, event: &str) -> impl Fn(&Value) -> bool {
    let (task, event) = (task.to_string(), event.to_string());
    move |l: &Value| l["task"] == task.as_str() && l["event"] == event.as_str()
}

fn message(task: &str, text: &str) -> impl Fn(&Value) -> bool {
    let (task, text) = (task.to_string(), text.to_string());
    move |l: &Value| l["task"] == task.as_str() && l["message"] == text.as_str()
}

fn over(connection: u64) -> impl Fn(&Value) -> bool {
    move |l: &Value| {
        l["connection"] == connection
            && l["message"].as_str().is_some_and(|m| m.contains(" over ("))
    }
}

/// Dispatches `event` once a task waits for it (the API's `wait_for`):
/// a dispatch that wakes nobody is lost, as in Sanic.
fn dispatch_heard(api: &Api, event: &str) {
    let woken = api.post(
        &format!("/v1/events/{event}"),
        serde_json::json!({ "payload": "", "wait_for": 1 }),
    );
    assert_eq!(woken["woken"], 1, "{woken}");
}

#[test]
fn the_seeds_feed_sends_on_each_event_its_receiver_logs_and_closing_cleans_up_everything() {
    let app = app(
        "",
        r#"
        [[routes]]
        websocket = "/feed"
        plugin = "examples"
        factory = "feed"
        "#,
    );
    let (mut host, address) = start(&app);
    let (api, _) = Api::of(&app);
    let mut client = Client::connect(address, "/feed?room=1").unwrap();
    host.wait_for(1, line("receiver:1", "started"));
    for _ in 0..3 {
        dispatch_heard(&api, "my.custom.event");
        assert_eq!(client.text(), "A message");
    }
    client.send("first");
    client.send("second");
    host.wait_for(1, message("receiver:1", "received first"));
    host.wait_for(1, message("receiver:1", "received second"));

    client.close();
    // The host answers the close: a clean handshake, not a dropped socket.
    assert!(
        matches!(client.next(), Some(Message::Close(Some(_)))),
        "the host did not answer the close"
    );
    host.wait_for(1, over(1));
    let ended = |task: &str| {
        host.seen()
            .iter()
            .find(|l| l["task"] == task && l["event"] == "cancelled")
            .unwrap_or_else(|| panic!("{task} was not cancelled"))["stage"]
            .clone()
    };
    assert_eq!(ended("ws:1"), "cooperative");
    assert_eq!(ended("receiver:1"), "cooperative");
    let tasks = app.cli(&["tasks", "--json"]);
    assert_eq!(tasks.code, Some(0), "{}", tasks.dump());
    let tasks: Vec<Value> = serde_json::from_str(&tasks.stdout).unwrap();
    assert!(tasks.is_empty(), "{tasks:?}");

    let metrics = api.get_text("/metrics");
    assert!(
        metrics.contains(
            r#"taskhost_connection_messages_total{route="websocket /feed",direction="in"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"taskhost_connection_messages_total{route="websocket /feed",direction="out"} 3"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"taskhost_connections_open{route="websocket /feed"} 0"#),
        "{metrics}"
    );
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

#[test]
fn a_task_that_returns_closes_normally_one_that_traps_closes_with_an_error_and_shutdown_says_going_away()
 {
    let app = app("", PROBE);
    let (mut host, address) = start(&app);

    let mut returns = Client::connect(address, "/probe?mode=return").unwrap();
    assert_eq!(returns.text(), "hello");
    assert_eq!(returns.close_frame(), (1000, "the task ended".into()));

    let mut traps = Client::connect(address, "/probe?mode=trap").unwrap();
    assert_eq!(traps.text(), "hello");
    assert_eq!(traps.close_frame(), (1011, "the task failed".into()));

    let mut closes = Client::connect(address, "/probe?mode=close").unwrap();
    assert_eq!(closes.close_frame(), (4000, "done here".into()));
    // The task lives on until the connection is over, then is cancelled.
    host.wait_for(1, over(3));

    let mut echoes: Vec<Client> = (0..3)
        .map(|_| Client::connect(address, "/probe?mode=echo").unwrap())
        .collect();
    for (i, client) in echoes.iter_mut().enumerate() {
        client.send(&format!("ping {i}"));
        assert_eq!(client.text(), format!("ping {i}"));
    }
    host.signal("TERM");
    for client in &mut echoes {
        assert_eq!(client.close_frame(), (1001, "going away".into()));
    }
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    // Each echo task was cancelled and ran its cleanup.
    assert_eq!(run.messages("echo cleanup").len(), 3, "{}", run.dump());
}

/// The host's resident memory, from /proc.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_client_that_never_reads_is_dropped_when_its_buffer_stays_full_and_memory_stays_bounded() {
    let app = app(
        "",
        r#"
        [[routes]]
        websocket = "/probe"
        plugin = "kit"
        factory = "ws_probe"
        send_buffer = 16
        send_timeout = "500ms"
        "#,
    );
    let (mut host, address) = start(&app);
    let (api, pid) = Api::of(&app);
    // Warm up: one connection's worth of everything allocated once.
    let mut warm = Client::connect(address, "/probe?mode=return").unwrap();
    assert_eq!(warm.text(), "hello");
    host.wait_for(1, over(1));
    let before = resident_kib(pid);

    // 1,000 messages of 64 KiB: 64 MiB if the host kept them.
    let _silent = Client::connect(address, "/probe?mode=flood&count=1000&bytes=65536").unwrap();
    host.wait_for(1, line("ws:2", "failed"));
    host.wait_for(1, over(2));
    let grown = resident_kib(pid).saturating_sub(before);
    let failed = host
        .seen()
        .iter()
        .find(|l| l["task"] == "ws:2" && l["event"] == "failed")
        .unwrap()
        .clone();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("connection 2 dropped: its client read too slowly"),
        "{failed}"
    );
    assert!(
        grown < 24 * 1024,
        "the host grew by {grown} KiB holding a slow client's messages"
    );
    let metrics = api.get_text("/metrics");
    assert!(
        metrics.contains(
            r#"taskhost_connections_dropped_total{route="websocket /probe",reason="slow"} 1"#
        ),
        "{metrics}"
    );
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

#[test]
fn connection_and_message_limits_answer_with_503_and_1009() {
    let app = app(
        "[listen]\nmax_connections = 3",
        r#"
        [[routes]]
        websocket = "/probe"
        plugin = "kit"
        factory = "ws_probe"
        max_connections = 2
        max_message_bytes = 1024
        [[routes]]
        websocket = "/other"
        plugin = "kit"
        factory = "ws_probe"
        "#,
    );
    let (mut host, address) = start(&app);
    let _first = Client::connect(address, "/probe?mode=idle").unwrap();
    let mut second = Client::connect(address, "/probe?mode=echo").unwrap();
    let status = |error: WsError| match error {
        WsError::Http(response) => {
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body)
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    };
    let (code, body) = status(Client::connect(address, "/probe?mode=echo").err().unwrap());
    assert_eq!(code, 503);
    assert!(body.contains("`max_connections`"), "{body}");
    // The listener's own bound counts every route.
    let _third = Client::connect(address, "/other?mode=idle").unwrap();
    let (code, body) = status(Client::connect(address, "/other?mode=idle").err().unwrap());
    assert_eq!(code, 503);
    assert!(body.contains("[listen] `max_connections`"), "{body}");

    // Under the size limit a message is echoed; over it, 1009.
    second.send(&"x".repeat(1000));
    assert_eq!(second.text().len(), 1000);
    second.send(&"x".repeat(2000));
    assert_eq!(second.close_frame().0, 1009);
    host.wait_for(1, over(2));
    // And a task's own message over the limit is refused with `limit`.
    let mut oversize = Client::connect(address, "/probe?mode=oversize&bytes=4096").unwrap();
    let refusal = oversize.text();
    assert!(refusal.contains("4096"), "{refusal}");
    assert!(refusal.contains("`max_message_bytes`"), "{refusal}");

    // A plain GET on a websocket route is told what it is.
    let plain = ureq::get(&format!("http://{address}/probe")).call();
    match plain {
        Err(ureq::Error::Status(426, _)) => {}
        other => panic!("expected 426, got {other:?}"),
    }
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

#[test]
fn a_client_that_answers_no_ping_is_closed_after_the_idle_timeout() {
    let app = app(
        "",
        r#"
        [[routes]]
        websocket = "/probe"
        plugin = "kit"
        factory = "ws_probe"
        idle_timeout = "600ms"
        "#,
    );
    let (mut host, address) = start(&app);
    // Never polled until the host gave up on it: no pong goes back.
    let mut quiet = Client::connect(address, "/probe?mode=idle").unwrap();
    host.wait_for(1, over(1));
    let idle = host.seen().iter().find(|l| over(1)(l)).unwrap().clone();
    assert!(
        idle["message"].as_str().unwrap().contains("idle timeout"),
        "{idle}"
    );
    // The client finds a 1001 close, unless the pong it owes the host's
    // pings reached a socket already closed, whose reset then discards what
    // was left to read: either way, its connection is over.
    loop {
        match quiet.next() {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1001);
                assert_eq!(frame.reason.as_str(), "idle timeout");
                break;
            }
            Some(Message::Close(None)) => panic!("a close without the code"),
            Some(_) => continue,
            None => break,
        }
    }
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

#[test]
fn a_thousand_connections_each_with_its_task_are_all_served() {
    const CONNECTIONS: usize = 1000;
    let app = app(
        "",
        r#"
        [[routes]]
        websocket = "/probe"
        plugin = "kit"
        factory = "ws_probe"
        "#,
    );
    let (mut host, address) = start(&app);
    let runtime = runtime();
    let echoed = runtime.block_on(async {
        let url = format!("ws://{address}/probe?mode=echo");
        let connects = (0..CONNECTIONS).map(|_| tokio_tungstenite::connect_async(url.clone()));
        let mut streams: Vec<Stream> = futures_util::future::join_all(connects)
            .await
            .into_iter()
            .map(|r| r.expect("connected").0)
            .collect();
        // All open at once: each echoes through its own task.
        let mut echoed = 0;
        for (i, stream) in streams.iter_mut().enumerate() {
            stream.send(Message::text(format!("{i}"))).await.unwrap();
        }
        for (i, stream) in streams.iter_mut().enumerate() {
            loop {
                match tokio::time::timeout(PATIENCE, stream.next()).await.unwrap() {
                    Some(Ok(Message::Text(text))) => {
                        assert_eq!(text.as_str(), i.to_string());
                        echoed += 1;
                        break;
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("connection {i}: {other:?}"),
                }
            }
        }
        for stream in &mut streams {
            stream.close(None).await.unwrap();
        }
        echoed
    });
    assert_eq!(echoed, CONNECTIONS);
    host.wait_for(CONNECTIONS, |l| {
        l["message"].as_str().is_some_and(|m| m.contains(" over ("))
    });
    let (api, _) = Api::of(&app);
    let tasks = api.get("/v1/tasks");
    assert_eq!(tasks.as_array().map(Vec::len), Some(0), "{tasks}");
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}
