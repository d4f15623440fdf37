//! `[config]` values that are secrets come from the host's environment or
//! a file, not app.toml; they reach the task and nothing else: not the
//! host's log, not `taskhost check`.

use serde_json::json;
use taskhost_tests::TestApp;

const TOKEN: &str = "tok-5e1f-never-print-me";
const KEY: &str = "key-77aa-never-print-me";

fn secret_app(task: &str) -> TestApp {
    let app = TestApp::new(&format!(
        r#"
        name = "secretive"
        [plugins.kit]
        path = "{{testkit}}"
        [plugins.examples]
        path = "{{examples}}"
        [config]
        token = {{ env = "TASKHOST_TEST_TOKEN" }}
        key = {{ file = "key.txt" }}
        visible = "plain"
        {task}
        "#
    ));
    app.file("key.txt", format!("{KEY}\n").as_bytes());
    app
}

#[test]
fn secrets_from_the_environment_and_a_file_reach_the_task() {
    let app = secret_app(
        r#"
        [[tasks]]
        plugin = "kit"
        factory = "config_value"
        name = "token"
        args = { key = "token" }
        [[tasks]]
        plugin = "kit"
        factory = "config_value"
        name = "key"
        args = { key = "key" }
        "#,
    );
    let run = app.run_taskhost_with_env(
        &["run", "--until-idle", "--log-format", "json"],
        &[("TASKHOST_TEST_TOKEN", TOKEN)],
    );
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(run.results_of("token"), vec![json!(TOKEN)]);
    assert_eq!(
        run.results_of("key"),
        vec![json!(KEY)],
        "the newline is cut"
    );
}

/// Issue 24, item 8: a secret read as the wrong type failed the task with
/// serde's message, which quotes the value (`invalid type: string
/// "tok-...", expected u64`), into the log and the task's error.
#[test]
fn a_secret_read_as_the_wrong_type_is_not_quoted_in_the_error() {
    let app = secret_app(
        r#"
        [[tasks]]
        plugin = "kit"
        factory = "config_number"
        name = "typed"
        args = { key = "token" }
        "#,
    );
    let run = app.run_taskhost_with_env(
        &["run", "--until-idle", "--log-format", "json"],
        &[("TASKHOST_TEST_TOKEN", TOKEN)],
    );
    assert_eq!(run.code, Some(1), "{}", run.dump());
    let failed = run.event_of("failed", "typed");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("config `token` is a string, which does not read as u64"),
        "{error}"
    );
    assert!(!run.dump().contains(TOKEN), "{}", run.dump());
}

#[test]
fn the_host_never_shows_a_secret_itself() {
    let app = secret_app(
        r#"
        [[tasks]]
        plugin = "examples"
        factory = "slow_work"
        args = { ms = 1 }
        "#,
    );
    let env = [("TASKHOST_TEST_TOKEN", TOKEN)];
    let check = app.run_taskhost_with_env(&["check", "--no-compile-cache"], &env);
    assert_eq!(check.code, Some(0), "{}", check.dump());
    assert!(
        check.stdout.contains("config: key (secret, from file ",)
            && check
                .stdout
                .contains("token (secret, from environment variable TASKHOST_TEST_TOKEN), visible"),
        "{}",
        check.dump()
    );
    let run = app.run_taskhost_with_env(
        &[
            "run",
            "--until-idle",
            "--log-format",
            "json",
            "--log-level",
            "trace",
        ],
        &env,
    );
    assert_eq!(run.code, Some(0), "{}", run.dump());
    for output in [&check.stdout, &check.stderr, &run.stdout, &run.stderr] {
        assert!(!output.contains(TOKEN) && !output.contains(KEY), "{output}");
    }
}

#[test]
fn a_missing_secret_stops_the_start_naming_the_key_and_the_variable() {
    let app = secret_app("");
    let run = app.run_taskhost(&["check", "--no-compile-cache"]);
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("[config] key `token`")
            && run.stderr.contains("TASKHOST_TEST_TOKEN is not set"),
        "{}",
        run.dump()
    );
}

#[test]
fn no_control_api_answer_holds_a_secret() {
    let app = secret_app(
        r#"
        [[tasks]]
        plugin = "examples"
        factory = "sleeper"
        name = "sleeper"
        "#,
    );
    let mut host = app.spawn_with_env(&["--log-level", "trace"], &[("TASKHOST_TEST_TOKEN", TOKEN)]);
    host.wait_until_serving();
    let mut answers = Vec::new();
    for verb in [
        &["tasks", "--json"][..],
        &["task", "sleeper", "--json"],
        &["plugins", "--json"],
        &["kv", "list", "--json"],
        &["metrics"],
    ] {
        let run = app.cli(verb);
        assert_eq!(run.code, Some(0), "{verb:?}: {}", run.stderr);
        answers.push(run.stdout + &run.stderr);
    }
    host.signal("TERM");
    let run = host.finish();
    answers.push(run.stdout + &run.stderr);
    for answer in answers {
        assert!(!answer.contains(TOKEN) && !answer.contains(KEY), "{answer}");
    }
}
