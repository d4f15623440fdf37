//! The compile cache: a second load of an unchanged component compiles
//! nothing; a changed component is compiled again.

use taskhost::application::Application;
use taskhost::config::AppConfig;
use taskhost::engine::EngineSettings;
use taskhost::plugin::build::BuildOptions;
use taskhost_tests::TestApp;

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
    (cache.cache_hits(), cache.cache_misses())
}

#[tokio::test]
async fn an_unchanged_component_loads_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let app = TestApp::new(
        r#"
        name = "cached"
        [plugins.examples]
        path = "{examples}"
        "#,
    );
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
