//! The public listener: app.toml's `[[routes]]` on `[listen] address`,
//! where websocket connections and HTTP requests (webhooks) become tasks.
//! Separate from the control API: no token, and nothing here reaches the
//! host but starting the route's factory.
//!
//! axum serves both kinds (its websockets are tokio-tungstenite); one
//! module per kind: `websocket` (a connection bound to its task) and
//! `webhook` (a request answered at once or with the task's result).
//! Errors are JSON, `{"error": {"kind", "message"}}`, as the control API's.

mod webhook;
mod websocket;

use crate::config::{ListenConfig, RouteConfig, RouteKind};
use crate::host::Host;
use crate::task::WorkerId;
use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every route's handlers share.
struct Shared {
    host: Arc<Host>,
    /// Open connections of all websocket routes together.
    connections: Arc<Semaphore>,
    max_connections: u32,
    /// Webhook requests in flight, all routes together: each may hold its
    /// route's `max_body_bytes`.
    requests: Arc<Semaphore>,
    max_requests: u32,
    /// Cancelled when the host stops: connections close with 1001.
    shutdown: CancellationToken,
    /// Every connection's task on the listener side, to wait for at stop.
    tracker: TaskTracker,
    /// Where the next route task goes: the workers in turn.
    next_worker: AtomicU32,
}

impl Shared {
    fn next_worker(&self) -> WorkerId {
        let workers = self.host.config().workers.max(1);
        WorkerId::Index(self.next_worker.fetch_add(1, Ordering::Relaxed) % workers)
    }
}

/// A running listener. Dropping it does not stop it: call `stop`.
pub struct Listener {
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Binds `config.address` (or `address`, from `--listen`) and serves the
/// routes of `host`'s app.toml.
pub async fn serve(
    host: Arc<Host>,
    config: &ListenConfig,
    address: Option<SocketAddr>,
) -> Result<Listener> {
    let source = host.config().source.display().to_string();
    let (address, from) = match address {
        Some(address) => (address, "--listen".to_string()),
        None => (config.address, format!("{source}: [listen] address")),
    };
    let routes: Vec<RouteConfig> = host.config().routes.clone();
    let shared = Arc::new(Shared {
        host,
        connections: Arc::new(Semaphore::new(config.max_connections as usize)),
        max_connections: config.max_connections,
        requests: Arc::new(Semaphore::new(config.max_requests as usize)),
        max_requests: config.max_requests,
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        next_worker: AtomicU32::new(0),
    });
    let mut router = axum::Router::new();
    for route in routes {
        let path = route.path().to_string();
        router = match route.kind.clone() {
            RouteKind::WebSocket(settings) => {
                router.route(&path, websocket::handler(shared.clone(), route, settings))
            }
            RouteKind::Http(settings) => {
                router.route(&path, webhook::handler(shared.clone(), route, settings)?)
            }
        };
    }
    let router = router
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route serves this path (see [[routes]] in app.toml)",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "a route serves this path, with another method (see [[routes]] in app.toml)",
            )
        });
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("{from}: cannot bind {address}"))?;
    let address = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = served {
            tracing::error!("the public listener stopped: {error}");
        }
    });
    tracing::info!(listen = %address, "serving [[routes]] on {address}");
    Ok(Listener { shared, stop, task })
}

impl Listener {
    /// Stops accepting, closes every websocket connection with 1001 (going
    /// away) after what its task already queued, and waits (bounded by
    /// `wait`) for the connections to be gone.
    pub async fn stop(self, wait: Duration) {
        self.shared.shutdown.cancel();
        let _ = self.stop.send(());
        self.shared.tracker.close();
        if tokio::time::timeout(wait, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} connection(s) had not closed {wait:?} after shutdown began",
                self.shared.tracker.len()
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// An error answer: `{"error": {"kind", "message"}}` with `status`.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({
            "error": { "kind": kind, "message": message.into() }
        })),
    )
        .into_response()
}

/// What reaches a task of the request: its path, query (decoded; a key
/// given twice keeps its last value), the headers the
/// route lets through, and the client's address.
fn request_json(
    route: &RouteConfig,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    remote: SocketAddr,
) -> serde_json::Map<String, serde_json::Value> {
    let query: serde_json::Map<String, serde_json::Value> = uri
        .query()
        .map(|query| {
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = route
        .headers
        .iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.clone(), serde_json::Value::String(value.to_string())))
        })
        .collect();
    let mut request = serde_json::Map::new();
    request.insert("path".into(), uri.path().into());
    request.insert("query".into(), query.into());
    request.insert("headers".into(), headers.into());
    request.insert("remote".into(), remote.to_string().into());
    request
}

/// The task's arguments: the route's own `args` and `request`.
fn task_args(route: &RouteConfig, request: serde_json::Map<String, serde_json::Value>) -> String {
    let mut args = route.args.clone();
    args.insert("request".into(), request.into());
    serde_json::Value::Object(args).to_string()
}
