//! `[[queues]]` (issue 26, its first part): a task submitted to a queue
//! waits (state `queued`) until the queue lets it start, is refused only
//! past the queue's `max_waiting`, and can be got and cancelled while it
//! waits; a queue's `concurrency` holds across workers. Counts and orders
//! are read from the host's log, in the order it wrote them.

use serde_json::Value;
use taskhost_tests::{Run, TestApp};

fn json_of(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.dump()))
}

/// The most tasks of `queue` running at once, replaying the log's
/// `started` and end lines in the order they were written.
fn most_running(lines: &[Value], queue: &[&str]) -> usize {
    let (mut running, mut most) = (0usize, 0usize);
    for line in lines {
        let ours = line["task"].as_str().is_some_and(|t| queue.contains(&t));
        if !ours {
            continue;
        }
        match line["event"].as_str() {
            Some("started") => {
                running += 1;
                most = most.max(running);
            }
            Some("done" | "failed" | "cancelled") => running -= 1,
            _ => {}
        }
    }
    most
}

#[test]
fn more_tasks_than_a_queues_concurrency_all_end_done_never_more_running() {
    let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
    let tasks: String = names
        .iter()
        .map(|name| {
            format!(
                "[[tasks]]\nplugin = \"kit\"\nfactory = \"nap\"\nname = \"{name}\"\n\
                 args = {{ ms = 30 }}\nqueue = \"narrow\"\n"
            )
        })
        .collect();
    let app = TestApp::new(&format!(
        r#"
        name = "queued"
        workers = 2
        [plugins.kit]
        path = "{{testkit}}"
        [[queues]]
        name = "narrow"
        concurrency = 2
        {tasks}
        "#
    ));
    let run = app.run_until_idle().ok();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Six entries on each of two workers: twelve tasks, all queued first.
    assert_eq!(run.events("queued").len(), 12, "{}", run.dump());
    assert_eq!(run.events("done").len(), 12, "{}", run.dump());
    assert!(
        run.events("queued")
            .iter()
            .all(|line| line["queue"] == "narrow"),
        "{}",
        run.dump()
    );
    let most = most_running(&run.lines, &names);
    assert_eq!(
        most,
        2,
        "at most 2 at once, and the queue filled its 2\n{}",
        run.dump()
    );
}

#[test]
fn a_queued_task_can_be_got_and_cancelled_and_a_full_queue_refuses_naming_its_bound() {
    let app = TestApp::new(
        r#"
        name = "queued"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "one"
        concurrency = 1
        max_waiting = 2
        "#,
    );
    let mut host = app.spawn();
    let add = |name: &str| {
        app.cli(&[
            "add",
            "kit",
            "waiter",
            "--args",
            r#"{"event": "go"}"#,
            "--name",
            name,
            "--queue",
            "one",
            "--json",
        ])
    };
    add("first").ok();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "first");
    add("second").ok();
    add("third").ok();
    let second = json_of(&app.cli(&["task", "second", "--json"]).ok());
    assert_eq!(second[0]["state"], "queued", "{second}");
    assert_eq!(second[0]["queue"], "one", "{second}");
    let table = app.cli(&["tasks"]).ok();
    assert!(table.stdout.contains("in queue one"), "{}", table.dump());

    // Two wait: the third in line is refused, naming the queue and bound.
    let refused = add("fourth");
    assert_eq!(refused.code, Some(1), "{}", refused.dump());
    assert!(
        refused
            .stderr
            .contains("the waiting tasks of queue `one` ([[queues]] max_waiting) may be at most 2"),
        "{}",
        refused.dump()
    );

    // A cancelled queued task ends at once and never starts.
    let cancelled = json_of(&app.cli(&["cancel", "second", "--json"]).ok());
    assert_eq!(cancelled[0]["state"], "cancelled", "{cancelled}");

    // An unknown queue is refused, listing the queues there are.
    let unknown = app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--queue",
        "nope",
    ]);
    assert_ne!(unknown.code, Some(0), "{}", unknown.dump());
    assert!(
        unknown
            .stderr
            .contains("no queue named `nope` (queues: one, default"),
        "{}",
        unknown.dump()
    );

    // The first ends; the third gets its turn, then ends too.
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "third");
    app.cli(&["dispatch", "go", "", "--wait-for", "1"]).ok();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "third");
    host.signal("TERM");
    let run = host.finish();
    assert!(
        !run.lines
            .iter()
            .any(|l| l["event"] == "started" && l["task"] == "second"),
        "the cancelled task never started\n{}",
        run.dump()
    );
}

#[test]
fn bad_queues_and_queue_references_are_refused_at_check() {
    let app = TestApp::new(
        r#"
        name = "queued"
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "q"
        concurrency = 2
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "n"
        args = { ms = 1 }
        queue = "missing"
        "#,
    );
    let check = app.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check
            .stderr
            .contains("no queue named `missing` (queues: q, default; add a [[queues]] entry"),
        "{}",
        check.dump()
    );
}

#[test]
fn a_webhook_burst_is_queued_and_answered_not_refused_at_tasks_per_worker() {
    let app = TestApp::new(
        r#"
        name = "hooked"
        [limits]
        tasks_per_worker = 1
        [plugins.kit]
        path = "{testkit}"
        [[queues]]
        name = "hooks"
        concurrency = 1
        [[routes]]
        http = "POST /hooks/queued"
        plugin = "kit"
        factory = "hook_probe"
        args = { mode = "sleep", ms = 20 }
        queue = "hooks"
        "#,
    );
    let (mut host, address) = taskhost_tests::routes::start(&app);
    let mut ids = Vec::new();
    for i in 0..5 {
        let response = ureq::post(&format!("http://{address}/hooks/queued"))
            .send_string(&format!("burst {i}"))
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(response.status(), 202);
        let answer: Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
        ids.push(answer["task_id"].as_u64().unwrap());
    }
    host.wait_for(5, |l| l["event"] == "done");
    host.signal("TERM");
    let run = host.finish();
    let names: Vec<String> = ids.iter().map(u64::to_string).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(most_running(&run.lines, &names), 1, "{}", run.dump());
    assert_eq!(run.events("queued").len(), 5, "{}", run.dump());
}
