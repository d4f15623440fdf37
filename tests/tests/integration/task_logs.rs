//! A task's log lines read back after the fact: `taskhost logs TASK`
//! (and `GET /v1/tasks/{id}/logs` under it), bounded per task, followed
//! with --follow until the task ends, and gone once the task is purged.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use taskhost_tests::{TestApp, taskhost_bin};

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[test]
fn a_tasks_lines_are_kept_bounded_followed_and_purged_with_it() {
    let app = TestApp::new(
        r#"
        name = "logs"
        [limits]
        task_log_lines = 5
        [plugins.testkit]
        path = "{testkit}"
        [[tasks]]
        plugin = "testkit"
        factory = "print"
        name = "printer"
        args = { text = "hello" }
        [[tasks]]
        plugin = "testkit"
        factory = "heartbeat"
        name = "beat"
        args = { every_ms = 20 }
        "#,
    );
    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "printer");
    // What it wrote to stdout and stderr, in order, numbered from 1.
    let printed = app.cli(&["logs", "printer", "--json"]).ok();
    let lines = json_lines(&printed.stdout);
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["hello", "err: hello"], "{}", printed.dump());
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[1]["seq"], 2);
    assert!(lines[0]["at_ms"].as_u64().unwrap() > 1_700_000_000_000);

    // The beat keeps only its last 5 lines, and says so.
    host.wait_for(8, |l| {
        l["task"] == "beat"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("beat "))
    });
    let kept = app.cli(&["logs", "beat"]).ok();
    let beats: Vec<&str> = kept.stdout.lines().collect();
    assert_eq!(beats.len(), 5, "{}", kept.dump());
    assert!(
        beats.iter().all(|l| l.contains(" INFO beat ")),
        "{}",
        kept.dump()
    );
    assert!(
        kept.stderr.contains("older line(s) of task"),
        "{}",
        kept.dump()
    );

    // A follower prints new lines as they come, and stops when the task ends.
    let mut follower = Command::new(taskhost_bin())
        .args(["logs", "beat", "--follow", "--json"])
        .env("TASKHOST_CONTROL_FILE", app.control_file())
        .stdout(Stdio::piped())
        .spawn()
        .expect("taskhost logs runs");
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen.len() < 8 {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the follower stopped early"
        );
        let line: Value = serde_json::from_str(&line).unwrap();
        seen.push(line["seq"].as_u64().unwrap());
    }
    // Numbered without a gap: nothing missed between two reads.
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    let cancelled = app.cli(&["cancel", "beat"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.dump());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(follower.wait().unwrap().success());

    // Purged with its task; an unknown task is "not found" (exit 3).
    let id = app.cli(&["task", "beat", "--json"]).ok();
    let id = serde_json::from_str::<Value>(&id.stdout).unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(app.cli(&["purge"]).code, Some(0));
    let gone = app.cli(&["logs", &id.to_string()]);
    assert_eq!(gone.code, Some(3), "{}", gone.dump());
    assert!(
        gone.stderr.contains(&format!("no task {id}")),
        "{}",
        gone.dump()
    );
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}
