//! `[limits]` are checked in app.toml and hold exactly where they
//! say (the full hostile set is in `hostile.rs`).

use taskhost_tests::TestApp;

#[test]
fn a_spawn_bomb_gets_a_limit_error_at_the_per_worker_cap() {
    let app = TestApp::new(
        r#"
        name = "spawns"
        workers = 1
        [limits]
        tasks_per_worker = 20
        [plugins.hostile]
        path = "{hostile}"
        [[tasks]]
        plugin = "hostile"
        factory = "spawn_bomb"
        name = "bomb"
        "#,
    );
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    let report = &run.results_of("bomb")[0];
    // The bomb itself is one of the 20 live tasks.
    assert_eq!(report["spawned"], 19, "{report}");
    assert_eq!(report["kind"], "Limit", "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("tasks_per_worker"),
        "{report}"
    );
    // Every spawned waiter was cancelled and ended.
    assert_eq!(run.events("cancelled").len(), 19, "{}", run.dump());
    assert_eq!(run.events("done").len(), 1, "{}", run.dump());
}

#[test]
fn limits_are_checked_in_app_toml() {
    let app = TestApp::new("name = \"x\"\n[limits]\nmemory_mb = 0\n");
    let run = app.check();
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr
            .contains("[limits] `memory_mb` must be at least 1"),
        "{}",
        run.dump()
    );
    let app = TestApp::new("name = \"x\"\n[limits]\nmemroy_mb = 8\n");
    let run = app.check();
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("unknown field `memroy_mb`"),
        "{}",
        run.dump()
    );
}

/// A pool too large to reserve, and one that could pass the kernel's cap on
/// memory mappings, do not stop the host: it says so, says what to do, and
/// runs its tasks on the slower allocator.
#[test]
fn an_oversized_instance_pool_is_named_and_the_host_still_runs() {
    let instances: u64 = 40_000;
    let app = TestApp::new(&format!(
        r#"
        name = "big-pool"
        workers = 1
        [limits]
        instances = {instances}
        [plugins.examples]
        path = "{{examples}}"
        [[tasks]]
        plugin = "examples"
        factory = "even_slower"
        name = "work"
        args = {{ num = 1 }}
        "#
    ));
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(
        run.results_of("work"),
        vec![serde_json::json!(1)],
        "{}",
        run.dump()
    );
    let said = format!("{}{}", run.stdout, run.stderr);
    // 40,000 slots of 8 GiB are 320 TiB: more than a 47-bit address space.
    assert!(
        said.contains(&format!("instance pool of {instances} slots unavailable"))
            && said.contains("lower [limits] instances"),
        "{}",
        run.dump()
    );
    // The map-count warning depends on this machine's setting: it must
    // appear exactly when the pool could need more mappings than allowed.
    let max_map_count: u64 = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .expect("/proc/sys/vm/max_map_count")
        .trim()
        .parse()
        .expect("a number");
    assert_eq!(
        said.contains("vm.max_map_count is"),
        instances * 6 + 1000 > max_map_count,
        "{}",
        run.dump()
    );
}

/// When the kernel refuses the mappings an instance needs (here a 3 GiB
/// address-space cap, less than one 4 GiB memory reservation), the refusal
/// names the plugin and says which settings to change, instead of a bare
/// "Cannot allocate memory".
#[test]
fn a_refused_memory_mapping_is_explained() {
    let app = TestApp::new(
        r#"
        name = "capped"
        [plugins.examples]
        path = "{examples}"
        "#,
    );
    let run = app.check_with_address_space(3 << 20);
    assert_eq!(run.code, Some(2), "{}", run.dump());
    assert!(
        run.stderr.contains("plugin `examples`")
            && run.stderr.contains("the kernel refused a memory mapping")
            && run.stderr.contains("ulimit -v")
            && run.stderr.contains("vm.max_map_count"),
        "{}",
        run.dump()
    );
}
