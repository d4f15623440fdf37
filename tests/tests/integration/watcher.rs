//! The `watch` example, as the README and the demo show it: a watcher
//! polling a real HTTP server on 127.0.0.1 with If-None-Match, keeping the
//! ETag and a change count in key-value state, and dispatching an event
//! on each change. The README's app.toml lines are the demo's.

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use taskhost_tests::{TestApp, repo};

/// The README's watcher section: its TOML block.
fn readme_block() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Real work: a watcher")
        .expect("README has the watcher section")..];
    let code = &section[section.find("```toml\n").unwrap() + 8..];
    code[..code.find("```").unwrap()].to_string()
}

#[test]
fn the_readme_watcher_is_the_demo_watcher() {
    let demo = std::fs::read_to_string(repo().join("examples/app.toml")).unwrap();
    let demo_lines: Vec<&str> = demo.lines().collect();
    let mut from = 0;
    for line in readme_block().lines().filter(|l| !l.trim().is_empty()) {
        let at = demo_lines[from..]
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("examples/app.toml lacks (in order) {line:?}"));
        from += at + 1;
    }
}

/// What the server has seen: the If-None-Match of each request.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A feed whose body is version 1 for the first two requests and 2 after:
/// a poll carrying the current ETag gets 304.
fn feed() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::default();
    let (bound, address) = std::sync::mpsc::channel();
    let log = seen.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            bound.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new().route(
                "/feed",
                get(move |headers: HeaderMap| {
                    let log = log.clone();
                    async move {
                        let tag = headers
                            .get(header::IF_NONE_MATCH)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let mut seen = log.lock().unwrap();
                        seen.push(tag.clone());
                        let version = if seen.len() <= 2 { 1 } else { 2 };
                        let etag = format!("\"v{version}\"");
                        if tag.as_deref() == Some(etag.as_str()) {
                            return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)])
                                .into_response();
                        }
                        let body = json!({ "version": version }).to_string();
                        ([(header::ETAG, etag)], body).into_response()
                    }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    (address.recv().unwrap(), seen)
}

#[test]
fn the_readme_watcher_counts_changes_in_kv_and_announces_them() {
    let (address, seen) = feed();
    let block = readme_block()
        .replace("127.0.0.1:8931", &address.to_string())
        .replace("every_ms = 500, times = 6", "every_ms = 1, times = 4");
    assert!(block.contains(&address.to_string()), "{block}");
    let app = TestApp::new(&format!(
        r#"
        name = "watching"
        [plugins.examples]
        path = "{{examples}}"
        {block}
        "#
    ));
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(
        run.results_of("watcher"),
        vec![json!({"polls": 4, "failures": 0, "changes": 2, "etag": "\"v2\""})],
        "{}",
        run.dump()
    );
    // Poll 2 and 4 carried the ETag they had and got 304.
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            None,
            Some("\"v1\"".to_string()),
            Some("\"v1\"".to_string()),
            Some("\"v2\"".to_string())
        ]
    );
    let announced: Vec<_> = run
        .lines
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.contains("/feed changed (change "))
        .collect();
    assert_eq!(announced.len(), 2, "{}", run.dump());

    // The state outlives the run: a restarted watcher sends the ETag it
    // kept and counts on from 2.
    let run = app.run_until_idle();
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_eq!(seen.lock().unwrap()[4], Some("\"v2\"".to_string()));
    assert_eq!(run.results_of("watcher")[0]["changes"], json!(2));
}
