//! Hostile plugins. Every attack in `plugins/hostile` runs on the
//! same worker as well-behaved tasks; each offender ends with a clear state
//! and reason, the others finish, the host keeps serving, and memory goes
//! back to where it was.

use serde_json::{Value, json};
use taskhost_tests::{Run, Running, TestApp, result_of};

fn json_of(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.dump()))
}

/// What `crunch` computes, computed here.
fn crunch(rounds: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// A gauge's value from the host's metrics.
fn gauge(app: &TestApp, name: &str) -> f64 {
    app.metric(name)
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

fn ended(line: &Value, task: &str) -> bool {
    line["task"] == task
        && ["done", "failed", "cancelled"].contains(&line["event"].as_str().unwrap_or(""))
}

fn end_of<'a>(host: &'a Running, task: &str) -> &'a Value {
    host.seen()
        .iter()
        .find(|l| ended(l, task))
        .unwrap_or_else(|| panic!("{task} has not ended"))
}

const ROUNDS: u64 = 50_000_000;

#[test]
fn every_attack_ends_alone_and_the_host_keeps_serving() {
    let app = TestApp::new(&format!(
        r#"
        name = "hostile"
        workers = 1
        cancel_grace_ms = 50
        [limits]
        memory_mb = 32
        tasks_per_worker = 40
        log_line_bytes = 1024
        [plugins.hostile]
        path = "{{hostile}}"
        [plugins.kit]
        path = "{{testkit}}"
        [[tasks]]
        plugin = "hostile"
        factory = "infinite_loop"
        name = "loop"
        [[tasks]]
        plugin = "hostile"
        factory = "stubborn"
        name = "stubborn"
        [[tasks]]
        plugin = "hostile"
        factory = "memory_bomb"
        name = "bomb"
        [[tasks]]
        plugin = "hostile"
        factory = "recursion"
        name = "recursion"
        [[tasks]]
        plugin = "hostile"
        factory = "spawn_bomb"
        name = "spawner"
        [[tasks]]
        plugin = "hostile"
        factory = "log_flood"
        name = "flood"
        args = {{ bytes = 100000, lines = 500 }}
        [[tasks]]
        plugin = "hostile"
        factory = "giant_strings"
        name = "giant"
        args = {{ mb = 4 }}
        [[tasks]]
        plugin = "hostile"
        factory = "trap"
        name = "trap"
        [[tasks]]
        plugin = "hostile"
        factory = "panic"
        name = "panic"
        [[tasks]]
        plugin = "hostile"
        factory = "handle_hoard"
        name = "hoard"
        args = {{ bytes = 1000, max = 5000 }}
        [[tasks]]
        plugin = "hostile"
        factory = "handle_hoard"
        name = "bighead"
        args = {{ bytes = 60000, max = 10 }}
        [[tasks]]
        plugin = "kit"
        factory = "crunch"
        name = "cruncher"
        args = {{ rounds = {ROUNDS} }}
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "sleeper"
        args = {{ ms = 100 }}
        "#
    ));
    let mut host = app.spawn();
    let finite = [
        "hoard",
        "bighead",
        "bomb",
        "recursion",
        "spawner",
        "flood",
        "giant",
        "trap",
        "panic",
        "cruncher",
        "sleeper",
    ];
    for task in finite {
        host.wait_for(1, |l| ended(l, task));
    }

    // The well-behaved neighbours finished, with the right answers, while
    // `loop` and `stubborn` still occupy the same worker.
    assert_eq!(result_of(end_of(&host, "cruncher")), json!(crunch(ROUNDS)));
    assert_eq!(result_of(end_of(&host, "sleeper")), json!(100));

    let failed_with = |task: &str, needle: &str| {
        let end = end_of(&host, task);
        assert_eq!(end["event"], "failed", "{task}: {end}");
        let error = end["error"].as_str().unwrap();
        assert!(error.contains(needle), "{task}: {error}");
    };
    // Issue 24, item 2: header fields the host holds for a guest are
    // bounded in number (handles) and size; before, 5,000 fields of 1 KB
    // and one of 60 KB were all taken.
    failed_with("hoard", "[limits] handles_per_task");
    failed_with("bighead", "[limits] http_fields_bytes");
    failed_with("bomb", "memory allocation");
    failed_with("recursion", "call stack exhausted");
    failed_with("trap", "unreachable");
    failed_with("panic", "hostile panic on purpose");

    let spawner = &result_of(end_of(&host, "spawner"));
    assert_eq!(spawner["kind"], "Limit", "{spawner}");
    // The two long runners, the cruncher and sleeper (maybe) and the bomb
    // itself take places, so it got some but not all of the 40.
    let spawned = spawner["spawned"].as_u64().unwrap();
    assert!((20..40).contains(&spawned), "{spawner}");

    // Every flood line was cut to the limit and says so.
    let flood: Vec<&Value> = host
        .seen()
        .iter()
        .filter(|l| l["task"] == "flood" && l["event"].is_null())
        .collect();
    assert_eq!(flood.len(), 500);
    assert!(flood.iter().all(|l| {
        l["message"]
            .as_str()
            .unwrap()
            .ends_with("[truncated 98976 bytes]")
    }));

    // Every giant string was refused by a limit or looked up in vain,
    // never copied into the host's tables.
    let end = end_of(&host, "giant");
    assert_eq!(end["event"], "done", "{end}");
    let giant = &result_of(end);
    for call in [
        "dispatch_payload",
        "dispatch_event",
        "wait_event",
        "add_task_args",
        "add_task_name",
        "add_task_factory",
        "add_task_plugin",
        "get_task",
        "cancel_task",
    ] {
        assert_eq!(giant[call]["kind"], "Limit", "{call}: {giant}");
    }
    assert_eq!(giant["config"]["ok"], "None");

    // The host still serves: a new task runs to its end.
    app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--name",
        "late",
    ])
    .ok();
    host.wait_for(1, |l| ended(l, "late"));
    assert_eq!(end_of(&host, "late")["event"], "done");

    // The two live tasks hold linear memory, and the gauge shows it.
    assert!(gauge(&app, "taskhost_task_memory_bytes") > 0.0);

    // The infinite loop and the task that ignores cancellation are stopped
    // by force.
    for task in ["loop", "stubborn"] {
        let cancelled = json_of(&app.cli(&["cancel", task, "--json"]).ok());
        assert_eq!(cancelled[0]["state"], "cancelled", "{cancelled}");
        assert_eq!(cancelled[0]["cancel_stage"], "forced", "{cancelled}");
    }

    // Nothing is left holding memory, and running every memory attack again
    // does not grow the host: what they took was given back.
    assert_eq!(gauge(&app, "taskhost_task_memory_bytes"), 0.0);
    let baseline = gauge(&app, "taskhost_resident_memory_bytes");
    for round in 0..3 {
        for factory in ["memory_bomb", "giant_strings"] {
            let name = format!("{factory}-{round}");
            let args = if factory == "giant_strings" {
                r#"{"mb": 4}"#
            } else {
                "null"
            };
            app.cli(&["add", "hostile", factory, "--args", args, "--name", &name])
                .ok();
            host.wait_for(1, |l| ended(l, &name));
        }
    }
    assert_eq!(gauge(&app, "taskhost_task_memory_bytes"), 0.0);
    let after = gauge(&app, "taskhost_resident_memory_bytes");
    let grown_mib = (after - baseline) / f64::from(1 << 20);
    // Three bombs alone held 96 MiB of linear memory.
    assert!(
        grown_mib < 16.0,
        "resident memory grew {grown_mib:.1} MiB ({baseline} -> {after})"
    );

    host.signal("INT");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
}

#[test]
fn a_task_past_its_timeout_fails_saying_so() {
    let app = TestApp::new(
        r#"
        name = "timeouts"
        workers = 1
        cancel_grace_ms = 20
        [limits]
        timeout_ms = 60000
        [plugins.hostile]
        path = "{hostile}"
        [plugins.hostile.limits]
        timeout_ms = 50
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "hostile"
        factory = "infinite_loop"
        name = "loop"
        [[tasks]]
        plugin = "hostile"
        factory = "lurker"
        name = "lurker"
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "within"
        args = { ms = 100 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(1), "{}", run.dump());
    let error = |task: &str| {
        let failed = run.event_of("failed", task);
        assert_eq!(failed.len(), 1, "{task}: {}", run.dump());
        failed[0]["error"].as_str().unwrap().to_string()
    };
    assert_eq!(
        error("loop"),
        "timed out after 50 ms (limit `timeout_ms`); it was interrupted"
    );
    assert_eq!(
        error("lurker"),
        "timed out after 50 ms (limit `timeout_ms`); it stopped when told"
    );
    // The app-wide timeout is far away for the other plugin's task.
    assert_eq!(run.results_of("within"), vec![json!(100)]);
}

/// Resident memory of process `pid`, in MiB.
fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("VmRSS")
        / 1024.0
}

/// One spawn bomb under the *default* limits filled the worker
/// with ~10,000 lurkers, and as they ended the host's memory climbed until
/// it was killed. Now the lurkers beyond the warm pool give their memory
/// back as they end.
#[test]
fn a_spawn_bomb_under_default_limits_leaves_the_host_as_it_was() {
    let app = TestApp::new(
        r#"
        name = "bombed"
        workers = 1
        [plugins.hostile]
        path = "{hostile}"
        "#,
    );
    let mut host = app.spawn();
    let pid = taskhost::control::ControlState::read(&app.control_file())
        .unwrap()
        .pid;
    let baseline = resident_mib(pid);
    app.cli(&["add", "hostile", "spawn_bomb", "--name", "bomb"])
        .ok();
    // 10,000 starts in a debug build: on a machine loaded past its cores
    // this took over the default 60 s guard; the guard is for a hung host.
    host.wait_for_within(1, |l| ended(l, "bomb"), std::time::Duration::from_secs(300));
    let report = result_of(end_of(&host, "bomb"));
    assert_eq!(report["kind"], "Limit", "{report}");
    // tasks_per_worker (10,000) stopped it, the bomb itself being one.
    assert_eq!(report["spawned"], 9999, "{report}");
    let purged = json_of(&app.cli(&["purge", "--json"]).ok());
    assert_eq!(purged["purged"], 10_000, "{purged}");
    let after = resident_mib(pid);
    // The warm pool's bound (128 slots x 576 KiB = 72 MiB) and what the
    // allocator keeps of the bookkeeping of 10,000 tasks.
    assert!(
        after - baseline < 72.0 + 128.0,
        "resident memory {after:.0} MiB after the bomb, {baseline:.0} MiB before"
    );
    app.cli(&["add", "hostile", "trap", "--name", "after"]).ok();
    host.wait_for(1, |l| ended(l, "after"));
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code, Some(0), "{}", run.dump());
}
