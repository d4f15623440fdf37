//! Schedules against the real binary and the real database file: an
//! `every` schedule ticks at its rate, `overlap = "skip"` never runs two
//! at once, the CLI pauses, resumes and triggers, `check` lists a cron
//! expression's next fire times, `catch_up` handles the ticks that fell
//! while the host was down, and guests add and remove schedules.

use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use taskhost::control::routes;
use taskhost_tests::{Api, Run, Running, TestApp};

fn app(schedules: &str) -> TestApp {
    TestApp::new(&format!(
        r#"
        name = "scheduled"
        workers = 2
        [plugins.kit]
        path = "{{testkit}}"
        {schedules}
        "#
    ))
}

/// A log line's or a tick's RFC 3339 time.
fn time(text: &Value) -> SystemTime {
    let text = text.as_str().expect("a time");
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&chrono::Utc)
        .into()
}

fn fired<'a>(lines: &'a [Value], schedule: &str, trigger: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| {
            l["event"] == "schedule_fired" && l["schedule"] == schedule && l["trigger"] == trigger
        })
        .collect()
}

fn ticks(lines: &[&Value]) -> Vec<SystemTime> {
    lines.iter().map(|l| time(&l["tick"])).collect()
}

fn wait_fired(host: &mut Running, count: usize, schedule: &str, trigger: &'static str) {
    let schedule = schedule.to_string();
    host.wait_for(count, move |l| {
        l["event"] == "schedule_fired"
            && l["schedule"] == schedule.as_str()
            && l["trigger"] == trigger
    });
}

#[test]
fn an_every_200ms_schedule_runs_about_five_times_a_second_on_alternate_workers() {
    let app = app(r#"
        [[schedules]]
        name = "fast"
        plugin = "kit"
        factory = "nap"
        every = "200ms"
        args = { ms = 1 }
        "#);
    let mut host = app.spawn();
    wait_fired(&mut host, 11, "fast", "tick");
    // The 11th tick's task has started too before the host stops: a
    // fired tick whose task had not started yet (a loaded machine) has no
    // `started` line to read its worker from.
    let names: Vec<String> = fired(host.seen(), "fast", "tick")[..11]
        .iter()
        .map(|l| l["tasks"].as_str().unwrap().to_string())
        .collect();
    for name in &names {
        host.wait_for(1, |l| l["event"] == "started" && l["task"] == name.as_str());
    }
    host.signal("TERM");
    let run = host.finish();
    let lines = fired(&run.lines, "fast", "tick");
    let first = &lines[..11];
    // Ticks are 200 ms apart, none missed between the first and the 11th.
    let ticks = ticks(first);
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]).unwrap(),
            Duration::from_millis(200),
            "{}",
            run.dump()
        );
    }
    // And they fired in step with the clock: 10 intervals of 200 ms take
    // 2 s of wall time; the bounds leave room for a slow machine.
    let wall = time(&first[10]["timestamp"])
        .duration_since(time(&first[0]["timestamp"]))
        .unwrap();
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(6)).contains(&wall),
        "11 ticks took {wall:?}"
    );
    // `scope = "any"`: one task per tick, round robin over the workers.
    let workers: Vec<Value> = first
        .iter()
        .map(|l| {
            let task = l["tasks"].as_str().unwrap();
            run.event_of("started", task)[0]["worker"].clone()
        })
        .collect();
    for pair in workers.windows(2) {
        assert_ne!(pair[0], pair[1], "{workers:?}");
    }
}

#[test]
fn overlap_skip_never_runs_two_at_once_and_counts_the_misses() {
    let app = app(r#"
        [[schedules]]
        name = "slow"
        plugin = "kit"
        factory = "nap"
        every = "100ms"
        args = { ms = 250 }
        overlap = "skip"
        "#);
    let mut host = app.spawn();
    wait_fired(&mut host, 4, "slow", "tick");
    host.wait_for(1, |l| {
        l["event"] == "schedule_missed" && l["schedule"] == "slow"
    });
    let listed = app.cli(&["schedules", "--json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert!(listed[0]["misses"].as_u64().unwrap() >= 1, "{listed}");
    assert!(listed[0]["runs"].as_u64().unwrap() >= 4, "{listed}");
    host.signal("TERM");
    let run = host.finish();
    let mut running = 0;
    for line in &run.lines {
        let ours = line["task"]
            .as_str()
            .is_some_and(|t| t.starts_with("slow@"));
        if !ours {
            continue;
        }
        match line["event"].as_str() {
            Some("started") => running += 1,
            Some("done" | "failed" | "cancelled") => running -= 1,
            _ => {}
        }
        assert!(running <= 1, "two runs at once at {line}\n{}", run.dump());
    }
}

#[test]
fn pause_resume_and_trigger_work_from_the_cli() {
    let app = app(r#"
        [[schedules]]
        name = "tick"
        plugin = "kit"
        factory = "nap"
        every = "100ms"
        args = { ms = 150 }
        overlap = "allow"
        "#);
    let mut host = app.spawn();
    wait_fired(&mut host, 2, "tick", "tick");
    let paused = app.cli(&["schedule", "pause", "tick", "--json"]);
    assert_eq!(paused.code, Some(0), "{}", paused.stderr);
    let paused_at = SystemTime::now();
    let view: Value = serde_json::from_str(&paused.stdout).unwrap();
    assert_eq!(
        (view["paused"].clone(), view["next_at_ms"].clone()),
        (json!(true), Value::Null)
    );
    // Triggers run it while paused; the window they take holds ticks that
    // must not run.
    let mut triggered = Vec::new();
    for _ in 0..2 {
        let out = app.cli(&["schedule", "trigger", "tick", "--json"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let out: Value = serde_json::from_str(&out.stdout).unwrap();
        triggered.push(out["tasks"][0].as_str().unwrap().to_string());
    }
    for task in &triggered {
        let task = task.clone();
        host.wait_for(1, move |l| {
            l["event"] == "done" && l["task"] == task.as_str()
        });
    }
    let resumed_at = SystemTime::now();
    let resumed = app.cli(&["schedule", "resume", "tick"]);
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    let before = fired(host.seen(), "tick", "tick").len();
    wait_fired(&mut host, before + 1, "tick", "tick");
    let unknown = app.cli(&["schedule", "pause", "nope"]);
    assert_eq!(unknown.code, Some(3), "{}", unknown.stderr);
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(
        fired(&run.lines, "tick", "manual").len(),
        2,
        "{}",
        run.dump()
    );
    for tick in ticks(&fired(&run.lines, "tick", "tick")) {
        assert!(
            tick <= paused_at || tick >= resumed_at,
            "a tick ran while paused\n{}",
            run.dump()
        );
    }
    assert!(
        resumed_at.duration_since(paused_at).unwrap() > Duration::from_millis(100),
        "the paused window held no tick, so it proved nothing"
    );
}

#[test]
fn check_lists_a_cron_expressions_next_fire_times() {
    let app = app(r#"
        [[schedules]]
        name = "standup"
        plugin = "kit"
        factory = "nap"
        cron = "30 9 * * MON-FRI"
        timezone = "Europe/Berlin"
        args = { ms = 1 }
        [[schedules]]
        name = "thrice"
        plugin = "kit"
        factory = "nap"
        cron = "*/20 * * * * *"
        args = { ms = 1 }
        "#);
    // Friday 27 March 2026; Berlin moves to summer time on Sunday the 29th.
    let check = app.run_taskhost(&["check", "--from", "2026-03-27T00:00:05Z"]);
    assert_eq!(check.code, Some(0), "{}", check.dump());
    assert!(
        check.stdout.contains(
            "next 2026-03-27T08:30:00.000Z, 2026-03-30T07:30:00.000Z, \
             2026-03-31T07:30:00.000Z, 2026-04-01T07:30:00.000Z, 2026-04-02T07:30:00.000Z"
        ),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains(
            "next 2026-03-27T00:00:20.000Z, 2026-03-27T00:00:40.000Z, \
             2026-03-27T00:01:00.000Z, 2026-03-27T00:01:20.000Z, 2026-03-27T00:01:40.000Z"
        ),
        "{}",
        check.stdout
    );
    app.rewrite(
        r#"
        name = "scheduled"
        [plugins.kit]
        path = "{testkit}"
        [[schedules]]
        name = "bad"
        plugin = "kit"
        factory = "nap"
        cron = "61 * * * *"
        "#,
    );
    let check = app.check();
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains("schedules[0] (\"bad\")") && check.stderr.contains("`cron`"),
        "{}",
        check.stderr
    );
}

/// The tick of the last schedule line of `run` (fired or missed).
fn last_tick(run: &Run, schedule: &str) -> SystemTime {
    run.lines
        .iter()
        .filter(|l| {
            l["schedule"] == schedule
                && (l["event"] == "schedule_fired" || l["event"] == "schedule_missed")
        })
        .map(|l| time(&l["tick"]))
        .max()
        .expect("the schedule ticked")
}

fn catch_up_app(app: &TestApp, policy: &str) {
    app.rewrite(&format!(
        r#"
        name = "scheduled"
        [plugins.kit]
        path = "{{testkit}}"
        [[schedules]]
        name = "beat"
        plugin = "kit"
        factory = "nap"
        every = "200ms"
        args = {{ ms = 1 }}
        catch_up = "{policy}"
        "#
    ));
}

/// Runs the app until its schedule fired twice on its timer.
fn run_a_while(app: &TestApp) -> Run {
    let mut host = app.spawn();
    wait_fired(&mut host, 2, "beat", "tick");
    host.signal("TERM");
    host.finish()
}

#[test]
fn catch_up_handles_the_ticks_missed_while_the_host_was_down() {
    let period = Duration::from_millis(200);
    let app = app("");
    catch_up_app(&app, "none");
    let mut before = run_a_while(&app);
    // Each start below follows a stop by at least this long, so ticks fall
    // while no host runs (there is nothing to await: time has to pass).
    let down = Duration::from_millis(1000);

    // none: they are counted as missed, exactly those between the last
    // tick of the run before and the first of this one.
    std::thread::sleep(down);
    let run = run_a_while(&app);
    let missed = run.events("schedule_missed");
    assert_eq!(missed.len(), 1, "{}", run.dump());
    assert!(fired(&run.lines, "beat", "catch_up").is_empty());
    let first = ticks(&fired(&run.lines, "beat", "tick"))[0];
    let gap = first.duration_since(last_tick(&before, "beat")).unwrap();
    let expected = (gap.as_millis() / period.as_millis()) as u64 - 1;
    assert!(expected >= 4, "the host was down for only {gap:?}");
    assert_eq!(missed[0]["missed"], expected, "{}", run.dump());
    before = run;

    // one: a single run, for the last missed tick.
    catch_up_app(&app, "one");
    std::thread::sleep(down);
    let run = run_a_while(&app);
    let caught = ticks(&fired(&run.lines, "beat", "catch_up"));
    let first = ticks(&fired(&run.lines, "beat", "tick"))[0];
    assert_eq!(caught, vec![first - period], "{}", run.dump());
    assert!(caught[0] > last_tick(&before, "beat") + period);
    before = run;

    // all: one run per missed tick, in order, none left out.
    catch_up_app(&app, "all");
    std::thread::sleep(down);
    let run = run_a_while(&app);
    let caught = ticks(&fired(&run.lines, "beat", "catch_up"));
    let first = ticks(&fired(&run.lines, "beat", "tick"))[0];
    // A regular tick that came while the catch-up runs still went is
    // skipped (overlap = "skip") and logged as missed: a start just before
    // a tick makes one. It is not the catch-up's to run.
    let skipped: Vec<SystemTime> = run
        .lines
        .iter()
        .filter(|l| l["event"] == "schedule_missed" && l["schedule"] == "beat")
        .flat_map(|l| {
            let last = time(&l["tick"]);
            let count = l["missed"].as_u64().unwrap() as u32;
            (0..count).map(move |back| last - period * back)
        })
        .collect();
    let mut expected = Vec::new();
    let mut tick = last_tick(&before, "beat") + period;
    while tick < first {
        if !skipped.contains(&tick) {
            expected.push(tick);
        }
        tick += period;
    }
    assert!(expected.len() >= 4, "{}", run.dump());
    assert_eq!(caught, expected, "{}", run.dump());
    // Every catch-up run started a task that ran.
    for line in fired(&run.lines, "beat", "catch_up") {
        let task = line["tasks"].as_str().unwrap();
        assert_eq!(run.event_of("done", task).len(), 1, "{}", run.dump());
    }
}

#[test]
fn guests_add_and_remove_schedules_which_outlive_a_restart() {
    let app = app(r#"
        [[schedules]]
        name = "fixed"
        plugin = "kit"
        factory = "nap"
        every = "1h"
        args = { ms = 1 }
        "#);
    let steer = |api: &Api, name: &str, spec: Value, remove: bool| -> Value {
        api.post(
            routes::SUBMIT.path,
            json!({"plugin": "kit", "factory": "steer_schedule", "name": name,
                   "args": {"spec": spec, "remove": remove}}),
        );
        Value::Null
    };
    let spec = json!({"name": "guest", "factory": "nap", "every": "100ms", "args": {"ms": 1}});
    let mut host = app.spawn();
    let (api, _) = Api::of(&app);
    steer(&api, "add", spec.clone(), false);
    steer(
        &api,
        "bad",
        json!({"name": "worse", "factory": "nap"}),
        false,
    );
    steer(
        &api,
        "clash",
        json!({"name": "fixed", "factory": "nap", "every": "1s"}),
        false,
    );
    steer(&api, "remove-fixed", json!({"name": "fixed"}), true);
    wait_fired(&mut host, 2, "guest", "tick");
    for name in ["add", "bad", "clash", "remove-fixed"] {
        host.wait_for(1, move |l| l["event"] == "done" && l["task"] == name);
    }
    let listed = app.cli(&["schedules", "--json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    let guest = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "guest")
        .unwrap();
    assert_eq!(guest["added"], true, "{listed}");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.results_of("add")[0]["added"], "ok", "{}", run.dump());
    let bad = &run.results_of("bad")[0];
    assert_eq!(bad["added"], "InvalidArgs", "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("`every`"), "{bad}");
    let clash = &run.results_of("clash")[0];
    assert!(
        clash["error"].as_str().unwrap().contains("app.toml"),
        "{clash}"
    );
    assert_eq!(run.results_of("remove-fixed")[0]["removed"], "Failed");

    // Kept in storage: it ticks after a restart, until a guest removes it.
    let mut host = app.spawn();
    wait_fired(&mut host, 1, "guest", "tick");
    let (api, _) = Api::of(&app);
    steer(&api, "remove", json!({"name": "guest"}), true);
    host.wait_for(1, |l| l["event"] == "done" && l["task"] == "remove");
    let listed = app.cli(&["schedules", "--json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(
        run.results_of("remove")[0]["removed"],
        "ok",
        "{}",
        run.dump()
    );
}

/// Issue 24, item 3: schedules guests add are bounded per plugin and per
/// app, and a replacement takes no more room. Before, 400,000 of them
/// were all kept (2,855 MiB resident, and every restart loaded them all);
/// here the third add was taken too.
#[test]
fn schedules_guests_add_are_bounded_per_plugin() {
    let app = app(r#"
        [limits]
        schedules_per_plugin = 2
        "#);
    let mut host = app.spawn();
    let (api, _) = Api::of(&app);
    let add = |name: &str, schedule: &str| {
        api.post(
            routes::SUBMIT.path,
            json!({"plugin": "kit", "factory": "steer_schedule", "name": name,
                   "args": {"spec": {"name": schedule, "factory": "nap", "every": "1h",
                                     "args": {"ms": 1}}}}),
        );
    };
    // One after the other: each waits for the one before to be recorded.
    for (task, schedule) in [
        ("one", "g1"),
        ("two", "g2"),
        ("three", "g3"),
        ("again", "g1"),
    ] {
        add(task, schedule);
        host.wait_for(1, move |l| l["event"] == "done" && l["task"] == task);
    }
    host.signal("TERM");
    let run = host.finish();
    for task in ["one", "two", "again"] {
        assert_eq!(run.results_of(task)[0]["added"], "ok", "{}", run.dump());
    }
    let third = &run.results_of("three")[0];
    assert_eq!(third["added"], "Limit", "{third}");
    let error = third["error"].as_str().unwrap();
    assert!(
        error.contains("schedules added by plugin kit may be at most 2 schedules, got 3")
            && error.contains("[limits] schedules_per_plugin"),
        "{error}"
    );
    // The refused one was not stored: two come back after a restart.
    let host = app.spawn();
    let listed = app.cli(&["schedules", "--json"]);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["g1", "g2"], "{listed}");
    host.stop();
}

#[test]
fn the_readme_schedule_checks_and_lists_its_fire_times() {
    let readme = std::fs::read_to_string(taskhost_tests::repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Time and durability")
        .expect("README has the section")..];
    let block = &section[section.find("```toml\n").unwrap() + 8..];
    let block = &block[..block.find("```").unwrap()];
    let app = TestApp::new(&format!(
        "name = \"readme\"\n[plugins.examples]\npath = \"{{examples}}\"\n{block}"
    ));
    let check = app.run_taskhost(&["check", "--from", "2026-12-01T10:00:05Z"]);
    assert_eq!(check.code, Some(0), "{}", check.dump());
    assert!(
        check.stdout.contains(
            "schedule refresh (examples/slow_work, every 30s): next 2026-12-01T10:00:30.000Z, \
             2026-12-01T10:01:00.000Z, 2026-12-01T10:01:30.000Z"
        ),
        "{}",
        check.stdout
    );
}
