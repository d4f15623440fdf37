//! Memory that tasks used comes back when they end. A host that
//! once ran thousands of tasks must not keep their memory resident.

use serde_json::json;
use taskhost::control::routes;
use taskhost_tests::{Api, TestApp};

/// Resident memory of process `pid`, in MiB.
fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

/// What the host may keep after its tasks ended, over what it held
/// before: the warm pool's bound (`[limits] warm_instances`, 128 slots,
/// each keeping at most 256 KiB per memory for two memories and 64 KiB of
/// stack: 72 MiB, see `engine::warm_resident_bound`), plus room for what
/// the allocator keeps (14 MiB measured).
const BOUND_MIB: f64 = 72.0 + 48.0;

#[test]
fn memory_comes_back_after_two_thousand_sleepers_twice() {
    let app = TestApp::new(
        r#"
        name = "cycle"
        workers = 2
        [plugins.examples]
        path = "{examples}"
        "#,
    );
    let _host = app.spawn();
    let (api, pid) = Api::of(&app);
    let baseline = resident_mib(pid);
    for round in 0..2 {
        for i in 0..2000 {
            api.post(
                routes::SUBMIT.path,
                json!({"plugin": "examples", "factory": "sleeper", "name": format!("s{i}"),
                       "worker": i % 2}),
            );
        }
        let live = resident_mib(pid);
        for i in 0..2000 {
            let ended = api.post(routes::CANCEL.path, json!({"name": format!("s{i}")}));
            assert_eq!(ended[0]["state"], "cancelled", "{ended}");
        }
        let purged = api.post(routes::PURGE.path, json!({}));
        assert_eq!(purged["purged"], 2000, "{purged}");
        let after = resident_mib(pid);
        eprintln!(
            "round {round}: baseline {baseline:.1} MiB, 2000 live {live:.1} MiB, after {after:.1} MiB"
        );
        assert!(
            after - baseline <= BOUND_MIB,
            "round {round}: resident memory {after:.1} MiB after the tasks ended, \
             {baseline:.1} MiB before: more than {BOUND_MIB} MiB kept"
        );
    }
}
