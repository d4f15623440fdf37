//! What a task logs cannot flood the host or forge its output. A
//! task's lines pass a token bucket; names and text reach terminals with
//! their control characters escaped (the JSON log stays exact).

use taskhost_tests::TestApp;

#[test]
fn a_log_flood_is_cut_to_the_rate_and_says_how_much_it_lost() {
    let app = TestApp::new(
        r#"
        name = "flood"
        [limits]
        log_burst_lines = 100
        log_lines_per_second = 100
        [plugins.hostile]
        path = "{hostile}"
        [[tasks]]
        plugin = "hostile"
        factory = "log_flood"
        name = "flood"
        args = { bytes = 10, lines = 20000 }
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let lines: Vec<&str> = run
        .lines
        .iter()
        .filter(|l| l["task"] == "flood" && l["event"].is_null())
        .filter_map(|l| l["message"].as_str())
        .collect();
    let passed = lines.iter().filter(|m| **m == "xxxxxxxxxx").count();
    let dropped: u64 = lines
        .iter()
        .filter_map(|m| m.strip_suffix(" log line(s) dropped: more than 100 per second after a burst of 100 ([limits] log_lines_per_second, log_burst_lines)"))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(passed as u64 + dropped, 20000, "{lines:?}");
    let elapsed_s = run.event_of("done", "flood")[0]["elapsed_ms"]
        .as_f64()
        .unwrap()
        / 1e3;
    assert!(
        (passed as f64) <= 100.0 + 100.0 * elapsed_s + 1.0,
        "{passed} lines in {elapsed_s} s"
    );
}

const EVIL: &str = r#""esc\u001b[2J\r\nFAKE 999 0 line""#;

fn assert_clean(text: &str) {
    assert!(
        !text.contains('\u{1b}'),
        "an ESC reached the terminal:\n{text}"
    );
    assert!(!text.contains('\r'), "a CR reached the terminal:\n{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE")),
        "a line was forged:\n{text}"
    );
}

/// An app with one task of `examples/factory` named [`EVIL`].
fn forge_app(factory: &str, args: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "forge"
        [plugins.examples]
        path = "{{examples}}"
        [[tasks]]
        plugin = "examples"
        factory = "{factory}"
        name = {EVIL}
        {args}
        "#
    ))
}

#[test]
fn control_characters_in_names_cannot_forge_log_lines_or_table_rows() {
    let app = forge_app("slow_work", "args = { ms = 1 }");
    // The human log.
    let run = app.run_taskhost(&["run", "--until-idle"]);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert!(run.stdout.contains("slow work done"), "{}", run.dump());
    assert_clean(&run.stdout);

    // The CLI's table, and its JSON, which stays exact.
    let app = forge_app("sleeper", "");
    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "started");
    let table = app.cli(&["tasks"]);
    assert_eq!(table.code, Some(0), "{}", table.dump());
    assert_clean(&table.stdout);
    // The header, the one task's row, the count by state: no forged row.
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);
    assert!(
        table.stdout.ends_with("1 task(s): 1 running\n"),
        "{}",
        table.stdout
    );
    let listed = app.cli(&["tasks", "--json"]);
    let tasks: serde_json::Value = serde_json::from_str(listed.stdout.trim()).unwrap();
    assert_eq!(tasks[0]["name"], "esc\u{1b}[2J\r\nFAKE 999 0 line");
    drop(host);
}
