//! The control API answers any request, however malformed, with a status
//! and, for errors, a JSON body naming the error's kind: it never panics and
//! never fails with a 500.
//!
//! Input: one byte picks the method, then the path up to a newline, then
//! the body. Every request carries the right token, so decoding past
//! authorization is what gets exercised.

#![no_main]

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use taskhost::application::Application;
use taskhost::config::AppConfig;
use taskhost::engine::EngineSettings;
use taskhost::host::Host;
use taskhost::plugin::build::BuildOptions;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _host: Arc<Host>,
}

/// One host (no plugins, no tasks) for the whole run: starting one per
/// input would measure start-up, not decoding.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = AppConfig::parse(
            "name = \"fuzz\"\n[limits]\nargs_bytes = 4096\nevent_payload_bytes = 4096\n",
            std::path::Path::new("fuzz.toml"),
            std::path::Path::new("."),
        )
        .expect("config");
        let settings = EngineSettings {
            max_instances: 16,
            ..EngineSettings::default()
        };
        let host = runtime.block_on(async {
            let app = Application::load(config, &settings, &BuildOptions::default())
                .await
                .expect("application");
            Arc::new(app.launch().await.expect("host"))
        });
        let router = taskhost::control::router(host.clone(), TOKEN.into());
        Fixture {
            runtime,
            router,
            _host: host,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::PUT,
        _ => Method::DELETE,
    };
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let (path, body) = rest.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    // Waiting for listeners is about time, not decoding: it would only slow
    // the run down by its timeout.
    if body.windows(8).any(|w| w == b"wait_for") {
        return;
    }
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(request) = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let response = fixture
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        assert!(status.as_u16() < 500, "{status} for {path:?}");
        if status.is_client_error() {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("error body");
            let error: serde_json::Value = serde_json::from_slice(&bytes).expect("errors are JSON");
            assert!(error["error"]["kind"].is_string(), "{error}");
        }
    });
});
