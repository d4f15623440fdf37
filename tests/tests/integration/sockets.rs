//! TCP from tasks (`[plugins.NAME.grants] tcp`), against a real TCP server
//! on 127.0.0.1 that the test starts: granted addresses and names answer,
//! anything else is refused with a host log line naming the grant and what
//! to add; sockets are counted against `sockets_per_task` and closed with
//! their task; a cancel ends a task blocked in a read cooperatively.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use taskhost_tests::{Run, TestApp};

/// What the server saw.
enum Seen {
    /// A line `hold`: it never answers that connection.
    Holding,
    /// A connection the client closed.
    Closed,
}

/// A loopback line server: answers `echo: LINE` to each line, except
/// `hold`, which it reports and never answers. Reports each connection
/// the client closes.
fn server() -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let (seen, events) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stream.try_clone().unwrap()).lines();
                while let Some(Ok(line)) = lines.next() {
                    if line == "hold" {
                        let _ = seen.send(Seen::Holding);
                        continue;
                    }
                    let _ = writeln!(stream, "echo: {line}");
                }
                let _ = seen.send(Seen::Closed);
            });
        }
    });
    (address, events)
}

fn app(grants: &str, limits: &str, tasks: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "sockets"
        cancel_grace_ms = 5000
        [limits]
        {limits}
        [plugins.kit]
        path = "{{testkit}}"
        [plugins.kit.grants]
        {grants}
        [plugins.plain]
        path = "{{testkit}}"
        {tasks}
        "#
    ))
}

fn task(plugin: &str, name: &str, factory: &str, args: Value) -> String {
    format!(
        r#"
        [[tasks]]
        plugin = "{plugin}"
        factory = "{factory}"
        name = "{name}"
        args = {args}
        "#,
        args = toml_inline(&args),
    )
}

/// `args` as a TOML inline table.
fn toml_inline(args: &Value) -> String {
    let fields: Vec<String> = args
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn warning_about<'a>(run: &'a Run, task: &str) -> &'a str {
    run.lines
        .iter()
        .filter(|l| l["task"] == task && l["level"] == "WARN")
        .filter_map(|l| l["message"].as_str())
        .find(|m| m.contains("denied") || m.contains("refused") || m.contains("not granted"))
        .unwrap_or_else(|| panic!("no refusal logged for {task}:\n{}", run.dump()))
}

#[test]
fn granted_addresses_and_names_answer_and_anything_else_is_refused_naming_the_grant() {
    let (address, _) = server();
    let port = address.port();
    let echo = |plugin: &str, name: &str, addr: String| {
        task(
            plugin,
            name,
            "tcp_echo",
            json!({"addr": addr, "send": name}),
        )
    };
    let tasks = [
        echo("kit", "direct", format!("127.0.0.1:{port}")),
        echo("kit", "named", format!("localhost:{port}")),
        echo("kit", "other_port", format!("127.0.0.1:{}", port ^ 1)),
        echo("kit", "other_name", format!("example.invalid:{port}")),
        echo("plain", "ungranted", format!("127.0.0.1:{port}")),
    ]
    .concat();
    let app = app(
        &format!(r#"tcp = ["127.0.0.1:{port}", "localhost:{port}"]"#),
        "",
        &tasks,
    );
    let run = app.run_until_idle();
    for name in ["direct", "named"] {
        assert_eq!(
            run.results_of(name),
            vec![json!({"reply": format!("echo: {name}")})],
            "{}",
            run.dump()
        );
    }
    // A port not granted: refused at connect, the log says what to add.
    let refused = warning_about(&run, "other_port");
    assert!(
        refused.contains(&format!(
            "TCP connect to 127.0.0.1:{} denied: not in [plugins.kit.grants] tcp",
            port ^ 1
        )),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("it grants 127.0.0.1:{port}, localhost:{port}")),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("add \"127.0.0.1:{}\"", port ^ 1)),
        "{refused}"
    );
    assert!(
        run.error_of("other_port").contains("connect to"),
        "{}",
        run.dump()
    );
    // A name not granted is not even looked up.
    let refused = warning_about(&run, "other_name");
    assert!(
        refused.contains("name lookup of \"example.invalid\" denied"),
        "{refused}"
    );
    run.error_of("other_name");
    // A plugin without the grant has no sockets at all.
    let refused = warning_about(&run, "ungranted");
    assert!(
        refused.contains("TCP sockets are not granted")
            && refused.contains("[plugins.plain.grants]"),
        "{refused}"
    );
    run.error_of("ungranted");
    // Refused tasks are not retried: the next attempt would be refused too.
    assert_eq!(run.events("retrying").len(), 0, "{}", run.dump());
}

#[test]
fn sockets_are_counted_against_the_tasks_limit_and_freed_when_closed() {
    let (address, _) = server();
    let addr = address.to_string();
    let tasks = [
        // Three at a time, four times over: closing frees each.
        task(
            "kit",
            "rounds",
            "tcp_hoard",
            json!({"addr": addr, "count": 3, "rounds": 4}),
        ),
        task(
            "kit",
            "greedy",
            "tcp_hoard",
            json!({"addr": addr, "count": 4, "rounds": 1}),
        ),
    ]
    .concat();
    let app = app(
        &format!(r#"tcp = ["{addr}"]"#),
        "sockets_per_task = 3",
        &tasks,
    );
    let run = app.run_until_idle();
    assert_eq!(
        run.results_of("rounds"),
        vec![json!({"opened": 12})],
        "{}",
        run.dump()
    );
    let greedy = &run.results_of("greedy")[0];
    assert_eq!(greedy["opened"], 3, "{}", run.dump());
    let warning = warning_about(&run, "greedy");
    assert!(warning.contains("[limits] sockets_per_task"), "{warning}");
}

#[test]
fn a_cancel_ends_a_task_blocked_in_a_read_cooperatively_and_closes_its_socket() {
    let (address, seen) = server();
    let app = app(&format!(r#"tcp = ["{address}"]"#), "", "");
    let host = app.spawn();
    let args = json!({"addr": address.to_string(), "send": "hold"}).to_string();
    let add = app.cli(&[
        "add", "kit", "tcp_echo", "--name", "reading", "--args", &args,
    ]);
    assert_eq!(add.code, Some(0), "{}", add.dump());
    // The server got the line and will never answer: the task is blocked
    // in its read.
    assert!(matches!(seen.recv().unwrap(), Seen::Holding));
    let cancelled = app.cli(&["cancel", "reading", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.dump());
    let ended: Value = serde_json::from_str(cancelled.stdout.trim()).unwrap();
    // Forcing would take the 5 s grace period and say `forced`.
    assert_eq!(ended[0]["state"], "cancelled", "{ended}");
    assert_eq!(ended[0]["cancel_stage"], "cooperative", "{ended}");
    // Its connection is closed with it.
    assert!(matches!(seen.recv().unwrap(), Seen::Closed));
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

#[test]
fn a_bad_tcp_grant_or_limit_is_refused_at_check_naming_it() {
    for (grants, limits, expected) in [
        (
            r#"tcp = ["127.0.0.1:5432", "db.internal"]"#,
            "",
            "[plugins.kit.grants] tcp[1]: \"db.internal\" is not a TCP address (no port); \
             write host:port",
        ),
        (
            r#"tcp = ["*.internal:6379"]"#,
            "",
            "tcp[0]: \"*.internal:6379\" is not a TCP address (a TCP grant names one host: no \
             wildcards)",
        ),
        (
            r#"tcp = ["db:5432", "DB:5432"]"#,
            "",
            "tcp[1]: db:5432 is granted twice",
        ),
        (
            r#"tcp = ["db:5432"]"#,
            "sockets_per_task = 0",
            "[limits] `sockets_per_task` must be at least 1",
        ),
    ] {
        let run = app(grants, limits, "").check();
        assert_eq!(run.code, Some(2), "{}", run.dump());
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.dump());
    }
}

/// `sockets_per_app` bounds the sockets of all tasks together (each is a
/// file descriptor of the host's), and `taskhost_sockets_open` counts
/// them: a task that ends gives its sockets back.
#[test]
fn sockets_are_counted_across_the_app_and_given_back_when_a_task_ends() {
    let (address, _) = server();
    let addr = address.to_string();
    let app = app(
        &format!(r#"tcp = ["{addr}"]"#),
        "sockets_per_task = 3\nsockets_per_app = 4",
        "",
    );
    let mut host = app.spawn();
    let hoard = |name: &str| {
        let args = json!({"addr": addr, "count": 3, "rounds": 1, "hold": "release"}).to_string();
        let add = app.cli(&["add", "kit", "tcp_hoard", "--name", name, "--args", &args]);
        assert_eq!(add.code, Some(0), "{}", add.dump());
    };
    hoard("first");
    host.wait_for(1, |l| l["task"] == "first" && l["message"] == "holding 3");
    assert_eq!(app.metric("taskhost_sockets_open"), Some(3.0));
    // One more fits in the app's four; the next is refused, naming the bound.
    hoard("second");
    host.wait_for(1, |l| {
        l["task"] == "second"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains("([limits] sockets_per_app)"))
    });
    host.wait_for(1, |l| l["task"] == "second" && l["event"] == "done");
    let done = host
        .seen()
        .iter()
        .find(|l| l["task"] == "second" && l["event"] == "done")
        .unwrap();
    assert_eq!(taskhost_tests::result_of(done)["opened"], 1, "{done}");
    let released = app.cli(&["dispatch", "release", "", "--wait-for", "1"]);
    assert_eq!(released.code, Some(0), "{}", released.dump());
    host.wait_for(1, |l| l["task"] == "first" && l["event"] == "done");
    app.await_metric("taskhost_sockets_open", 0.0);
    // The app's sockets are free again.
    hoard("third");
    host.wait_for(1, |l| l["task"] == "third" && l["message"] == "holding 3");
    let released = app.cli(&["dispatch", "release", "", "--wait-for", "1"]);
    assert_eq!(released.code, Some(0), "{}", released.dump());
    host.wait_for(1, |l| l["task"] == "third" && l["event"] == "done");
    app.await_metric("taskhost_sockets_open", 0.0);
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}
