//! Websocket routes, against the real binary on 127.0.0.1 with a real
//! websocket client (tokio-tungstenite): the seed's feed and receiver, the
//! close codes of a task's end and of shutdown, a client that never reads,
//! and the limits.

use futures_util::{SinkExt, StreamExt};
use taskhost::control::routes;
use taskhost_tests::routes::{Client, PATIENCE, Stream, line, over, runtime, seed_session, start};
use taskhost_tests::{Api, Running, TestApp};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

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

/// The probe route with `settings` of its own (`send_buffer = 16`, ...).
fn probe_with(settings: &str) -> String {
    format!("{PROBE}{settings}\n")
}

/// Stops the host as an operator would and expects a clean exit.
fn stop(host: Running) {
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
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
    assert_eq!(seed_session(&app, &mut host, address, "/feed?room=1", 3), 1);
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
    // Issue 24, item 5: what the closed connection's task held goes back
    // to the kernel as after a purge (before, only a purge trimmed).
    app.await_metric("taskhost_heap_trims_total", 1.0);
    // Item 6: `ws:` names are the connections' own. Before, a task of any
    // plugin could take `ws:N` and make connection N close with 1011.
    let (status, refused) = api.post_any(
        routes::SUBMIT.path,
        serde_json::json!({"plugin": "kit", "factory": "nap", "name": "ws:2", "args": {"ms": 1}}),
    );
    assert_eq!(status, 400, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("`ws:`"), "{message}");
    assert!(message.contains("\"ws:2\""), "{message}");
    stop(host);
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

    // A close the task queued before returning is the one the client gets,
    // after what it sent first.
    let mut last = Client::connect(address, "/probe?mode=close_and_return").unwrap();
    assert_eq!(last.text(), "last words");
    assert_eq!(last.close_frame(), (4001, "closed by the task".into()));

    let mut closes = Client::connect(address, "/probe?mode=close").unwrap();
    assert_eq!(closes.close_frame(), (4000, "done here".into()));
    // The task lives on until the connection is over, then is cancelled.
    host.wait_for(1, over(4));

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
        &probe_with("send_buffer = 16\nsend_timeout = \"500ms\""),
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
    stop(host);
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
    stop(host);
}

#[test]
fn a_client_that_answers_no_ping_is_closed_after_the_idle_timeout() {
    let app = app("", &probe_with(r#"idle_timeout = "600ms""#));
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
        match quiet.receive() {
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
    stop(host);
}

#[test]
fn a_thousand_connections_each_with_its_task_are_all_served() {
    const CONNECTIONS: usize = 1000;
    let app = app("", PROBE);
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
    let tasks = api.get(routes::LIST_TASKS.path);
    assert_eq!(tasks.as_array().map(Vec::len), Some(0), "{tasks}");
    stop(host);
}

#[test]
fn a_connection_whose_task_cannot_start_for_a_limit_is_told_to_try_again_later() {
    let app = app("[limits]\ntasks_per_worker = 1\n", PROBE);
    let (mut host, address) = start(&app);
    // Connections go to the workers in turn: one idle task fills each.
    let _first = Client::connect(address, "/probe?mode=idle").unwrap();
    let _second = Client::connect(address, "/probe?mode=idle").unwrap();
    host.wait_for(1, line("ws:1", "started"));
    host.wait_for(1, line("ws:2", "started"));
    let mut refused = Client::connect(address, "/probe?mode=idle").unwrap();
    assert_eq!(refused.close_frame(), (1013, "try again later".into()));
    host.wait_for(1, |l| {
        l["connection"] == 3
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not start") && m.contains("tasks_per_worker"))
    });
    stop(host);
}
