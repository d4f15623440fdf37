//! Key-value state through `wasi:keyvalue`: it outlives the instance and
//! the host (a restart, `kill -9` right after a write returned), stays
//! with its plugin unless a shared bucket is granted, holds under two
//! workers writing one key, and refuses writes over `[limits]` by name.

use serde_json::{Value, json};
use taskhost::control::routes;
use taskhost_tests::{Run, TestApp};

/// An app of two plugins built from the same testkit, `kit` and `other`,
/// running `tasks` (TOML), with `extra` tables in front of them.
fn app_toml(extra: &str, tasks: &str) -> String {
    format!(
        r#"
        name = "stateful"
        workers = 1
        [plugins.kit]
        path = "{{testkit}}"
        [plugins.other]
        path = "{{testkit}}"
        [plugins.examples]
        path = "{{examples}}"
        {extra}
        {tasks}
        "#
    )
}

/// A `[[tasks]]` entry of testkit's `kv` factory.
fn kv_task(plugin: &str, name: &str, args: &str) -> String {
    format!(
        r#"
        [[tasks]]
        plugin = "{plugin}"
        factory = "kv"
        name = "{name}"
        args = {{ {args} }}
        "#
    )
}

/// `examples/kv_counter` counting key `n` of bucket `default` to `times`
/// (task `count`), beside a sleeper that keeps the host running.
fn counting_and_kept_running(times: u32) -> String {
    format!(
        r#"
        [[tasks]]
        plugin = "examples"
        factory = "kv_counter"
        name = "count"
        args = {{ key = "n", times = {times} }}
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "keep-running"
        args = {{ ms = 600000 }}
        "#
    )
}

fn run(app: &TestApp) -> Run {
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run
}

fn result(run: &Run, task: &str) -> Value {
    let results = run.results_of(task);
    assert_eq!(results.len(), 1, "{task}: {}", run.dump());
    results[0].clone()
}

#[test]
fn values_survive_a_restart_and_stay_with_their_plugin() {
    let write = kv_task(
        "kit",
        "write",
        r#"bucket = "b", op = "set", key = "greeting", value = { text = "hello" }"#,
    );
    let app = TestApp::new(&app_toml("", &write));
    run(&app);

    let reads = [
        kv_task(
            "kit",
            "mine",
            r#"bucket = "b", op = "get", key = "greeting""#,
        ),
        kv_task(
            "other",
            "theirs",
            r#"bucket = "b", op = "get", key = "greeting""#,
        ),
        kv_task("other", "their-keys", r#"bucket = "b", op = "keys""#),
    ]
    .concat();
    app.rewrite(&app_toml("", &reads));
    let after = run(&app);
    assert_eq!(result(&after, "mine"), json!({"text": "hello"}));
    assert_eq!(result(&after, "theirs"), Value::Null, "plugins are apart");
    assert_eq!(result(&after, "their-keys"), json!([]));
    assert!(
        app.dir.path().join(".taskhost/taskhost.sqlite3").is_file(),
        "the default storage is beside app.toml"
    );
}

#[test]
fn a_granted_shared_bucket_is_seen_by_both_plugins_and_only_them() {
    let grants = r#"
        [plugins.kit.grants]
        kv = ["feeds"]
        [plugins.other.grants]
        kv = ["feeds"]
    "#;
    let main_write = r#"
        [[tasks]]
        plugin = "kit"
        factory = "kv"
        name = "write"
        scope = "main"
        args = { bucket = "feeds", op = "set", key = "latest", value = 7 }
    "#;
    let tasks = [
        main_write.to_string(),
        kv_task(
            "other",
            "read",
            r#"bucket = "feeds", op = "get", key = "latest""#,
        ),
    ]
    .concat();
    let app = TestApp::new(&app_toml(grants, &tasks));
    let granted = run(&app);
    assert_eq!(result(&granted, "read"), json!(7));

    // Without the grant, `feeds` is the plugin's own (empty) bucket.
    app.rewrite(&app_toml(
        "",
        &kv_task(
            "other",
            "read",
            r#"bucket = "feeds", op = "get", key = "latest""#,
        ),
    ));
    assert_eq!(result(&run(&app), "read"), Value::Null);
}

#[test]
fn an_acknowledged_write_survives_kill_9() {
    let app = TestApp::new(&app_toml("", &counting_and_kept_running(300)));
    let mut host = app.spawn_with(&[]);
    // `done` is logged after the factory returned, so after its last
    // increment was acknowledged.
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "count");
    host.signal("KILL");
    let killed = host.finish();
    assert_eq!(killed.code, None, "killed by the signal: {}", killed.dump());

    // The counter is the examples plugin's: read it as that plugin would.
    app.rewrite(&app_toml(
        "",
        r#"
        [[tasks]]
        plugin = "examples"
        factory = "kv_counter"
        name = "read"
        args = { key = "n", times = 0 }
        "#,
    ));
    assert_eq!(result(&run(&app), "read"), json!(300));
}

#[test]
fn two_workers_adding_to_one_key_a_thousand_times_each_end_at_two_thousand() {
    let tasks = [
        kv_task(
            "kit",
            "increment",
            r#"bucket = "c", op = "increment", key = "n", times = 1000"#,
        ),
        kv_task(
            "kit",
            "swap",
            r#"bucket = "c", op = "update_add", key = "m", delta = 1, times = 1000"#,
        ),
    ]
    .concat();
    let app = TestApp::new(&app_toml("", &tasks).replace("workers = 1", "workers = 2"));
    let both = run(&app);
    // Worker-scope tasks run once per worker: two of each.
    let mut last: Vec<Value> = both.results_of("increment");
    last.sort_by_key(|v| v.as_i64());
    assert_eq!(last.len(), 2, "{}", both.dump());
    assert_eq!(last[1], json!(2000), "{}", both.dump());
    let mut swapped: Vec<Value> = both.results_of("swap");
    swapped.sort_by_key(|v| v.as_i64());
    assert_eq!(swapped[1], json!(2000), "{}", both.dump());

    app.rewrite(&app_toml(
        "",
        &[
            kv_task("kit", "n", r#"bucket = "c", op = "get", key = "n""#),
            kv_task("kit", "m", r#"bucket = "c", op = "get", key = "m""#),
        ]
        .concat(),
    ));
    let read = run(&app);
    assert_eq!(
        (result(&read, "n"), result(&read, "m")),
        (json!(2000), json!(2000))
    );
}

#[test]
fn writes_over_a_limit_fail_with_limit_naming_the_setting_and_write_nothing() {
    let limits = r#"
        [limits]
        kv_value_bytes = 100
        kv_keys_per_bucket = 2
    "#;
    let tasks = [
        kv_task(
            "kit",
            "big",
            r#"bucket = "l", op = "set_size", key = "big", size = 101"#,
        ),
        kv_task(
            "kit",
            "fits",
            r#"bucket = "m", op = "set_size", key = "a", size = 100"#,
        ),
    ]
    .concat();
    let app = TestApp::new(&app_toml(limits, &tasks));
    let first = app.run_until_idle();
    let failed = first.event_of("failed", "big");
    assert_eq!(failed.len(), 1, "{}", first.dump());
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("kv_value_bytes") && error.contains("at most 100 bytes, got 101"),
        "{error}"
    );
    assert!(
        first.lines.iter().any(|l| {
            l["message"].as_str().is_some_and(|m| {
                m.contains("key-value write refused") && m.contains("kv_value_bytes")
            })
        }),
        "the host log says so too: {}",
        first.dump()
    );
    assert_eq!(result(&first, "fits"), json!(true));

    let tasks = [
        r#"
        [[tasks]]
        plugin = "kit"
        factory = "kv"
        name = "fill"
        scope = "main"
        args = { bucket = "m", op = "set", key = "b", value = 1 }
        "#
        .to_string(),
        kv_task(
            "kit",
            "third",
            r#"bucket = "m", op = "set", key = "c", value = 1"#,
        ),
        kv_task(
            "kit",
            "absent",
            r#"bucket = "l", op = "exists", key = "big""#,
        ),
    ]
    .concat();
    app.rewrite(&app_toml(limits, &tasks));
    let second = app.run_until_idle();
    let failed = second.event_of("failed", "third");
    assert_eq!(failed.len(), 1, "{}", second.dump());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("bucket kit/m may be at most 2 keys, got 3 ([limits] kv_keys_per_bucket)"),
        "{}",
        second.dump()
    );
    assert_eq!(result(&second, "absent"), json!(false));
}

#[test]
fn compare_and_swap_writes_only_over_the_value_it_expects() {
    let app = TestApp::new(&app_toml("", ""));
    // One run per step: tasks of one run may run in any order.
    for (args, answer) in [
        (r#"op = "cas", value = 1"#, json!(true)),
        (r#"op = "cas", value = 2"#, json!(false)),
        (r#"op = "cas", expected = 5, value = 3"#, json!(false)),
        (r#"op = "cas", expected = 1, value = 4"#, json!(true)),
        (r#"op = "get""#, json!(4)),
    ] {
        let task = kv_task(
            "kit",
            "step",
            &format!(r#"bucket = "s", key = "k", {args}"#),
        );
        app.rewrite(&app_toml("", &task));
        assert_eq!(result(&run(&app), "step"), answer, "{args}");
    }
}

#[test]
fn kv_verbs_and_endpoints_inspect_and_repair_state() {
    let limits = "[limits]\nkv_value_bytes = 8";
    let app = TestApp::new(&app_toml(limits, &counting_and_kept_running(3)));
    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "count");
    let ok = |args: &[&str]| {
        let run = app.cli(args);
        assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
        run.stdout
    };

    let table = ok(&["kv", "list"]);
    assert!(
        table.starts_with("BUCKET") && table.contains("examples/default  1"),
        "{table}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&["kv", "list", "--json"])).unwrap(),
        json!([{"bucket": "examples/default", "keys": 1, "bytes": 2}])
    );
    assert_eq!(ok(&["kv", "list", "examples/default"]), "n\n");
    assert_eq!(ok(&["kv", "get", "examples/default", "n"]), "3\n");

    // Repair: set the counter, and the next task counts on from there.
    ok(&["kv", "set", "examples/default", "n", "41"]);
    ok(&[
        "add",
        "examples",
        "kv_counter",
        "--name",
        "again",
        "--args",
        r#"{"key": "n", "times": 1}"#,
    ]);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "again");
    let again = host
        .seen()
        .iter()
        .find(|l| l["event"] == "done" && l["task"] == "again")
        .map(taskhost_tests::result_of);
    assert_eq!(again, Some(json!(42)));

    // Over a limit: refused by name, nothing written.
    let refused = app.cli(&["kv", "set", "examples/default", "big", "123456789"]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("kv_value_bytes"),
        "{}",
        refused.stderr
    );
    let missing = app.cli(&["kv", "get", "examples/default", "big"]);
    assert_eq!(missing.code, Some(3), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("has no key \"big\""),
        "{}",
        missing.stderr
    );

    let bad = app.cli(&["kv", "list", "no such bucket"]);
    assert_eq!(bad.code, Some(1), "{}", bad.stderr);
    assert!(bad.stderr.contains("bucket name"), "{}", bad.stderr);

    ok(&["kv", "delete", "examples/default", "n"]);
    let gone = app.cli(&["kv", "delete", "examples/default", "n"]);
    assert_eq!(gone.code, Some(3), "{}", gone.stderr);
    assert_eq!(ok(&["kv", "list", "--json"]), "[]\n");

    host.signal("TERM");
    let run = host.finish();
    assert!(
        run.messages("key-value entry set through the control API")
            .len()
            == 1
            && run
                .messages("key-value entry deleted through the control API")
                .len()
                == 1,
        "operator writes leave a trace: {}",
        run.dump()
    );
}

#[test]
fn a_task_cannot_hoard_handles() {
    let tasks = r#"
        [[tasks]]
        plugin = "kit"
        factory = "kv_hoard"
        name = "few"
        args = { count = 1000 }
        [[tasks]]
        plugin = "kit"
        factory = "kv_hoard"
        name = "many"
        args = { count = 5000 }
    "#;
    let app = TestApp::new(&app_toml("", tasks));
    let run = app.run_until_idle();
    assert_eq!(result(&run, "few"), json!(1000));
    let failed = run.event_of("failed", "many");
    assert_eq!(failed.len(), 1, "{}", run.dump());
    // The task's resource table (`handles_per_task`, 1,000) fills before
    // the key-value interface's own bound of 1,024 buckets and CAS
    // handles; either way the error names what to raise.
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("[limits] handles_per_task"),
        "{}",
        run.dump()
    );
    // Issue 24, item 11: the guest-visible error is the error chain, never
    // the host's Rust backtrace (the tests run with RUST_BACKTRACE set).
    assert!(!error.contains("Stack backtrace"), "{error}");
    assert!(!error.contains("wasmtime::runtime"), "{error}");
}

/// Issue 24, item 7: a `BEGIN IMMEDIATE` held on the database by another
/// process made a key-value write block its worker's thread for SQLite's
/// busy timeout, so a 500 ms sleeper beside it woke 6,148 ms late. Storage
/// calls now wait off the worker: the sleeper ends while the write still
/// waits, and the wait shows in `taskhost_storage_call_seconds`.
#[test]
fn a_lock_held_from_outside_stalls_only_the_task_that_waits_for_it() {
    use std::io::{BufRead, Write};
    let app = TestApp::new(&app_toml("", ""));
    let mut host = app.spawn();
    let database = app.dir.path().join(".taskhost/taskhost.sqlite3");
    // Python's sqlite3 module: another process holding the write lock
    // until told to let go on its stdin.
    let mut locker = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             sys.stdin.readline()\n\
             c.execute('COMMIT')\n",
        )
        .arg(&database)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut said = String::new();
    std::io::BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said.trim(), "locked");
    let (api, _) = taskhost_tests::Api::of(&app);
    api.post(
        routes::SUBMIT.path,
        json!({"plugin": "kit", "factory": "kv", "name": "writer",
               "args": {"bucket": "b", "op": "set", "key": "k", "value": 1}}),
    );
    // The write is waiting for the lock (not merely not started yet).
    taskhost_tests::poll_until(
        taskhost_tests::secs(30),
        taskhost_tests::millis(20),
        || match api.metric("taskhost_storage_calls_waiting") {
            waiting if waiting >= 1.0 => Ok(()),
            _ => Err("the write does not wait for the lock".into()),
        },
    );
    api.post(
        routes::SUBMIT.path,
        json!({"plugin": "kit", "factory": "nap", "name": "sleeper", "args": {"ms": 300}}),
    );
    let ended = |task: &'static str| {
        move |l: &Value| {
            l["task"] == task
                && ["done", "failed", "cancelled"].contains(&l["event"].as_str().unwrap_or(""))
        }
    };
    host.wait_for(1, ended("sleeper"));
    assert!(
        !host.seen().iter().any(ended("writer")),
        "the write ended before the sleeper beside it, though the lock is still held"
    );
    writeln!(locker.stdin.as_mut().unwrap()).unwrap();
    assert!(locker.wait().unwrap().success());
    host.wait_for(1, ended("writer"));
    let done = host.seen().iter().find(|l| ended("writer")(l)).unwrap();
    assert_eq!(done["event"], "done", "{done}");
    let waited = api.metric("taskhost_storage_call_seconds_sum");
    assert!(waited >= 0.3, "storage calls took {waited} s in all");
    host.stop();
}
