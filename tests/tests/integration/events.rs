//! Events through the host's Rust API (what the control API will use):
//! one dispatch wakes every waiter on every worker; waits time out; a
//! waiting task can be cancelled.

use taskhost::application::Application;
use taskhost::config::AppConfig;
use taskhost::engine::EngineSettings;
use taskhost::host::Host;
use taskhost::plugin::build::BuildOptions;
use taskhost::task::{CancelStage, Outcome, TaskInfo, WorkerId};
use taskhost_tests::TestApp;

async fn start(app: &TestApp) -> Host {
    let config = AppConfig::load(&app.path()).expect("valid app.toml");
    let application =
        Application::load(config, &EngineSettings::default(), &BuildOptions::default())
            .await
            .expect("plugins load");
    let mut host = application.launch().await.expect("host starts");
    host.main_tasks_ended().await.expect("no main task fails");
    host.start_workers().await.expect("workers start");
    host
}

fn named<'a>(tasks: &'a [TaskInfo], name: &str) -> Vec<&'a TaskInfo> {
    tasks
        .iter()
        .filter(|t| t.ident.name.as_deref() == Some(name))
        .collect()
}

const WAITERS: &str = r#"
    name = "events"
    workers = 2
    [plugins.kit]
    path = "{testkit}"
    [[tasks]]
    plugin = "kit"
    factory = "waiter"
    name = "news"
    args = { event = "news.*" }
"#;

#[tokio::test]
async fn one_dispatch_wakes_every_waiter_on_every_worker() {
    let app = TestApp::new(WAITERS);
    let host = start(&app).await;
    // Both `news` waiters (one per worker) are registered before dispatching.
    host.events().until_waiting(2).await;
    let woken = host.dispatch("news.today", "\"hello\"");
    host.idle().await;
    let tasks = host.tasks();
    let news = named(&tasks, "news");
    assert!(woken >= 2, "woke {woken}");
    assert_eq!(news.len(), 2);
    let mut workers: Vec<_> = news.iter().map(|t| t.ident.worker).collect();
    workers.sort();
    assert_eq!(workers, vec![WorkerId::Index(0), WorkerId::Index(1)]);
    for task in news {
        assert_eq!(
            task.outcome,
            Some(Outcome::Done {
                result: "\"\\\"hello\\\"\"".into()
            }),
            "{task:?}"
        );
    }
    host.shutdown(false).await;
}

#[tokio::test]
async fn a_wait_with_a_timeout_returns_none_when_no_event_comes() {
    let app = TestApp::new(
        r#"
        name = "timeout"
        workers = 2
        [plugins.kit]
        path = "{testkit}"
        [[tasks]]
        plugin = "kit"
        factory = "waiter"
        name = "patient"
        args = { event = "never", timeout_ms = 20 }
        "#,
    );
    let host = start(&app).await;
    host.idle().await;
    let tasks = host.tasks();
    let patient = named(&tasks, "patient");
    assert_eq!(patient.len(), 2);
    for task in patient {
        assert_eq!(
            task.outcome,
            Some(Outcome::Done {
                result: "null".into()
            })
        );
    }
    host.shutdown(false).await;
}

#[tokio::test]
async fn a_waiting_task_can_be_cancelled() {
    let app = TestApp::new(WAITERS);
    let host = start(&app).await;
    host.events().until_waiting(2).await;
    let info = host
        .cancel_task(WorkerId::Index(1), "news")
        .await
        .expect("the task exists");
    assert_eq!(
        info.outcome,
        Some(Outcome::Cancelled {
            stage: CancelStage::Cooperative
        })
    );
    // The other worker's waiter still hears the event.
    host.events().until_waiting(1).await;
    assert_eq!(host.dispatch("news.later", "1"), 1);
    host.idle().await;
    let summary = host.shutdown(false).await;
    assert_eq!(summary.cancelled, 1);
    assert_eq!(summary.failed, 0);
}
