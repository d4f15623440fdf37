//! The compile cache: a second load of an unchanged component compiles
//! nothing; a changed component is compiled again.

use taskhost::application::Application;
use taskhost::config::AppConfig;
use taskhost::engine::EngineSettings;
use taskhost::plugin::build::BuildOptions;
use taskhost_tests::TestApp;

/// An app with the examples plugin and no task.
const EXAMPLES: &str = r#"
    name = "cached"
    [plugins.examples]
    path = "{examples}"
"#;

async fn load(app: &TestApp, cache: &std::path::Path) -> (usize, usize) {
    let config = AppConfig::load(&app.path()).unwrap();
    let settings = EngineSettings {
        compile_cache: Some(cache.to_path_buf()),
        ..EngineSettings::default()
    };
    let application = Application::load(config, &settings, &BuildOptions::default())
        .await
        .unwrap();
    let cache = application.compile_cache().expect("cache enabled");
    (cache.hits(), cache.misses())
}

#[tokio::test]
async fn an_unchanged_component_loads_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let app = TestApp::new(EXAMPLES);
    assert_eq!(
        load(&app, cache.path()).await,
        (0, 1),
        "first load compiles"
    );
    assert_eq!(load(&app, cache.path()).await, (1, 0), "second load hits");

    // Another component (a different file's content) is a miss again.
    let other = TestApp::new(
        r#"
        name = "cached"
        [plugins.kit]
        path = "{testkit}"
        "#,
    );
    assert_eq!(load(&other, cache.path()).await, (0, 1));
}

/// The cache entry files under `dir` (everything but the key).
fn entries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "key"))
        .collect()
}

/// wasmtime runs cached code unchecked: a damaged entry must never reach
/// it. Each flipped byte (in the header, the checksum, the code) makes the
/// host compile again, run, and store a good entry.
#[test]
fn a_damaged_entry_is_compiled_again_and_the_host_runs() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let app = TestApp::new(
        r#"
        name = "cached"
        [plugins.examples]
        path = "{examples}"
        [[tasks]]
        plugin = "examples"
        factory = "auto_inject"
        name = "inject"
        "#,
    );
    let run = || {
        let run = app.run_taskhost(&[
            "run",
            "--until-idle",
            "--log-format",
            "json",
            "--compile-cache",
            dir,
        ]);
        assert_eq!(run.code, Some(0), "{}", run.dump());
        assert_eq!(
            run.results_of("inject"),
            vec![serde_json::json!("cached")],
            "{}",
            run.dump()
        );
        run
    };
    run();
    let stored = entries(cache.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    let entry = &stored[0];
    let good = std::fs::read(entry).unwrap();
    let len = good.len();
    for offset in [0, 7, 8, 20, 39, 40, 41, 1000, len / 3, len / 2, len - 1] {
        let mut damaged = good.clone();
        damaged[offset] ^= 0x10;
        std::fs::write(entry, &damaged).unwrap();
        let run = run();
        assert!(
            run.lines.iter().any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("rejected"))),
            "offset {offset}: the damaged entry was not noticed\n{}",
            run.dump()
        );
        // The entry was rewritten: the next start compiles nothing.
        let check = app.run_taskhost(&["check", "--compile-cache", dir]);
        assert!(
            check.stdout.contains("1 hit(s), 0 miss(es)"),
            "offset {offset}: {}",
            check.dump()
        );
    }
    // A truncated entry, and one cut to nothing, the same.
    for keep in [len / 2, 0] {
        std::fs::write(entry, &good[..keep]).unwrap();
        run();
    }
}

/// The cache is bounded (`--compile-cache-max-mb`): an old entry that no
/// longer fits under the limit goes; the one this app loads stays.
#[test]
fn entries_past_the_limit_are_removed_least_recently_used_first() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap();
    let app = TestApp::new(EXAMPLES);
    let check = app.run_taskhost(&["check", "--compile-cache", dir]);
    assert_eq!(check.code, Some(0), "{}", check.dump());
    let stored = entries(cache.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    let ours = std::fs::metadata(&stored[0]).unwrap().len();
    let limit_mb = ours.div_ceil(1 << 20);

    // An entry of another component, last used a day ago, too big to fit
    // beside ours under a limit ours fits under.
    let old = cache.path().join(format!("{}.cwasm", "0".repeat(64)));
    std::fs::write(&old, vec![0u8; 2 << 20]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(86_400))
        .unwrap();

    let limit = limit_mb.to_string();
    let check = app.run_taskhost(&[
        "check",
        "--compile-cache",
        dir,
        "--compile-cache-max-mb",
        &limit,
    ]);
    assert_eq!(check.code, Some(0), "{}", check.dump());
    assert!(
        check
            .stdout
            .contains("1 hit(s), 0 miss(es), 1 least recently used entr(ies) removed; it holds")
            && check.stdout.contains(&format!("of its {limit_mb} MiB")),
        "{}",
        check.dump()
    );
    assert!(!old.exists(), "the old entry is gone");
    assert_eq!(entries(cache.path()), stored, "ours is kept");

    let help = app.run_taskhost(&["check", "--help"]);
    assert!(
        help.stdout.contains("--compile-cache-max-mb"),
        "{}",
        help.dump()
    );
    let zero = app.run_taskhost(&["check", "--compile-cache-max-mb", "0"]);
    assert_eq!(zero.code, Some(2), "{}", zero.dump());
}

#[cfg(unix)]
#[test]
fn a_cache_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let cache = tempfile::tempdir().unwrap();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
    let app = TestApp::new(EXAMPLES);
    let check = app.run_taskhost(&["check", "--compile-cache", cache.path().to_str().unwrap()]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check
            .stderr
            .contains("its group or other users can write to it (mode 0775)")
            && check.stderr.contains("chmod go-w"),
        "{}",
        check.dump()
    );
    assert!(entries(cache.path()).is_empty(), "nothing was written");
}
