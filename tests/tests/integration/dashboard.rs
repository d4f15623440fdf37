//! The dashboard (`/ui`) in a real headless chromium, driven over
//! WebDriver, with the network to anything but loopback cut off: sign in,
//! a task appearing live, its log, cancelling it from its page, a failed
//! Python task's traceback, pausing a schedule; a wrong token shows no data
//! and the read-only token cannot steer. Each page's screenshot goes to
//! `target/dashboard-screenshots/` (docs/dashboard/ keeps a set).

use serde_json::{Value, json};
use taskhost::control::ControlState;
use taskhost_tests::{Browser, TestApp, millis, poll_until, repo, secs};

fn app() -> TestApp {
    TestApp::new(
        r#"
        name = "dashboard"
        [plugins.testkit]
        path = "{testkit}"
        [plugins.py]
        path = "{py-examples}"
        [[tasks]]
        plugin = "py"
        factory = "boom"
        name = "python-boom"
        [[schedules]]
        name = "hourly"
        plugin = "testkit"
        factory = "nap"
        args = { ms = 1 }
        every = "1h"
        "#,
    )
}

fn screenshots() -> std::path::PathBuf {
    let dir = repo().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Signs in with `token`.
async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.client.goto(&format!("{base}/ui")).await.unwrap();
    browser.find("#token").await.send_keys(token).await.unwrap();
    browser.find("#sign-in").await.click().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_tasks_live_cancels_and_pauses_in_a_real_browser() {
    let app = app();
    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "failed" && l["task"] == "python-boom");
    let state = ControlState::read(&app.control_file()).unwrap();
    let base = format!("http://{}", state.address);
    let shots = screenshots();
    let browser = Browser::start().await;

    // A wrong token: an error, and nothing of the host's on the page.
    sign_in(&browser, &base, "not-the-token").await;
    let refused = browser.text_when("#sign-in-error", |t| !t.is_empty()).await;
    assert!(refused.contains("wrong token"), "{refused}");
    assert!(
        browser
            .find("#page")
            .await
            .attr("hidden")
            .await
            .unwrap()
            .is_some()
    );
    // Without a session the API answers nothing, from the page's own origin.
    let status = browser
        .run("return fetch('/v1/tasks').then(r => r.status)", vec![])
        .await;
    assert_eq!(status, json!(401));

    sign_in(&browser, &base, &state.token).await;
    browser.text_when("#access", |t| t == "full access").await;
    browser.text_when("#running-count", |_| true).await;
    browser.screenshot(&shots.join("overview.png")).await;

    // Tasks: one added now appears without a reload.
    browser
        .client
        .goto(&format!("{base}/ui#/tasks"))
        .await
        .unwrap();
    browser.find("#task-rows").await;
    let add = app.cli(&[
        "add",
        "testkit",
        "heartbeat",
        "--name",
        "live",
        "--args",
        r#"{"every_ms": 100}"#,
        "--json",
    ]);
    assert_eq!(add.code, Some(0), "{}", add.dump());
    let id = serde_json::from_str::<Value>(&add.stdout).unwrap()["tasks"][0]["id"]
        .as_u64()
        .unwrap();
    let row = format!("tr[data-task='{id}']");
    browser.text_when(&row, |t| t.contains("running")).await;
    browser.screenshot(&shots.join("tasks.png")).await;

    // Its page: running, its log growing; cancelled from there.
    browser.find(&row).await.click().await.unwrap();
    browser.text_when("#task-state", |t| t == "running").await;
    browser
        .text_when("#task-args", |t| t.contains("every_ms"))
        .await;
    browser
        .text_when("#task-logs", |t| t.contains("beat 2"))
        .await;
    browser.screenshot(&shots.join("task.png")).await;
    browser.find("#cancel").await.click().await.unwrap();
    browser
        .text_when("#task-state", |t| t.starts_with("cancelled"))
        .await;
    let listed = app.cli(&["task", "live", "--json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["state"], "cancelled");
    // Ended, it can start again with its own arguments, already filled in.
    let again = browser
        .find("#start-args")
        .await
        .prop("value")
        .await
        .unwrap();
    assert_eq!(again.as_deref(), Some(r#"{"every_ms":100}"#));

    // The failed Python task: its traceback, naming the guest's function.
    let failed = app.cli(&["task", "python-boom", "--json"]);
    let failed_id = serde_json::from_str::<Value>(&failed.stdout).unwrap()[0]["id"]
        .as_u64()
        .unwrap();
    browser
        .client
        .goto(&format!("{base}/ui#/task/{failed_id}"))
        .await
        .unwrap();
    let traceback = browser
        .text_when("#task-error", |t| t.contains("Traceback"))
        .await;
    assert!(
        traceback.contains("helper_that_fails") && traceback.contains("the python guest blew up"),
        "{traceback}"
    );
    browser.screenshot(&shots.join("failed-task.png")).await;

    // Schedules: pause one.
    browser
        .client
        .goto(&format!("{base}/ui#/schedules"))
        .await
        .unwrap();
    browser
        .find("button[data-schedule='hourly'][data-action='pause']")
        .await
        .click()
        .await
        .unwrap();
    browser
        .text_when("tr[data-schedule='hourly'] .schedule-state", |t| {
            t == "paused"
        })
        .await;
    browser.screenshot(&shots.join("schedules.png")).await;
    let schedules = app.cli(&["schedules", "--json"]);
    let schedules: Value = serde_json::from_str(&schedules.stdout).unwrap();
    assert_eq!(schedules[0]["paused"], true, "{schedules}");

    // A hot-load refused: the plugins page's history says why.
    let broken = app.file("broken.wasm", b"not a component");
    let refused = app.cli(&["load", "testkit", broken.to_str().unwrap()]);
    assert_ne!(refused.code, Some(0), "{}", refused.dump());
    browser
        .client
        .goto(&format!("{base}/ui#/plugins"))
        .await
        .unwrap();
    browser
        .text_when("#page table", |t| t.contains("testkit"))
        .await;
    let history = browser.text_when("#loads", |t| t.contains("refused")).await;
    assert!(history.contains("broken.wasm"), "{history}");
    browser.screenshot(&shots.join("plugins.png")).await;

    // Everything the pages loaded came from the host itself.
    let origins = browser
        .run(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)",
            vec![],
        )
        .await;
    for origin in origins.as_array().unwrap() {
        assert_eq!(origin.as_str(), Some(base.as_str()), "{origins}");
    }

    // The read-only token: the same pages, no steering.
    browser.find("#sign-out").await.click().await.unwrap();
    browser.find("#token").await;
    sign_in(&browser, &base, state.read_token.as_deref().unwrap()).await;
    browser.text_when("#access", |t| t == "read-only").await;
    browser
        .client
        .goto(&format!("{base}/ui#/schedules"))
        .await
        .unwrap();
    let resume = browser
        .find("button[data-schedule='hourly'][data-action='resume']")
        .await;
    assert!(resume.attr("disabled").await.unwrap().is_some());
    // Even a request made around the page is refused.
    let answer = browser
        .run(
            "const csrf = arguments[0]; \
             return fetch('/v1/schedules/hourly/resume', {method: 'POST', \
               headers: {'X-Taskhost-CSRF': csrf}}).then(r => r.status)",
            vec![json!("")],
        )
        .await;
    assert_eq!(answer, json!(403));
    let schedules = app.cli(&["schedules", "--json"]);
    let schedules: Value = serde_json::from_str(&schedules.stdout).unwrap();
    assert_eq!(schedules[0]["paused"], true, "{schedules}");

    browser.close().await;
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// A GET or POST to the host with `token` as its bearer token (none: no
/// header); the status and the JSON answer.
fn call(base: &str, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = ureq::request(method, &format!("{base}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {path}: {error}"),
    };
    let status = response.status();
    (status, response.into_json().unwrap_or(Value::Null))
}

#[test]
fn the_read_token_reads_and_pages_tasks_but_cannot_steer() {
    let app = TestApp::new(
        r#"
        name = "paging"
        [plugins.testkit]
        path = "{testkit}"
        "#,
    );
    let host = app.spawn();
    for n in 0..5 {
        let added = app.cli(&[
            "add",
            "testkit",
            "nap",
            "--args",
            r#"{"ms": 1}"#,
            "--name",
            &format!("nap{n}"),
        ]);
        assert_eq!(added.code, Some(0), "{}", added.dump());
    }
    let state = ControlState::read(&app.control_file()).unwrap();
    let base = format!("http://{}", state.address);
    let read = state.read_token.as_deref().unwrap();
    // Pages of 2, newest first, each after the last id of the one before.
    let (status, first) = call(&base, "GET", "/v1/tasks?limit=2", Some(read));
    assert_eq!(status, 200, "{first}");
    let ids = |page: &Value| -> Vec<u64> {
        page.as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&first), [5, 4]);
    let (_, second) = call(&base, "GET", "/v1/tasks?limit=2&before=4", Some(read));
    assert_eq!(ids(&second), [3, 2]);
    let (_, named) = call(
        &base,
        "GET",
        "/v1/tasks?limit=10&factory=nap&name=nap0",
        Some(read),
    );
    assert_eq!(ids(&named), [1]);
    let (_, none) = call(&base, "GET", "/v1/tasks?limit=10&parent=1", Some(read));
    assert_eq!(ids(&none), [] as [u64; 0]);
    // A task that starts a child: listed by its parent's id.
    let parent = app.cli(&[
        "add",
        "testkit",
        "join_probe",
        "--args",
        r#"{"mode": "parent"}"#,
        "--name",
        "parent",
        "--json",
    ]);
    let parent = serde_json::from_str::<Value>(&parent.stdout).unwrap()["tasks"][0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(app.cli(&["wait", "parent"]).code, Some(0));
    let (_, children) = call(
        &base,
        "GET",
        &format!("/v1/tasks?limit=10&parent={parent}"),
        Some(read),
    );
    assert_eq!(children.as_array().unwrap().len(), 1, "{children}");
    assert_eq!(children[0]["factory"], "join_probe");
    let (status, bad) = call(&base, "GET", "/v1/tasks?before=4", Some(read));
    assert_eq!(status, 400, "{bad}");
    // `host` picks a cluster's host; this one has no cluster.
    let (status, bad) = call(&base, "GET", "/v1/tasks?host=a", Some(read));
    assert_eq!(status, 400, "{bad}");
    assert!(bad.to_string().contains("[cluster]"), "{bad}");
    // Each task shows its arguments.
    assert_eq!(named[0]["args"], r#"{"ms":1}"#, "{named}");
    // The overview's counts, without the tasks: every nap, the parent and
    // its child (which joins the parent, so it ends last) end done.
    poll_until(secs(60), millis(20), || {
        match call(&base, "GET", "/v1/summary", Some(read)) {
            (200, summary) if summary["states"]["done"] == 7 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (_, summary) = call(&base, "GET", "/v1/summary", Some(read));
    assert_eq!(summary["states"]["running"], 0, "{summary}");
    assert_eq!(summary["done_last_minute"], 7, "{summary}");
    assert_eq!(summary["failed_last_hour"], 0, "{summary}");
    // It cannot change anything; no token or a wrong one reads nothing.
    let (status, refused) = call(&base, "POST", "/v1/purge", Some(read));
    assert_eq!(
        (status, &refused["error"]["kind"]),
        (403, &json!("forbidden")),
        "{refused}"
    );
    assert_eq!(call(&base, "GET", "/v1/tasks", None).0, 401);
    assert_eq!(call(&base, "GET", "/v1/tasks", Some("wrong")).0, 401);
    // An unnamed task is cancelled by its id; the read token may not.
    let unnamed = app.cli(&[
        "add",
        "testkit",
        "heartbeat",
        "--args",
        r#"{"every_ms": 50}"#,
        "--json",
    ]);
    let unnamed = serde_json::from_str::<Value>(&unnamed.stdout).unwrap()["tasks"][0]["id"]
        .as_u64()
        .unwrap();
    let path = format!("/v1/tasks/{unnamed}/cancel");
    assert_eq!(call(&base, "POST", &path, Some(read)).0, 403);
    let (status, ended) = call(&base, "POST", &path, Some(&state.token));
    assert_eq!(
        (status, &ended["state"]),
        (200, &json!("cancelled")),
        "{ended}"
    );
    assert_eq!(
        call(&base, "POST", "/v1/tasks/999999/cancel", Some(&state.token)).0,
        404
    );
    assert_eq!(call(&base, "POST", "/v1/purge", Some(&state.token)).0, 200);
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}
