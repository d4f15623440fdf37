//! A plugin in JavaScript: `plugins/js-examples`, built by `taskhost build`
//! (esbuild and componentize-js, installed by taskhost into its cache)
//! with the JavaScript SDK, run through the real binary.

use serde_json::{Value, json};
use taskhost_tests::{TestApp, hello_server};

fn app(extra: &str, tasks: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "js"
        workers = 2
        [plugins.js]
        path = "{{js-examples}}"
        {extra}
        [config]
        greeting = "hallo"
        {tasks}
        "#
    ))
}

fn task(factory: &str, name: &str, args: &str) -> String {
    format!(
        "[[tasks]]\nplugin = \"js\"\nfactory = \"{factory}\"\nname = \"{name}\"\nargs = {args}\n"
    )
}

#[test]
fn js_tasks_run_per_worker_with_typed_args_app_calls_fetch_and_stacks() {
    let address = hello_server();
    let run = app(
        &format!("[plugins.js.grants]\nhttp = [\"http://{address}\"]"),
        &[
            task("slow_work", "slow", "{ ms = 10 }"),
            task("auto_inject", "inject", "{}"),
            task("typed", "typed", r#"{ num = 7, label = "seven" }"#),
            task("plain_echo", "echo", "{ anything = [1, 2] }"),
            task("tour", "tour", "{}"),
            task("boom", "boom", "{}"),
            task("hog", "hog", "{ mb = 200 }"),
            task(
                "fetch_text",
                "fetch",
                &format!(r#"{{ url = "http://{address}/hello" }}"#),
            ),
            task(
                "fetch_text",
                "denied",
                r#"{ url = "http://127.0.0.1:9/nowhere" }"#,
            ),
        ]
        .concat(),
    )
    .run_until_idle();
    assert_eq!(run.code, Some(1), "boom fails the run\n{}", run.dump());
    // Startup tasks run once per worker.
    assert_eq!(run.messages("slow work done").len(), 2, "{}", run.dump());
    // An async task: its promise's value is the result.
    let mut injected = run.results_of("inject");
    injected.sort_by_key(|r| r["worker"].as_u64());
    assert_eq!(
        injected,
        vec![
            json!({"app": "js", "worker": 0, "greeting": "hallo"}),
            json!({"app": "js", "worker": 1, "greeting": "hallo"}),
        ]
    );
    assert_eq!(
        run.results_of("typed")[0],
        json!({"num": 7, "label": "seven", "flag": null})
    );
    assert_eq!(run.results_of("echo")[0], json!({"anything": [1, 2]}));
    // u64 ids arrive as plain numbers, errors as the SDK's classes.
    assert_eq!(
        run.results_of("tour")[0],
        json!({"seen": "running", "missing": "NotFound", "bad_args": "InvalidArgs",
               "cancelled": "cancelled", "woken": 0, "listed": true, "purged": true,
               "greeting": "hallo", "id_type": "number"}),
        "{}",
        run.dump()
    );
    // An uncaught error fails the task with its name, message and stack.
    let error = run.event_of("failed", "boom")[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with("TypeError: the js guest blew up") && error.contains("helperThatFails@"),
        "{error}"
    );
    // 200 MiB against the 64 MiB default: the guest catches out-of-memory.
    assert_eq!(
        run.results_of("hog")[0],
        json!("caught string: out of memory"),
        "{}",
        run.dump()
    );
    // fetch() goes through the host's wasi:http and its allow-list.
    assert_eq!(
        run.results_of("fetch")[0],
        json!({"status": 200, "body": "hello from the test server"}),
        "{}",
        run.dump()
    );
    let denied = run.event_of("failed", "denied");
    assert_eq!(denied.len(), 2, "{}", run.dump());
    let denials = run
        .lines
        .iter()
        .filter(|l| {
            l["message"].as_str().is_some_and(|m| {
                m.contains("http://127.0.0.1:9 denied") && m.contains("[plugins.js.grants] http")
            })
        })
        .count();
    assert!(denials >= 1, "the host says what to allow\n{}", run.dump());
}

#[test]
fn js_arguments_are_checked_by_name_and_type_before_anything_runs() {
    for (args, says) in [
        (
            r#"{ num = "x", label = "l" }"#,
            "factory typed: argument `num` must be an integer, got \"x\"",
        ),
        (
            r#"{ num = 1.5, label = "l" }"#,
            "must be an integer, got 1.5",
        ),
        (r#"{ num = 1 }"#, "missing argument `label`"),
        (
            r#"{ num = 1, label = "l", colour = "red" }"#,
            "unknown argument `colour` (it takes: flag, label, num)",
        ),
    ] {
        let check = app("", &task("typed", "typed", args)).check();
        assert_eq!(check.code, Some(2), "{args}: {}", check.dump());
        assert!(check.stderr.contains(says), "{args}: {}", check.stderr);
    }
    let check = app("", &task("no_such", "x", "{}")).check();
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains("slow_work"),
        "lists the factories: {}",
        check.stderr
    );
}

#[test]
fn a_js_cancel_runs_finally_even_when_caught_the_feed_cleans_up_and_a_loop_is_forced() {
    let app = app(
        "",
        &[
            task("sleeper", "sleeper", r#"{ marker = "m1" }"#),
            task("spinner", "spinner", "{}"),
            task("feed", "feed", r#"{ events = 100, event = "js.feed" }"#),
        ]
        .concat(),
    );
    let mut host = app.spawn();
    for name in ["spinner", "sleeper", "feed"] {
        host.wait_for(2, |l| l["event"] == "started" && l["task"] == name);
    }
    host.wait_for(2, |l| {
        l["event"] == "started"
            && l["task"]
                .as_str()
                .is_some_and(|t| t.starts_with("receiver:"))
    });
    // The sleeper catches the Cancelled error and returns normally: it
    // still ends cancelled (cooperatively), and its finally ran.
    let cancelled = app.cli(&["cancel", "sleeper", "--worker", "0", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);
    let ended: Value = serde_json::from_str(cancelled.stdout.trim()).unwrap();
    assert_eq!(ended[0]["state"], "cancelled", "{ended}");
    assert_eq!(ended[0]["cancel_stage"], "cooperative", "{ended}");
    let cleaned = app.cli(&["kv", "get", "js/cleanup", "m1"]);
    assert!(cleaned.stdout.contains("cleaned up"), "{}", cleaned.dump());
    // A message reaches both receivers; cancelling the feed cancels its
    // receiver in its finally.
    let sent = app.cli(&["dispatch", "message", "hi there", "--wait-for", "4"]);
    assert_eq!(sent.code, Some(0), "{}", sent.dump());
    host.wait_for(2, |l| l["message"] == "received hi there");
    let feed = app.cli(&["cancel", "feed", "--worker", "1", "--json"]);
    assert_eq!(feed.code, Some(0), "{}", feed.dump());
    host.wait_for(1, |l| {
        l["event"] == "cancelled"
            && l["worker"] == 1
            && l["task"]
                .as_str()
                .is_some_and(|t| t.starts_with("receiver:"))
    });
    // StarlingMonkey's snapshot is mapped copy-on-write, not copied.
    let plugins = app.cli(&["plugins", "--json"]);
    let plugins: Value = serde_json::from_str(plugins.stdout.trim()).unwrap();
    assert_eq!(plugins[0]["memory_image"], "copy_on_write", "{plugins}");
    let forced = app.cli(&["cancel", "spinner", "--worker", "0", "--json"]);
    let forced: Value = serde_json::from_str(forced.stdout.trim()).unwrap();
    assert_eq!(forced[0]["cancel_stage"], "forced", "{forced}");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.messages("caught Cancelled").len(), 2, "{}", run.dump());
}

/// The seed's websocket feed, written in JavaScript: the same session as the Rust one.
#[test]
fn a_js_feed_serves_the_seeds_websocket_session() {
    let app = app(
        r#"
        [[routes]]
        websocket = "/feed"
        plugin = "js"
        factory = "feed"
        "#,
        "",
    );
    let (mut host, address) = taskhost_tests::routes::start(&app);
    taskhost_tests::routes::seed_session(&app, &mut host, address, "/feed", 2);
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
}
