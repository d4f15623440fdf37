//! The Python and JavaScript SDKs, one table over the two languages:
//! `plugins/py-examples` and `plugins/js-examples`, built by `taskhost build`
//! (componentize-py; esbuild and componentize-js; installed by taskhost
//! into its cache) and run through the real binary. Each test here runs
//! once per language (`guests::python::...`, `guests::js::...`); what the
//! two languages do differently (a traceback or a stack, how running out
//! of memory looks) is a field of [`Language`]. What only Python has (its
//! build cache, editing a plugin) is in `python.rs`.

use serde_json::{Value, json};
use taskhost_tests::{Run, TestApp, hello_server};

/// One guest language and what its example plugin does its own way.
pub(crate) struct Language {
    /// `py` or `js`: the plugin's name in app.toml and the app's name.
    pub(crate) short: &'static str,
    /// The placeholder of its built example plugin.
    examples: &'static str,
    /// Whether an uncaught error's text is the language's own, naming the
    /// helper it came from.
    uncaught: fn(&str) -> bool,
    /// What `hog` (200 MiB against the 64 MiB default) returns: the
    /// guest's own out-of-memory, caught.
    out_of_memory: &'static str,
    /// What `tour` answers beyond the fields both answer.
    tour_extra: fn(&mut serde_json::Map<String, Value>),
    /// The `unknown argument` message, as the SDK words it.
    unknown_argument: &'static str,
    /// Whether the error of a request the allow-list denied is the SDK's
    /// own, naming the request.
    denied: fn(&str) -> bool,
    /// Whether a cancel of a task waiting for an HTTP response is tested
    /// (JavaScript's is not yet).
    cancels_http_waits: bool,
}

pub(crate) const PYTHON: Language = Language {
    short: "py",
    examples: "{py-examples}",
    uncaught: |error| {
        error.contains("Traceback")
            && error.contains("helper_that_fails")
            && error.contains("ValueError: the python guest blew up")
    },
    out_of_memory: "MemoryError",
    tour_extra: |_| {},
    unknown_argument: "unknown argument `colour`",
    denied: |error| {
        error.contains("HttpError: GET http://127.0.0.1:9/nowhere failed: HttpRequestDenied")
    },
    cancels_http_waits: true,
};

pub(crate) const JS: Language = Language {
    short: "js",
    examples: "{js-examples}",
    uncaught: |error| {
        error.starts_with("TypeError: the js guest blew up") && error.contains("helperThatFails@")
    },
    out_of_memory: "caught string: out of memory",
    // u64 ids arrive as plain numbers.
    tour_extra: |tour| {
        tour.insert("id_type".into(), json!("number"));
    },
    unknown_argument: "unknown argument `colour` (it takes: flag, label, num)",
    // fetch() (StarlingMonkey's) rejects with a NetworkError that does not
    // say why; the host's log line, checked for both languages, names the
    // grant to add.
    denied: |error| error.starts_with("TypeError: NetworkError when attempting to fetch resource"),
    cancels_http_waits: false,
};

impl Language {
    /// An app of two workers with the example plugin as `short`, `extra`
    /// after its table, `[config] greeting` and `tasks`.
    pub(crate) fn app(&self, extra: &str, tasks: &str) -> TestApp {
        TestApp::new(&format!(
            r#"
            name = "{short}"
            workers = 2
            [plugins.{short}]
            path = "{examples}"
            {extra}
            [config]
            greeting = "hallo"
            {tasks}
            "#,
            short = self.short,
            examples = self.examples,
        ))
    }

    /// A `[[tasks]]` entry of the example plugin.
    pub(crate) fn task(&self, factory: &str, name: &str, args: &str) -> String {
        format!(
            "[[tasks]]\nplugin = \"{}\"\nfactory = \"{factory}\"\nname = \"{name}\"\nargs = {args}\n",
            self.short
        )
    }
}

/// Each test once per language, as `python::NAME` and `js::NAME`.
macro_rules! per_language {
    ($(fn $name:ident($lang:ident: &Language) $body:block)*) => {
        $(fn $name($lang: &Language) $body)*
        mod python {
            $(#[test] fn $name() { super::$name(&super::PYTHON) })*
        }
        mod js {
            $(#[test] fn $name() { super::$name(&super::JS) })*
        }
    };
}

per_language! {
    fn variables_are_read_through_wasi_config(lang: &Language) {
        let short = lang.short;
        let run = lang
            .app(
                &format!(
                    "[plugins.{short}.variables]\ndb_url = \"postgres://127.0.0.1/x\"\nport = 5432"
                ),
                &lang.task("variables", "vars", "{}"),
            )
            .run_until_idle()
            .ok();
        let all = json!({"db_url": "postgres://127.0.0.1/x", "port": "5432"});
        assert_eq!(
            run.results_of("vars"),
            vec![json!({"url": "postgres://127.0.0.1/x", "missing": "fallback", "all": all}); 2],
            "{}",
            run.dump()
        );
    }

    fn a_fan_out_joins_its_children_and_sums_their_squares(lang: &Language) {
        let run = lang
            .app("", &lang.task("fan_out", "fan", "{ n = 10 }"))
            .run_until_idle()
            .ok();
        // One fan-out per worker, each joining its own ten children.
        assert_eq!(run.results_of("fan"), vec![json!(385); 2], "{}", run.dump());
        assert_eq!(
            run.events("done")
                .iter()
                .filter(|l| l["factory"] == "square")
                .count(),
            20,
            "{}",
            run.dump()
        );
    }

    fn a_supervised_task_started_by_a_guest_is_restarted_then_given_up(lang: &Language) {
        let run = lang
            .app("", &lang.task("supervise", "starter", "{}"))
            .run_until_idle();
        assert_eq!(run.code, Some(1), "{}", run.dump());
        // One `supervised` per worker, each restarted twice, then failed
        // past its intensity.
        let restarted = run.event_of("restarting", "supervised");
        assert_eq!(restarted.len(), 4, "{}", run.dump());
        assert!(
            restarted.iter().all(|l| l["delay_ms"] == 10.0 || l["delay_ms"] == 20.0),
            "{}",
            run.dump()
        );
        let failed = run.event_of("failed", "supervised");
        assert_eq!(failed.len(), 2, "{}", run.dump());
        assert!(
            failed.iter().all(|l| l["error"]
                .as_str()
                .is_some_and(|e| e.contains("`restart.intensity`") && e.contains("blew up"))),
            "{}",
            run.dump()
        );
    }

    fn a_task_is_started_in_a_queue_and_read_back_queued(lang: &Language) {
        let run = lang
            .app("[[queues]]\nname = \"held\"", &lang.task("place", "placer", "{}"))
            .run_until_idle()
            .ok();
        assert_eq!(
            run.results_of("placer"),
            vec![json!({"state": "queued"}); 2],
            "{}",
            run.dump()
        );
        let queued = run.events("queued");
        assert!(
            queued.iter().all(|l| l["queue"] == "held" && l["key"] == "acme" && l["priority"] == 3),
            "{}",
            run.dump()
        );
    }

    fn tasks_run_per_worker_with_typed_args_app_calls_fetch_and_errors(lang: &Language) {
        let address = hello_server();
        let short = lang.short;
        let run = lang
            .app(
                &format!("[plugins.{short}.grants]\nhttp = [\"http://{address}\"]"),
                &[
                    lang.task("slow_work", "slow", "{ ms = 10 }"),
                    lang.task("auto_inject", "inject", "{}"),
                    lang.task("typed", "typed", r#"{ num = 7, label = "seven" }"#),
                    lang.task("tour", "tour", "{}"),
                    lang.task("boom", "boom", "{}"),
                    lang.task("hog", "hog", "{ mb = 200 }"),
                    lang.task(
                        "fetch_text",
                        "fetch",
                        &format!(r#"{{ url = "http://{address}/hello" }}"#),
                    ),
                    lang.task(
                        "fetch_text",
                        "denied",
                        r#"{ url = "http://127.0.0.1:9/nowhere" }"#,
                    ),
                ]
                .concat(),
            )
            .run_until_idle();
        assert_eq!(run.code, Some(1), "boom fails the run\n{}", run.dump());
        // Startup tasks run once per worker.
        assert_eq!(run.messages("slow work done").len(), 2, "{}", run.dump());
        // The injected app knows its name, worker and config.
        let mut injected = run.results_of("inject");
        injected.sort_by_key(|r| r["worker"].as_u64());
        assert_eq!(
            injected,
            vec![
                json!({"app": short, "worker": 0, "greeting": "hallo"}),
                json!({"app": short, "worker": 1, "greeting": "hallo"}),
            ],
            "{}",
            run.dump()
        );
        assert_eq!(
            run.results_of("typed")[0],
            json!({"num": 7, "label": "seven", "flag": null})
        );
        // Every app call, and errors as the SDK's classes.
        let mut tour = json!({"seen": "running", "missing": "NotFound", "bad_args": "InvalidArgs",
                              "cancelled": "cancelled", "woken": 0, "listed": true, "purged": true,
                              "greeting": "hallo"});
        (lang.tour_extra)(tour.as_object_mut().unwrap());
        assert_eq!(run.results_of("tour")[0], tour, "{}", run.dump());
        // An uncaught error fails the task with the language's own account
        // of it (a traceback, a stack).
        let error = run.event_of("failed", "boom")[0]["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!((lang.uncaught)(&error), "{error}");
        // 200 MiB against the 64 MiB default: the guest catches running out.
        assert_eq!(
            run.results_of("hog")[0],
            json!(lang.out_of_memory),
            "{}",
            run.dump()
        );
        // Outbound HTTP goes through the host's wasi:http and its allow-list.
        assert_eq!(
            run.results_of("fetch")[0],
            json!({"status": 200, "body": "hello from the test server"}),
            "{}",
            run.dump()
        );
        let denied = run.event_of("failed", "denied");
        assert_eq!(denied.len(), 2, "{}", run.dump());
        let error = denied[0]["error"].as_str().unwrap_or_default();
        assert!((lang.denied)(error), "{error}");
        let denials = run
            .lines
            .iter()
            .filter(|l| {
                l["message"].as_str().is_some_and(|m| {
                    m.contains("http://127.0.0.1:9 denied")
                        && m.contains(&format!("[plugins.{short}.grants] http"))
                })
            })
            .count();
        assert!(denials >= 1, "the host says what to allow\n{}", run.dump());
    }

    fn arguments_are_checked_by_name_and_type_before_anything_runs(lang: &Language) {
        for (args, says) in [
            (
                r#"{ num = "x", label = "l" }"#,
                "argument `num` must be an integer, got \"x\"",
            ),
            (r#"{ num = 1.5, label = "l" }"#, "must be an integer, got 1.5"),
            (r#"{ num = 1 }"#, "missing argument `label`"),
            (r#"{ num = 1, label = "l", colour = "red" }"#, lang.unknown_argument),
        ] {
            let check = lang.app("", &lang.task("typed", "typed", args)).check();
            assert_eq!(check.code, Some(2), "{args}: {}", check.dump());
            // The whole run on failure: its stdout holds the host's
            // warnings (a compile cache entry rejected, say).
            assert!(check.stderr.contains(says), "{args}: {}", check.dump());
        }
        let check = lang.app("", &lang.task("no_such", "x", "{}")).check();
        assert_eq!(check.code, Some(2), "{}", check.dump());
        assert!(
            check.stderr.contains("slow_work"),
            "lists the factories: {}",
            check.stderr
        );
    }

    fn a_cancel_runs_finally_the_feed_cleans_up_and_a_loop_is_forced(lang: &Language) {
        let short = lang.short;
        let address = hello_server();
        let mut tasks = vec![
            lang.task("sleeper", "sleeper", r#"{ marker = "m1" }"#),
            lang.task("spinner", "spinner", "{}"),
            lang.task("feed", "feed", &format!(r#"{{ events = 100, event = "{short}.feed" }}"#)),
        ];
        if lang.cancels_http_waits {
            tasks.push(lang.task(
                "fetch_text",
                "waiting",
                &format!(r#"{{ url = "http://{address}/slow" }}"#),
            ));
        }
        let app = lang.app(
            &format!("[plugins.{short}.grants]\nhttp = [\"http://{address}\"]"),
            &tasks.concat(),
        );
        let mut host = app.spawn();
        for name in ["spinner", "sleeper", "feed"] {
            host.wait_for(2, |l| l["event"] == "started" && l["task"] == name);
        }
        host.wait_for(2, |l| {
            l["event"] == "started"
                && l["task"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("receiver:"))
        });
        // A large image: every instance came from the warm image pool.
        let made = |pool: &str| {
            app.metric(&format!("taskhost_instances_total{{pool=\"{pool}\"}}"))
                .unwrap_or(0.0)
        };
        assert!(made("warm_images") >= 8.0, "{}", made("warm_images"));
        assert_eq!((made("warm"), made("cold"), made("on_demand")), (0.0, 0.0, 0.0));
        // The sleeper's cleanup runs in its `finally`, whatever catches the
        // cancel on the way: it ends cancelled, cooperatively.
        let cancelled = app.cli(&["cancel", "sleeper", "--worker", "0", "--json"]);
        assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);
        let ended: Value = serde_json::from_str(cancelled.stdout.trim()).unwrap();
        assert_eq!(ended[0]["state"], "cancelled", "{ended}");
        assert_eq!(ended[0]["cancel_stage"], "cooperative", "{ended}");
        let cleaned = app.cli(&["kv", "get", &format!("{short}/cleanup"), "m1"]);
        assert!(cleaned.stdout.contains("cleaned up"), "{}", cleaned.dump());
        // A task waiting on an HTTP response sees the cancel as Cancelled.
        if lang.cancels_http_waits {
            host.wait_for(2, |l| l["event"] == "started" && l["task"] == "waiting");
            let waiting = app.cli(&["cancel", "waiting", "--worker", "0", "--json"]);
            let waiting: Value = serde_json::from_str(waiting.stdout.trim()).unwrap();
            assert_eq!(waiting[0]["state"], "cancelled", "{waiting}");
            assert_eq!(waiting[0]["cancel_stage"], "cooperative", "{waiting}");
        }
        // The seed's feed: a message reaches both receivers; cancelling a
        // feed cancels its receiver in its `finally`.
        let sent = app.cli(&["dispatch", "message", "hi there", "--wait-for", "4"]);
        assert_eq!(sent.code, Some(0), "{}", sent.dump());
        host.wait_for(2, |l| l["message"] == "received hi there");
        let feed = app.cli(&["cancel", "feed", "--worker", "1", "--json"]);
        assert_eq!(feed.code, Some(0), "{}", feed.dump());
        host.wait_for(1, |l| {
            l["event"] == "cancelled"
                && l["worker"] == 1
                && l["task"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("receiver:"))
        });
        // The interpreter's snapshot is mapped copy-on-write, not copied.
        let plugins = app.cli(&["plugins", "--json"]);
        let plugins: Value = serde_json::from_str(plugins.stdout.trim()).unwrap();
        assert_eq!(plugins[0]["memory_image"], "copy_on_write", "{plugins}");
        let forced = app.cli(&["cancel", "spinner", "--worker", "0", "--json"]);
        let forced: Value = serde_json::from_str(forced.stdout.trim()).unwrap();
        assert_eq!(forced[0]["cancel_stage"], "forced", "{forced}");
        host.signal("TERM");
        let run = host.finish();
        assert_sdk_cancels(lang, &run);
    }

    fn tasks_past_the_warm_image_pool_run_on_demand_and_any_is_forced(lang: &Language) {
        // One warm image slot, two spinners (one per worker): one spins in
        // the slot, the other on demand, and a forced cancel reaches both
        // engines' instances.
        let app = lang.app(
            "[limits]\nwarm_image_instances = 1",
            &lang.task("spinner", "spinner", "{}"),
        );
        let mut host = app.spawn();
        host.wait_for(2, |l| l["event"] == "started" && l["task"] == "spinner");
        for worker in ["0", "1"] {
            let forced = app.cli(&["cancel", "spinner", "--worker", worker, "--json"]);
            let forced: Value = serde_json::from_str(forced.stdout.trim()).unwrap();
            assert_eq!(forced[0]["cancel_stage"], "forced", "{forced}");
        }
        // The freed slot takes the next task.
        app.cli(&["add", lang.short, "noop", "--name", "after"]).ok();
        host.wait_for(1, |l| l["event"] == "done" && l["task"] == "after");
        host.signal("TERM");
        host.finish();
    }

    fn a_feed_serves_the_seeds_websocket_session(lang: &Language) {
        let app = lang.app(
            &format!(
                r#"
                [[routes]]
                websocket = "/feed"
                plugin = "{}"
                factory = "feed"
                "#,
                lang.short
            ),
            "",
        );
        let (mut host, address) = taskhost_tests::routes::start(&app);
        taskhost_tests::routes::seed_session(&app, &mut host, address, "/feed", 2);
        host.signal("TERM");
        let run = host.finish();
        assert_eq!(run.code, Some(0), "{}", run.dump());
    }

    // `durable = "resume"` for the language's guest: killed with `kill -9`
    // in its last sleep, it resumes; what it drew from its random
    // module and read from its clock before the crash are what it reads
    // on replay, its key-value count is not made again, and its sleeps
    // are not slept again.
    fn a_resuming_task_draws_and_reads_the_same_after_kill_9(lang: &Language) {
        use taskhost::control::routes;
        let app = lang.app("", "");
        let short = lang.short;
        let mut host = app.spawn();
        let added = app.cli(&[
            "add",
            short,
            "resumable",
            "--args",
            r#"{"short_ms": 100, "long_ms": 8000}"#,
            "--name",
            "resumer",
            "--resume",
        ]);
        assert_eq!(added.code, Some(0), "{}", added.dump());
        host.wait_for(1, |l| l["task"] == "resumer" && l["message"] == "slept 2");
        let (api, _) = taskhost_tests::Api::of(&app);
        let journal = |api: &taskhost_tests::Api| -> Value {
            let id = api.get(&format!("{}?name=resumer", routes::LIST_TASKS.path))[0]["id"].clone();
            api.get(&routes::TASK_JOURNAL.path.replace("{id}", &id.to_string()))
        };
        taskhost_tests::poll_until(taskhost_tests::secs(30), taskhost_tests::millis(20), || {
            let journal = journal(&api);
            let calls = journal["steps"].as_array().cloned().unwrap_or_default();
            match calls.iter().any(|s| s["call"] == "sleep 8000") {
                true => Ok(()),
                false => Err(format!("{journal}")),
            }
        });
        let before = host
            .seen()
            .iter()
            .find_map(|l| {
                (l["task"] == "resumer")
                    .then(|| l["message"].as_str()?.strip_prefix("drew ").map(String::from))
                    .flatten()
            })
            .expect("the first run drew and read");
        host.signal("KILL");
        host.finish();

        let host = app.spawn();
        let waited = app.cli(&["wait", "resumer", "--json"]);
        assert_eq!(waited.code, Some(0), "{}", waited.dump());
        let done = api_after(&app).get(&format!("{}?name=resumer", routes::LIST_TASKS.path));
        assert_eq!(done[0]["state"], "done", "{done}");
        let result: Value = serde_json::from_str(done[0]["result"].as_str().unwrap()).unwrap();
        assert_eq!(
            format!("{} at {}", result["drawn"], result["at"]),
            before,
            "the same number and time on replay: {result}"
        );
        assert_eq!(result["runs"], 1, "{result}");
        assert_eq!(result["attempt"], 2, "{result}");
        host.stop();
    }
}

/// What each SDK says of the cancels in `run`: Python's never lets a
/// broad `except` swallow one; JavaScript's sleeper catches `Cancelled`
/// on each worker and still ends cancelled.
fn assert_sdk_cancels(lang: &Language, run: &Run) {
    match lang.short {
        "py" => assert!(
            run.messages("a broad except caught the cancel: a bug in the SDK")
                .is_empty(),
            "{}",
            run.dump()
        ),
        _ => assert_eq!(run.messages("caught Cancelled").len(), 2, "{}", run.dump()),
    }
}

/// The API of `app`'s host (after a restart: its token changed).
fn api_after(app: &TestApp) -> taskhost_tests::Api {
    taskhost_tests::Api::of(app).0
}
