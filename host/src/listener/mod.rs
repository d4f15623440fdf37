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
use crate::serve;
use crate::task::WorkerId;
use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
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

/// The most memory the listener's clients can make the host hold: per
/// websocket connection, its send queue (`send_buffer` messages), its
/// receive queue and tungstenite's read and write buffers, each message up
/// to the route's `max_message_bytes`; per webhook request in flight
/// (`max_requests`), the largest `max_body_bytes`. Zero without routes.
pub(crate) fn worst_case_bytes(config: &crate::config::AppConfig) -> u64 {
    let Some(listen) = &config.listen else {
        return 0;
    };
    let mut websockets = 0u64;
    let mut largest_body = 0u64;
    for route in &config.routes {
        match &route.kind {
            RouteKind::WebSocket(ws) => {
                let connections = ws.max_connections.min(listen.max_connections);
                let messages = ws.send_buffer + crate::connection_hub::RECEIVE_BUFFER + 2;
                let per_connection = (messages as u64).saturating_mul(ws.max_message_bytes as u64);
                websockets = websockets
                    .saturating_add(u64::from(connections).saturating_mul(per_connection));
            }
            RouteKind::Http(http) => largest_body = largest_body.max(http.max_body_bytes as u64),
        }
    }
    websockets.saturating_add(u64::from(listen.max_requests).saturating_mul(largest_body))
}

/// A running listener. Dropping it does not stop it: call `stop`.
pub(crate) struct Listener {
    shared: Arc<Shared>,
    server: crate::serve::Server,
}

/// The listener's socket, bound before anything runs (so a port in use
/// stops the start before any task has run), not yet served.
pub(crate) struct BoundListener {
    listener: tokio::net::TcpListener,
}

/// Binds `config.address` (or `address`, from `--listen`); `source` is
/// app.toml, for the error.
pub(crate) async fn bind(
    source: &std::path::Path,
    config: &ListenConfig,
    address: Option<SocketAddr>,
) -> Result<BoundListener> {
    let (address, from) = match address {
        Some(address) => (address, "--listen".to_string()),
        None => (
            config.address,
            format!("{}: [listen] address", source.display()),
        ),
    };
    let listener =
        serve::bind_tcp(address).with_context(|| format!("{from}: cannot bind {address}"))?;
    Ok(BoundListener { listener })
}

/// Serves the routes of `host`'s app.toml on `bound`.
pub(crate) async fn serve(
    host: Arc<Host>,
    config: &ListenConfig,
    bound: BoundListener,
) -> Result<Listener> {
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
    let listener = bound.listener;
    let address = listener.local_addr()?;
    let (max_connections, lowered) = serve::public_cap(
        config.max_connections,
        config.max_requests,
        serve::raise_open_files(),
    );
    if let Some(why) = lowered {
        tracing::warn!("{why}");
    }
    let limits = serve::ConnectionLimits {
        max_connections,
        header_timeout: config.header_timeout,
    };
    let metrics = shared.host.server_metrics().clone();
    let server = serve::spawn(listener, router, limits, "public", metrics);
    tracing::info!(listen = %address, "serving [[routes]] on {address}");
    Ok(Listener { shared, server })
}

impl Listener {
    /// Stops accepting, closes every websocket connection with 1001 (going
    /// away) after what its task already queued, and waits (bounded by
    /// `wait`) for the connections to be gone.
    pub(crate) async fn stop(self, wait: Duration) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        let connections = async {
            if tokio::time::timeout(wait, self.shared.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "{} connection(s) had not closed {wait:?} after shutdown began",
                    self.shared.tracker.len()
                );
            }
        };
        tokio::join!(self.server.stop(wait), connections);
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
