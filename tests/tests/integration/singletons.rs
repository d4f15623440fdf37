//! App-scoped tasks (`scope = "app"`, issue 27 item 3) on one host: one
//! copy, on worker 0, whatever `workers` says; settings that contradict a
//! singleton are refused at `check`. The cluster's side (one copy across
//! hosts, moved when its host stops answering) is in `cluster.rs`.

use serde_json::Value;
use taskhost_tests::TestApp;

fn app(workers: u32, task: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "single"
        workers = {workers}
        [plugins.kit]
        path = "{{testkit}}"
        [[tasks]]
        plugin = "kit"
        factory = "heartbeat"
        args = {{ every_ms = 60000 }}
        scope = "app"
        {task}
        "#
    ))
}

#[test]
fn an_app_scoped_task_runs_once_on_worker_zero_of_a_host_alone() {
    let app = app(3, r#"name = "single""#);
    let mut host = app.spawn();
    host.wait_for(1, |l| l["message"] == "beat 0");
    let listed: Value =
        serde_json::from_str(&app.cli(&["task", "single", "--json"]).ok().stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["worker"], 0, "{listed:?}");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.event_of("started", "single").len(), 1, "{}", run.dump());
}

#[test]
fn settings_that_contradict_a_singleton_are_refused_naming_the_task() {
    for (settings, wants) in [
        ("", "`scope = \"app\"` needs a `name`"),
        (
            "name = \"single\"\ndurable = true",
            "`scope = \"app\"` and `durable` contradict",
        ),
        (
            "name = \"single\"\nqueue = \"default\"",
            "`scope = \"app\"` waits in no queue",
        ),
    ] {
        let check = app(2, settings).check();
        assert_eq!(check.code, Some(2), "{}", check.dump());
        assert!(
            check.stderr.contains("tasks[0]") && check.stderr.contains(wants),
            "{wants}: {}",
            check.stderr
        );
    }
}
