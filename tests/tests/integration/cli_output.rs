//! What the CLI prints, and how it ends: a reader that stops early
//! (`taskhost tasks | head -1`) ends a verb quietly with status 0; the
//! stream counts events, not its banner; tables fit their data and say how
//! many tasks are in each state; `--json` is the API's own schema.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use taskhost::lifecycle::LifecycleEvent;
use taskhost::task::{TaskState, TaskView};
use taskhost_tests::{TestApp, taskhost_bin};

const APP: &str = r#"
    name = "piped"
    [plugins.examples]
    path = "{examples}"
    "#;

/// Runs `taskhost ARGS` with its stdout a pipe whose reader is gone before
/// anything is written (every write fails with EPIPE, whatever the
/// timing); returns its exit code and stderr.
fn into_closed_pipe(app: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(taskhost_bin())
        .args(args)
        .env("TASKHOST_CONTROL_FILE", app.control_file())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_quiet_success((code, stderr): (Option<i32>, String)) {
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
}

/// `taskhost ARGS` with stdout and stderr piped, not waited for.
fn start_cli(app: &TestApp, args: &[&str]) -> Child {
    Command::new(taskhost_bin())
        .args(args)
        .env("TASKHOST_CONTROL_FILE", app.control_file())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit; a child still running after 30 s is killed
/// and fails the test (the verb never noticed what it should have).
fn exit_of(mut child: Child) -> Option<i32> {
    let pid = child.id().to_string();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait().map(|status| status.code()));
    });
    match exit.recv_timeout(Duration::from_secs(30)) {
        Ok(code) => code.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the verb did not end");
        }
    }
}

/// Adds a task that starts and ends at once: `w`, one `started` and one
/// `done` event.
fn add_quick_task(app: &TestApp) {
    app.cli(&[
        "add",
        "examples",
        "slow_work",
        "--name",
        "w",
        "--args",
        r#"{"ms": 1}"#,
    ])
    .ok();
}

#[test]
fn verbs_printing_into_a_closed_pipe_end_quietly() {
    let app = TestApp::new(APP);
    let path = app.path();
    assert_quiet_success(into_closed_pipe(
        &app,
        &["check", "--no-compile-cache", path.to_str().unwrap()],
    ));
    let host = app.spawn();
    app.cli(&["add", "examples", "sleeper", "--name", "s"]).ok();
    assert_quiet_success(into_closed_pipe(&app, &["tasks"]));
    assert_quiet_success(into_closed_pipe(&app, &["tasks", "--json"]));
    assert_quiet_success(into_closed_pipe(&app, &["plugins"]));
    // The stream writes nothing until an event comes, and none will: it
    // must see the reader gone by itself.
    assert_quiet_success(into_closed_pipe(&app, &["stream"]));
    drop(host);
}

#[test]
fn the_stream_ends_when_its_reader_goes_without_waiting_for_an_event() {
    let app = TestApp::new(APP);
    let _host = app.spawn();
    let mut follower = start_cli(&app, &["stream"]);
    let mut stderr = BufReader::new(follower.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert!(banner.contains("following"), "{banner}");
    // The reader goes while the follower waits for an event.
    drop(follower.stdout.take());
    assert_eq!(exit_of(follower), Some(0));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(
        !rest.contains("panicked") && !rest.contains("Broken pipe"),
        "{rest}"
    );
}

#[test]
fn stream_count_counts_events_and_the_banner_goes_to_stderr() {
    let app = TestApp::new(APP);
    let _host = app.spawn();
    // Under its old name, `events`, which still works for one release.
    let mut follower = start_cli(&app, &["events", "--count", "1"]);
    let mut stderr = BufReader::new(follower.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert!(banner.contains("following"), "{banner}");
    add_quick_task(&app);
    let mut output = follower.stdout.take().unwrap();
    assert_eq!(exit_of(follower), Some(0));
    let mut stdout = String::new();
    output.read_to_string(&mut stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(lines[0].contains("started examples/slow_work"), "{stdout}");
}

#[test]
fn the_json_of_tasks_and_events_is_the_libraries_schema() {
    let app = TestApp::new(APP);
    let mut host = app.spawn();
    let mut follower = start_cli(&app, &["stream", "--json", "--count", "2"]);
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let subscribed: LifecycleEvent = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(subscribed, LifecycleEvent::Subscribed);
    add_quick_task(&app);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "w");
    let events: Vec<LifecycleEvent> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(exit_of(follower), Some(0));
    assert!(
        matches!(&events[..], [LifecycleEvent::Started { task, .. }, LifecycleEvent::Done { .. }]
            if task.task == "w"),
        "{events:?}"
    );

    // The CLI's --json decodes as TaskView and encodes back to the same.
    let text = app.cli(&["tasks", "--json"]).ok().stdout;
    let raw: Value = serde_json::from_str(&text).unwrap();
    let tasks: Vec<TaskView> = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_value(&tasks).unwrap(), raw);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, TaskState::Done);
    assert_eq!(tasks[0].name.as_deref(), Some("w"));
    // The lifecycle lines of the JSON log decode the same way.
    let logged = host
        .seen()
        .iter()
        .find(|l| l["event"] == "done" && l["task"] == "w")
        .unwrap()
        .clone();
    let mut logged = logged.as_object().unwrap().clone();
    for field in ["timestamp", "level", "message"] {
        logged.remove(field);
    }
    let from_log: LifecycleEvent = serde_json::from_value(Value::Object(logged)).unwrap();
    assert_eq!(&from_log, &events[1]);
}

#[test]
fn the_task_table_fits_its_data_counts_by_state_and_can_be_limited() {
    let app = TestApp::new(APP);
    let _host = app.spawn();
    let long = "a-task-name-much-longer-than-any-column-should-ever-grow-to";
    for name in ["one", "two", long] {
        app.cli(&["add", "examples", "sleeper", "--name", name])
            .ok();
    }
    app.cli(&[
        "add",
        "examples",
        "slow_work",
        "--name",
        "quick",
        "--args",
        r#"{"ms": 1}"#,
    ])
    .ok();
    // `cancel` waits for the end; a done task is what `quick` becomes.
    app.cli(&["cancel", "one"]).ok();

    let all = app.cli(&["tasks"]).ok().stdout;
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 1 + 4 + 1, "{all}");
    // Every row's STATE cell starts where the header's does.
    let state_at = lines[0].find("STATE").unwrap();
    for row in &lines[1..5] {
        let cell = &row[row
            .char_indices()
            .nth(lines[0][..state_at].chars().count())
            .unwrap()
            .0..];
        assert!(
            ["running", "done", "cancelled", "pending"]
                .iter()
                .any(|s| cell.starts_with(s)),
            "misaligned row {row:?} in\n{all}"
        );
    }
    assert!(
        all.contains("a-task-name-much-longer-than-any-column…"),
        "{all}"
    );
    let summary = lines[5];
    assert!(summary.starts_with("4 task(s): "), "{all}");
    assert!(summary.contains("1 cancelled"), "{all}");

    let limited = app.cli(&["tasks", "--limit", "2"]).ok().stdout;
    let lines: Vec<&str> = limited.lines().collect();
    assert_eq!(lines.len(), 1 + 2 + 1, "{limited}");
    assert!(
        lines[1].contains(long.get(..20).unwrap()),
        "the newest two: {limited}"
    );
    assert!(lines[2].contains("quick"), "{limited}");
    assert!(lines[3].ends_with("(the 2 newest shown)"), "{limited}");
}
