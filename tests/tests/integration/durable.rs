//! Durable tasks against the real binary and the real database file: they
//! survive `kill -9`, none is lost, none that ended runs again, outcomes
//! are visible after the restart, an idempotency key is one task, and a
//! cancel recorded before the crash stays.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use taskhost::control::routes;
use taskhost_tests::{Api, Run, TestApp};

fn app() -> TestApp {
    TestApp::new(
        r#"
        name = "durable"
        workers = 2
        [plugins.kit]
        path = "{testkit}"
        "#,
    )
}

fn names_with(lines: &[Value], event: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l["event"] == event)
        .filter_map(|l| l["task"].as_str())
        .filter(|name| name.starts_with("job-"))
        .map(str::to_string)
        .collect()
}

fn add(api: &Api, body: Value) -> (u16, Value) {
    api.post_status(routes::SUBMIT.path, body)
}

#[test]
fn durable_tasks_survive_kill_9_none_lost_none_run_twice() {
    let app = app();
    let mut host = app.spawn();
    let (api, _) = Api::of(&app);
    // 100 tasks on two workers, sleeping 150 ms to ~2.1 s, so some end
    // before the kill and most do not.
    let all: BTreeSet<String> = (0..100).map(|i| format!("job-{i:03}")).collect();
    for (i, name) in all.iter().enumerate() {
        let (status, added) = add(
            &api,
            json!({
                "plugin": "kit", "factory": "keyed_nap", "name": name,
                "worker": i % 2, "args": {"ms": 150 + 20 * i}, "durable": true,
            }),
        );
        assert_eq!(status, 201, "{added}");
        assert_eq!(added["tasks"][0]["created"], true, "{added}");
    }
    // One cancelled before the crash: it must stay cancelled.
    let (status, _) = add(
        &api,
        json!({"plugin": "kit", "factory": "nap", "name": "to-cancel", "args": {"ms": 600000},
               "durable": true}),
    );
    assert_eq!(status, 201);
    let cancelled = app.cli(&["cancel", "to-cancel", "--json"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);

    host.wait_for(10, |l| {
        l["event"] == "done" && l["task"].as_str().is_some_and(|t| t.starts_with("job-"))
    });
    host.signal("KILL");
    let first = host.finish();
    let done_before = names_with(&first.lines, "done");
    assert!(
        (10..100).contains(&done_before.len()),
        "the kill came too late to test anything: {} done",
        done_before.len()
    );

    let mut host = app.spawn();
    let left = all.len() - done_before.len();
    host.wait_for(left, |l| {
        l["event"] == "done" && l["task"].as_str().is_some_and(|t| t.starts_with("job-"))
    });
    let (api, _) = Api::of(&app);
    // Results of tasks that ended before the crash, after the restart.
    let before = done_before.iter().next().unwrap();
    let shown = api.get(&format!("{}?name={before}", routes::LIST_TASKS.path));
    assert_eq!(shown[0]["state"], "done", "{shown}");
    assert_eq!(shown[0]["durable"], true, "{shown}");
    let result: Value = serde_json::from_str(shown[0]["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["attempt"], 1, "{shown}");
    // The cancelled one is listed cancelled and did not start again.
    let cancelled = app.cli(&["task", "to-cancel", "--json"]);
    let cancelled: Value = serde_json::from_str(&cancelled.stdout).unwrap();
    assert_eq!(cancelled[0]["state"], "cancelled", "{cancelled}");

    host.signal("TERM");
    let second = host.finish();
    let started_after = names_with(&second.lines, "started");
    let done_after = names_with(&second.lines, "done");
    // None that had ended ran again; every other one ran to its end.
    assert!(
        done_before.is_disjoint(&started_after),
        "ran again: {:?}",
        done_before.intersection(&started_after).collect::<Vec<_>>()
    );
    let ended: BTreeSet<String> = done_before.union(&done_after).cloned().collect();
    assert_eq!(ended, all, "lost: {:?}", all.difference(&ended));
    // A re-run is the next attempt, and its key survived.
    let rerun = second
        .lines
        .iter()
        .find(|l| l["event"] == "done" && l["task"].as_str().is_some_and(|t| t.starts_with("job-")))
        .unwrap();
    let result: Value = serde_json::from_str(rerun["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["attempt"], 2, "{rerun}");
    assert!(
        result["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("durable-")),
        "{rerun}"
    );
    assert!(
        second.event_of("started", "to-cancel").is_empty(),
        "{}",
        second.dump()
    );
}

#[test]
fn an_idempotency_key_is_one_task_from_the_api_the_cli_and_a_guest() {
    let app = app();
    let mut host = app.spawn();
    let (api, _) = Api::of(&app);
    let body = json!({"plugin": "kit", "factory": "keyed_nap", "args": {"ms": 1},
                      "durable": true, "idempotency_key": "order-17", "worker": 1});
    let (status, first) = add(&api, body.clone());
    assert_eq!(status, 201, "{first}");
    let name = first["tasks"][0]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("durable-"), "{first}");
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == name.as_str());
    // After it ended, and from another worker: the same task, nothing new.
    let mut other = body.clone();
    other["worker"] = json!(0);
    let (status, again) = add(&api, other);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["tasks"][0]["created"], false, "{again}");
    assert_eq!(again["tasks"][0]["id"], first["tasks"][0]["id"], "{again}");
    let cli = app.cli(&[
        "add",
        "kit",
        "keyed_nap",
        "--args",
        r#"{"ms": 1}"#,
        "--durable",
        "--idempotency-key",
        "order-17",
        "--worker",
        "1",
    ]);
    assert_eq!(cli.code, Some(0), "{}", cli.stderr);
    assert!(cli.stdout.contains("nothing started"), "{}", cli.stdout);
    // A key without `durable` is refused, naming what to add.
    let refused = app.cli(&["add", "kit", "nap", "--idempotency-key", "k"]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);

    // A guest's start-task: the same id twice, and a key on a task that is
    // not durable refused.
    let (_, guest) = add(
        &api,
        json!({"plugin": "kit", "factory": "start_durable_twice", "name": "starter",
               "args": {"key": "guest-key", "ms": 1}}),
    );
    assert_eq!(guest["tasks"][0]["created"], true);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "guest-durable");
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "starter");
    host.signal("TERM");
    let run: Run = host.finish();
    let report = &run.results_of("starter")[0];
    assert_eq!(report["first"], report["second"], "{report}");
    assert_eq!(report["key_without_durable"], "InvalidArgs", "{report}");
    let keyed = &run.results_of("guest-durable")[0];
    assert_eq!(keyed["key"], "guest-key", "{keyed}");
    assert_eq!(
        run.event_of("started", "guest-durable").len(),
        1,
        "{}",
        run.dump()
    );
    assert_eq!(run.event_of("started", &name).len(), 1, "{}", run.dump());
}

#[test]
fn a_durable_startup_task_runs_to_its_end_once_across_starts() {
    let app = TestApp::new(
        r#"
        name = "durable"
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "keyed_nap"
        name = "once"
        args = { ms = 1 }
        durable = true
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        name = "every-time"
        args = { ms = 1 }
        "#,
    );
    let first = app.run_until_idle();
    assert_eq!(first.code, Some(0), "{}", first.dump());
    assert_eq!(first.results_of("once")[0]["key"], "app.toml/0/once");
    let second = app.run_until_idle();
    assert_eq!(second.code, Some(0), "{}", second.dump());
    assert!(
        second.event_of("started", "once").is_empty(),
        "{}",
        second.dump()
    );
    assert_eq!(second.event_of("started", "every-time").len(), 1);

    // A durable startup task needs a name, and the error says why.
    app.rewrite(
        r#"
        name = "durable"
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "nap"
        args = { ms = 1 }
        durable = true
        "#,
    );
    let check = app.check();
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains("tasks[0]") && check.stderr.contains("needs a `name`"),
        "{}",
        check.stderr
    );
}

#[test]
fn a_stop_is_not_an_end_even_for_a_task_that_fails_on_it_but_a_cancel_is() {
    let app = app();
    let mut host = app.spawn();
    let (api, _) = Api::of(&app);
    let durable = |name: &str, factory: &str, args: Value| {
        let (status, body) = add(
            &api,
            json!({"plugin": "kit", "factory": factory, "name": name, "args": args,
                   "durable": true}),
        );
        assert_eq!(status, 201, "{body}");
    };
    // Fails with its own error when the host stops it: before the fix
    // that failure was recorded as its end, and it never ran again.
    durable("stubborn", "stubborn_nap", json!({"ms": 600000}));
    // Cancels itself: before the fix that cancel was not recorded, and it
    // ran again at every start.
    durable("quitter", "cancel_self", json!({"name": "quitter"}));
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "stubborn");
    host.wait_for(1, |l| l["event"] == "cancelled" && l["task"] == "quitter");
    // The host's own key prefixes are not for submissions.
    let refused = app.cli(&[
        "add",
        "kit",
        "nap",
        "--args",
        r#"{"ms": 1}"#,
        "--durable",
        "--idempotency-key",
        "schedule/beat/1",
    ]);
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("the host's own"),
        "{}",
        refused.stderr
    );
    host.signal("TERM");
    let first = host.finish();
    assert_eq!(
        first.event_of("failed", "stubborn")[0]["error"],
        "attempt 1 was interrupted",
        "{}",
        first.dump()
    );

    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "stubborn");
    let shown = app.cli(&["task", "stubborn", "--json"]);
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown[0]["attempt"], 2, "{shown}");
    let quitter = app.cli(&["task", "quitter", "--json"]);
    let quitter: Value = serde_json::from_str(&quitter.stdout).unwrap();
    assert_eq!(quitter[0]["state"], "cancelled", "{quitter}");
    host.signal("TERM");
    let second = host.finish();
    assert!(
        second.event_of("started", "quitter").is_empty(),
        "{}",
        second.dump()
    );
}

/// The journal of the task named `name` (`GET /v1/tasks/{id}/journal`).
fn journal_of(api: &Api, name: &str) -> Value {
    let id = api.get(&format!("{}?name={name}", routes::LIST_TASKS.path))[0]["id"].clone();
    api.get(&routes::TASK_JOURNAL.path.replace("{id}", &id.to_string()))
}

/// Waits (up to 30 s) until the journal of the task named `name` holds a
/// step of `call`: the task got that far, recorded.
fn await_journaled(api: &Api, name: &str, call: &str) {
    taskhost_tests::poll_until(taskhost_tests::secs(30), taskhost_tests::millis(20), || {
        let journal = journal_of(api, name);
        let steps = journal["steps"].as_array().cloned().unwrap_or_default();
        match steps.iter().any(|s| s["call"] == call) {
            true => Ok(()),
            false => Err(format!("{journal}")),
        }
    });
}

/// An app with the `examples` plugin allowed to reach `server`, with
/// `fields` among its `[plugins.examples]` keys.
fn poster_app(server: std::net::SocketAddr, fields: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "resumes"
        [plugins.examples]
        path = "{{examples}}"
        {fields}
        [plugins.examples.grants]
        http = ["http://127.0.0.1:{port}"]
        "#,
        port = server.port(),
    ))
}

/// Starts `post_steps` on `app`'s host as a resuming task named
/// `poster`: `steps` POSTs to `server`, `pause_ms` apart.
pub(crate) fn add_poster(app: &TestApp, server: std::net::SocketAddr, steps: u64, pause_ms: u64) {
    let args =
        json!({"url": format!("http://{server}/steps"), "steps": steps, "pause_ms": pause_ms});
    let added = app.cli(&[
        "add",
        "examples",
        "post_steps",
        "--args",
        &args.to_string(),
        "--name",
        "poster",
        "--resume",
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
}

/// The number a `resumable` task logged (`random R`) in `lines`.
fn random_logged(lines: &[Value], task: &str) -> Option<u64> {
    lines.iter().find_map(|l| {
        (l["task"] == task)
            .then(|| l["message"].as_str()?.strip_prefix("random ")?.parse().ok())
            .flatten()
    })
}

/// `durable = "resume"`: a task killed with `kill -9` resumes from its
/// journal. The sleeps it finished are not slept again, the one the crash
/// cut short lasts only what was left of it, its random number is the one
/// it drew before the crash, and its journal holds each step once.
#[test]
fn a_resuming_task_killed_mid_sleep_resumes_from_its_journal() {
    let app = app();
    let mut host = app.spawn();
    let added = app.cli(&[
        "add",
        "kit",
        "resumable",
        "--args",
        r#"{"pauses": [100, 100, 12000]}"#,
        "--name",
        "resumer",
        "--resume",
        "--json",
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    host.wait_for(1, |l| l["task"] == "resumer" && l["message"] == "slept 2");
    // The last sleep's end is journaled before it begins.
    let (api, _) = Api::of(&app);
    let journal = |api: &Api| journal_of(api, "resumer");
    taskhost_tests::poll_until(taskhost_tests::secs(30), taskhost_tests::millis(20), || {
        let steps = journal(&api)["steps"].as_array().map_or(0, Vec::len);
        if steps == 5 {
            Ok(())
        } else {
            Err(format!("{steps} steps"))
        }
    });
    // Part of the last sleep passes before the crash: there is no event
    // to wait for, the time passing is the point.
    std::thread::sleep(std::time::Duration::from_secs(6));
    host.signal("KILL");
    let first = host.finish();
    let drawn = random_logged(&first.lines, "resumer").expect("the first run drew a number");

    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "resumer");
    let restarted = std::time::Instant::now();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "resumer");
    let resumed_in = restarted.elapsed();
    let (api, _) = Api::of(&app);
    // The line is written as the task ends; its record follows.
    let waited = app.cli(&["wait", "resumer", "--json"]);
    assert_eq!(waited.code, Some(0), "{}", waited.dump());
    let done = api.get(&format!("{}?name=resumer", routes::LIST_TASKS.path));
    let result: Value = serde_json::from_str(
        done[0]["result"]
            .as_str()
            .unwrap_or_else(|| panic!("{done}")),
    )
    .unwrap();
    assert_eq!(
        result["random"], drawn,
        "the same number on replay: {result}"
    );
    assert_eq!(result["attempt"], 2, "{result}");
    // Its key-value increment was answered from the journal, not made
    // again.
    assert_eq!(result["runs"], 1, "{result}");
    let stored = app.cli(&["kv", "get", "kit/resume", "runs"]);
    assert_eq!(stored.stdout.trim(), "1", "{}", stored.dump());
    // About 6 s of the 12 s sleep were left; run again from its start the
    // task would sleep 12.2 s.
    assert!(
        resumed_in < std::time::Duration::from_secs(10),
        "resumed in {resumed_in:?}"
    );
    let journal = journal(&api);
    let calls: Vec<&str> = journal["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["call"].as_str().unwrap())
        .collect();
    assert_eq!(
        calls,
        [
            "seed",
            "kv increment kit/resume runs 1",
            "sleep 100",
            "sleep 100",
            "sleep 12000"
        ],
        "{journal}"
    );
    // The restarted host answered the 4 calls of the first run from the
    // journal (the seed is read, not replayed).
    app.await_metric("taskhost_journal_steps_replayed_total", 4.0);
    // The CLI shows the same steps.
    let shown = app.cli(&["journal", "resumer"]);
    assert_eq!(shown.code, Some(0), "{}", shown.dump());
    assert!(shown.stdout.contains("sleep 12000"), "{}", shown.stdout);
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// What the POST server saw: every request's step and idempotency key.
#[derive(Default)]
pub(crate) struct Posts {
    pub(crate) seen: Vec<(u64, String)>,
}

/// A loopback server that takes `POST /steps` (`{"step": i}`), answering a
/// repeated `Idempotency-Key` as it did the first time (as a payments API
/// does), and tells `third` when step 3 arrives.
pub(crate) fn post_server(
    third: std::sync::mpsc::Sender<()>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Posts>>,
) {
    let posts = std::sync::Arc::new(std::sync::Mutex::new(Posts::default()));
    let kept = posts.clone();
    let third = std::sync::Mutex::new(Some(third));
    let third = std::sync::Arc::new(third);
    let address = taskhost_tests::serve(move |_| {
        axum::Router::new().route(
            "/steps",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (kept, third) = (kept.clone(), third.clone());
                    async move {
                        let step = serde_json::from_slice::<Value>(&body).unwrap()["step"]
                            .as_u64()
                            .unwrap();
                        let key = headers
                            .get("idempotency-key")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        kept.lock().unwrap().seen.push((step, key));
                        if step == 3
                            && let Some(third) = third.lock().unwrap().take()
                        {
                            let _ = third.send(());
                        }
                        "ok"
                    }
                },
            ),
        )
    });
    (address, posts)
}

/// The acceptance of resuming (issue 30): `post_steps` POSTing 5 times
/// with sleeps between, `kill -9` right after the server saw the third
/// POST, then a restart: the server has taken exactly 5 steps, 1 to 5,
/// each once (a POST whose answer the crash kept from the journal is sent
/// again with the same `Idempotency-Key`, which the server honours), and
/// the task ends with an uninterrupted run's result.
#[test]
fn post_steps_killed_after_its_third_post_resumes_and_posts_each_step_once() {
    let (third, saw_third) = std::sync::mpsc::channel();
    let (server, posts) = post_server(third);
    let app = poster_app(server, "");
    let host = app.spawn();
    add_poster(&app, server, 5, 300);
    saw_third
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the third POST arrives");
    host.signal("KILL");
    host.finish();

    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "poster");
    let (api, _) = Api::of(&app);
    // The line is written as the task ends; its record follows.
    let waited = app.cli(&["wait", "poster", "--json"]);
    assert_eq!(waited.code, Some(0), "{}", waited.dump());
    let done = api.get(&format!("{}?name=poster", routes::LIST_TASKS.path));
    assert_eq!(done[0]["result"], "5", "{done}");
    each_step_taken_once(&posts.lock().unwrap(), 5);
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// What `post_server` saw of `post_steps` with `steps` steps, interrupted
/// once: each step taken once by its key (whatever was sent twice), every
/// POST with a key, and at most one sent again (the one the crash cut
/// short).
pub(crate) fn each_step_taken_once(posts: &Posts, steps: u64) {
    let mut taken: Vec<(u64, String)> = posts.seen.clone();
    taken.sort();
    taken.dedup();
    let taken_steps: Vec<u64> = taken.iter().map(|(step, _)| *step).collect();
    assert_eq!(
        taken_steps,
        (1..=steps).collect::<Vec<_>>(),
        "{:?}",
        posts.seen
    );
    assert!(
        taken.iter().all(|(_, key)| !key.is_empty()),
        "every POST of a resuming task carries its key: {:?}",
        posts.seen
    );
    assert!(posts.seen.len() as u64 <= steps + 1, "{:?}", posts.seen);
}

/// `http_uncertain = "fail"`: the host killed while `post_steps`' third
/// POST waits for its answer; on replay that POST's intent is in the
/// journal and its answer is not, so the task fails `uncertain`, naming
/// the request, and the POST is not sent again.
#[test]
fn an_uncertain_post_fails_its_task_when_the_policy_says_so() {
    let (third, saw_third) = std::sync::mpsc::channel::<()>();
    let third = std::sync::Arc::new(std::sync::Mutex::new(Some(third)));
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = steps.clone();
    // Step 3 is never answered: the host dies while it waits.
    let server = taskhost_tests::serve(move |_| {
        axum::Router::new().route(
            "/steps",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (seen, third) = (seen.clone(), third.clone());
                async move {
                    let step = serde_json::from_slice::<Value>(&body).unwrap()["step"]
                        .as_u64()
                        .unwrap();
                    seen.lock().unwrap().push(step);
                    if step == 3 {
                        if let Some(third) = third.lock().unwrap().take() {
                            let _ = third.send(());
                        }
                        std::future::pending::<()>().await;
                    }
                    "ok"
                }
            }),
        )
    });
    let app = poster_app(server, r#"http_uncertain = "fail""#);
    let host = app.spawn();
    add_poster(&app, server, 5, 10);
    saw_third
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the third POST arrives");
    host.signal("KILL");
    host.finish();

    let host = app.spawn();
    let waited = app.cli(&["wait", "poster", "--json"]);
    let ended: Value =
        serde_json::from_str(&waited.stdout).unwrap_or_else(|_| panic!("{}", waited.dump()));
    assert_eq!(ended["state"], "failed", "{ended}");
    let error = ended["error"].as_str().unwrap();
    assert!(
        error.contains("uncertain")
            && error.contains("http intent POST")
            && error.contains("http_uncertain"),
        "{error}"
    );
    assert_eq!(
        *steps.lock().unwrap(),
        [1, 2, 3],
        "step 3 is not sent again"
    );
    host.stop();
}

/// Requests a resuming task begins at once are answered on replay as
/// they were, whatever order their answers came in: four GETs answered
/// slowest-first-begun last, then a sleep the host is killed in. Their
/// answers used to be matched in the order they were recorded, so the
/// replay failed `nondeterministic`.
#[test]
fn concurrent_requests_of_a_resumed_task_are_answered_from_the_journal() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = seen.clone();
    let server = taskhost_tests::serve(move |_| {
        axum::Router::new().route(
            "/slow/{ms}",
            axum::routing::get(move |axum::extract::Path(ms): axum::extract::Path<u64>| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(ms);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    ms.to_string()
                }
            }),
        )
    });
    let app = TestApp::new(&format!(
        r#"
        name = "parallel"
        [plugins.kit]
        path = "{{testkit}}"
        [plugins.kit.grants]
        http = ["http://127.0.0.1:{port}"]
        "#,
        port = server.port(),
    ));
    let host = app.spawn();
    let urls: Vec<String> = [900, 600, 300, 0]
        .iter()
        .map(|ms| format!("http://{server}/slow/{ms}"))
        .collect();
    let args = json!({"urls": urls, "ms": 4000}).to_string();
    let added = app.cli(&[
        "add",
        "kit",
        "parallel_then_sleep",
        "--args",
        &args,
        "--name",
        "fan",
        "--resume",
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    let (api, _) = Api::of(&app);
    await_journaled(&api, "fan", "sleep 4000");
    host.signal("KILL");
    host.finish();

    let host = app.spawn();
    let waited = app.cli(&["wait", "fan", "--json"]);
    let ended: Value =
        serde_json::from_str(&waited.stdout).unwrap_or_else(|_| panic!("{}", waited.dump()));
    assert_eq!(ended["state"], "done", "{ended}");
    let result: Value = serde_json::from_str(ended["result"].as_str().unwrap()).unwrap();
    assert_eq!(result, json!(["900", "600", "300", "0"]));
    let mut sent = seen.lock().unwrap().clone();
    sent.sort();
    assert_eq!(sent, [0, 300, 600, 900], "each request sent once");
    host.stop();
}

/// A task that calls differently on replay fails `nondeterministic`,
/// naming the step and both calls, and is not tried again.
#[test]
fn a_task_that_calls_differently_on_replay_fails_naming_the_step() {
    let app = app();
    let mut host = app.spawn();
    let added = app.cli(&["add", "kit", "drifting", "--name", "drifter", "--resume"]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    host.wait_for(1, |l| l["event"] == "started" && l["task"] == "drifter");
    let (api, _) = Api::of(&app);
    // Both sleeps journaled: the first ended, the second began.
    await_journaled(&api, "drifter", "sleep 60000");
    host.signal("KILL");
    host.finish();

    let mut host = app.spawn();
    host.wait_for(1, |l| l["event"] == "failed" && l["task"] == "drifter");
    let failed = host
        .seen()
        .iter()
        .find(|l| l["event"] == "failed" && l["task"] == "drifter")
        .unwrap()
        .clone();
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("nondeterministic"), "{error}");
    assert!(
        error.contains("step 0") && error.contains("sleep 100") && error.contains("sleep 200"),
        "{error}"
    );
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// `[limits] journal_bytes` bounds a resuming task's journal: the call
/// that would take it past the limit fails the task, naming the limit,
/// the step and the call, and what the journal holds stays under it.
#[test]
fn a_journal_past_its_limit_fails_its_task_naming_the_limit() {
    let app = TestApp::new(
        r#"
        name = "durable"
        [plugins.kit]
        path = "{testkit}"
        [limits]
        journal_bytes = 300
        "#,
    );
    let host = app.spawn();
    let pauses = serde_json::to_string(&json!({ "pauses": vec![1; 40] })).unwrap();
    let added = app.cli(&[
        "add",
        "kit",
        "resumable",
        "--args",
        &pauses,
        "--name",
        "chatty",
        "--resume",
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    let waited = app.cli(&["wait", "chatty", "--json"]);
    let ended: Value =
        serde_json::from_str(&waited.stdout).unwrap_or_else(|_| panic!("{}", waited.dump()));
    assert_eq!(ended["state"], "failed", "{ended}");
    let error = ended["error"].as_str().unwrap();
    assert!(
        error.contains("at most 300 bytes ([limits] journal_bytes)") && error.contains("`sleep 1`"),
        "{error}"
    );
    let (api, _) = Api::of(&app);
    let journal = api.get(
        &routes::TASK_JOURNAL
            .path
            .replace("{id}", &ended["id"].to_string()),
    );
    let steps = journal["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("{journal}"));
    // The seed, the increment and some of the sleeps, not all 40.
    assert!(steps.len() > 2 && steps.len() < 40, "{journal}");
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// The tasks a resuming task starts are started once: killed while one
/// child had ended and the other slept, the parent replays both starts
/// and gets the same two tasks back (the ended one's result from its
/// record; the sleeping one resumed from its own journal), and no third
/// is started: the children's key-value increments were made twice in
/// all, not more.
#[test]
fn a_resumed_task_starts_its_children_once_and_joins_them() {
    let app = app();
    let host = app.spawn();
    let added = app.cli(&[
        "add",
        "kit",
        "starts_children",
        "--args",
        r#"{"short": [10], "long": [100, 4000]}"#,
        "--name",
        "parent",
        "--resume",
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    let (api, _) = Api::of(&app);
    let children = |api: &Api| -> Vec<Value> {
        api.get(&format!("{}?factory=resumable", routes::LIST_TASKS.path))
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    taskhost_tests::poll_until(taskhost_tests::secs(30), taskhost_tests::millis(20), || {
        let children = children(&api);
        let done = children.iter().filter(|c| c["state"] == "done").count();
        let sleeping = children.iter().any(|c| {
            let journal = api.get(
                &routes::TASK_JOURNAL
                    .path
                    .replace("{id}", &c["id"].to_string()),
            );
            journal["steps"]
                .as_array()
                .is_some_and(|steps| steps.iter().any(|s| s["call"] == "sleep 4000"))
        });
        match (done, sleeping) {
            (1, true) => Ok(()),
            _ => Err(format!("{children:?}")),
        }
    });
    host.signal("KILL");
    host.finish();

    let host = app.spawn();
    let waited = app.cli(&["wait", "parent", "--json"]);
    assert_eq!(waited.code, Some(0), "{}", waited.dump());
    let (api, _) = Api::of(&app);
    let parent = api.get(&format!("{}?name=parent", routes::LIST_TASKS.path))[0].clone();
    assert_eq!(parent["state"], "done", "{parent}");
    let result: Value = serde_json::from_str(parent["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["attempt"], 2, "{result}");
    let runs: Vec<u64> = result["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["runs"].as_u64().unwrap())
        .collect();
    let mut sorted = runs.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2], "each child counted once: {result}");
    let stored = app.cli(&["kv", "get", "kit/resume", "runs"]);
    assert_eq!(stored.stdout.trim(), "2", "{}", stored.dump());
    // The restarted host lists the same two children, no third.
    let children = children(&api);
    assert_eq!(children.len(), 2, "{children:?}");
    assert!(
        children.iter().all(|c| c["state"] == "done"),
        "{children:?}"
    );
    host.stop();
}

/// A task that resumes runs again on the build it began with: after the
/// crash app.toml points its plugin at another component (one without
/// the task's factory), and the task still resumes and ends on its first
/// build, which the storage kept, while new tasks get the new one.
#[test]
fn a_resuming_task_resumes_on_the_build_it_began_with() {
    let app = app();
    let host = app.spawn();
    let added = app.cli(&[
        "add",
        "kit",
        "resumable",
        "--args",
        r#"{"pauses": [100, 3000]}"#,
        "--name",
        "first-build",
        "--resume",
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    let (api, _) = Api::of(&app);
    let task =
        |api: &Api| api.get(&format!("{}?name=first-build", routes::LIST_TASKS.path))[0].clone();
    let began_on = task(&api)["plugin_version"].as_str().unwrap().to_string();
    await_journaled(&api, "first-build", "sleep 3000");
    host.signal("KILL");
    let first = host.finish();
    let drawn = random_logged(&first.lines, "first-build").expect("the first run drew a number");
    // Another component serves as `kit` from now on.
    let toml = std::fs::read_to_string(app.path()).unwrap();
    let testkit = taskhost_tests::plugin("testkit").display().to_string();
    let examples = taskhost_tests::plugin("examples").display().to_string();
    std::fs::write(app.path(), toml.replace(&testkit, &examples)).unwrap();

    let mut host = app.spawn();
    let waited = app.cli(&["wait", "first-build", "--json"]);
    assert_eq!(waited.code, Some(0), "{}", waited.dump());
    let (api, _) = Api::of(&app);
    let done = task(&api);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["plugin_version"], began_on.as_str(), "{done}");
    let result: Value = serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["random"], drawn, "{result}");
    assert_eq!(result["attempt"], 2, "{result}");
    let resumes_on = |l: &Value| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("first-build resumes on build"))
    };
    host.wait_for(1, resumes_on);
    let said = host.seen().iter().find(|l| resumes_on(l)).unwrap();
    assert!(
        said["message"].as_str().unwrap().contains(&began_on),
        "{said}"
    );
    // New tasks start on the build serving now, which has no such factory.
    let serving = api.get(routes::PLUGINS.path);
    let kit = serving
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kit")
        .unwrap_or_else(|| panic!("{serving}"));
    assert_ne!(kit["version"], began_on.as_str(), "{kit}");
    let refused = app.cli(&["add", "kit", "resumable", "--resume"]);
    assert_ne!(refused.code, Some(0), "{}", refused.dump());
    host.signal("TERM");
    assert_eq!(host.finish().code, Some(0));
}

/// A resuming task's event and config value come from its journal: after
/// the restart it does not wait for the event again (nobody dispatches it),
/// and it reads the greeting app.toml had before, not the one it has now.
#[test]
fn a_resumed_task_gets_its_event_and_config_from_the_journal() {
    let app = TestApp::new(
        r#"
        name = "durable"
        [plugins.kit]
        path = "{testkit}"
        [config]
        greeting = "before"
        "#,
    );
    let mut host = app.spawn();
    let added = app.cli(&[
        "add",
        "kit",
        "event_then_sleep",
        "--args",
        r#"{"event": "go", "ms": 4000}"#,
        "--name",
        "waiter",
        "--resume",
    ]);
    assert_eq!(added.code, Some(0), "{}", added.dump());
    let dispatched = app.cli(&["dispatch", "go", "first", "--wait-for", "1"]);
    assert_eq!(dispatched.code, Some(0), "{}", dispatched.dump());
    host.wait_for(1, |l| l["task"] == "waiter" && l["message"] == "got first");
    let (api, _) = Api::of(&app);
    await_journaled(&api, "waiter", "sleep 4000");
    host.signal("KILL");
    host.finish();
    // app.toml changes while the host is down.
    let toml = std::fs::read_to_string(app.path()).unwrap();
    std::fs::write(app.path(), toml.replace("\"before\"", "\"after\"")).unwrap();

    let host = app.spawn();
    let waited = app.cli(&["wait", "waiter", "--json"]);
    assert_eq!(waited.code, Some(0), "{}", waited.dump());
    let done = Api::of(&app)
        .0
        .get(&format!("{}?name=waiter", routes::LIST_TASKS.path));
    let result: Value = serde_json::from_str(done[0]["result"].as_str().unwrap()).unwrap();
    assert_eq!(result, json!({"got": "first", "greeting": "before"}));
    host.stop();
}
