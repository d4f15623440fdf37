//! HTTP routes (webhooks): each request starts one task of the route's
//! factory with the request as its `request` argument (method, path,
//! query, the headers the route lets through, and the body: parsed JSON
//! for a JSON content type, else text).
//!
//! - `respond = "accepted"`: 202 with `{"task_id", "worker"}` once the
//!   factory has accepted the arguments (a durable task: once recorded).
//! - `respond = "result"`: 200 with the task's result (its JSON), 500 if
//!   it failed (the error stays in the host's log: it may name host
//!   internals), 503 if it was cancelled, 504 if it did not end within the
//!   route's `timeout` (the task goes on).
//! - A route with a `secret` checks `X-Hub-Signature-256: sha256=<hex>`
//!   (HMAC-SHA256 of the body, GitHub's scheme) before anything starts:
//!   401 otherwise. A body over `max_body_bytes` is 413.

use super::{Shared, error, request_json, task_args};
use crate::config::{HttpRoute, RouteConfig, TaskSpec};
use crate::registry::{AddTaskError, RegisterError};
use crate::task::{Outcome, TaskState};
use anyhow::Result;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// How long a request's body may take to arrive: a client trickling one
/// in holds a request slot and its buffer meanwhile.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

struct Route {
    shared: Arc<Shared>,
    config: RouteConfig,
    settings: HttpRoute,
    label: String,
}

pub(super) fn handler(
    shared: Arc<Shared>,
    config: RouteConfig,
    settings: HttpRoute,
) -> Result<axum::routing::MethodRouter> {
    let filter = axum::routing::MethodFilter::try_from(settings.method.clone()).map_err(|_| {
        anyhow::anyhow!(
            "routes[{}]: method {} cannot be routed",
            config.index,
            settings.method
        )
    })?;
    let route = Arc::new(Route {
        label: config.label(),
        shared,
        config,
        settings,
    });
    Ok(axum::routing::on(
        filter,
        move |ConnectInfo(remote): ConnectInfo<SocketAddr>, request: Request| {
            let route = route.clone();
            async move {
                let arrived = Instant::now();
                let response = answer(&route, remote, request).await;
                route.shared.host.route_metrics().answered(
                    &route.label,
                    response.status().as_u16(),
                    arrived.elapsed(),
                );
                response
            }
        },
    ))
}

async fn answer(route: &Route, remote: SocketAddr, request: Request) -> Response {
    if route.shared.shutdown.is_cancelled() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the host is stopping",
        );
    }
    // Held until the answer: what bounds the bodies held at once.
    let Ok(_slot) = route.shared.requests.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "limit",
            format!(
                "the listener has {} webhook requests in flight, [listen] `max_requests`; try \
                 again later",
                route.shared.max_requests
            ),
        );
    };
    let (parts, body) = request.into_parts();
    let max = route.settings.max_body_bytes;
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(Body::new(body), max));
    let body = match read.await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is over {max} bytes, the route's `max_body_bytes`"),
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            );
        }
    };
    if let Some(secret) = route.settings.secret_bytes()
        && !signed(
            secret,
            &route.settings.signature_header,
            &parts.headers,
            &body,
        )
    {
        tracing::warn!(
            route = route.label,
            remote = %remote,
            "{}: refused a request from {remote} without a valid {} signature",
            route.label,
            route.settings.signature_header
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            format!(
                "missing or wrong `{}: sha256=<hex>` (HMAC-SHA256 of the body with the \
                 route's secret)",
                route.settings.signature_header
            ),
        );
    }
    let is_json = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime == "application/json" || mime.ends_with("+json")
        });
    let body: serde_json::Value = if is_json {
        match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("the body is not the JSON its content type says: {e}"),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => text.into(),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "the body is neither JSON (by its content type) nor UTF-8 text",
                );
            }
        }
    };
    let mut request = request_json(&route.config, &parts.uri, &parts.headers, remote);
    request.insert("method".into(), parts.method.as_str().into());
    request.insert("body".into(), body);
    let spec = TaskSpec {
        factory: route.config.factory.clone(),
        args: task_args(&route.config, request),
        durable: route.settings.durable,
        queue: route
            .settings
            .queue
            .as_ref()
            .map(|queue| crate::config::Placement {
                queue: queue.clone(),
                key: None,
                priority: 0,
                start: None,
            }),
        // The caller's trace (W3C `traceparent`): the task's span joins
        // it. A malformed header starts a trace of its own, as the spec
        // asks of a receiver.
        trace: parts
            .headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(crate::trace_context::TraceParent::parse),
        ..TaskSpec::default()
    };
    let host = &route.shared.host;
    let worker = route.shared.next_worker();
    let added = match host.add_task(worker, &route.config.plugin, spec).await {
        Ok(added) => added,
        Err(refused) => return refusal(route, refused),
    };
    let accepted = serde_json::json!({ "task_id": added.id, "worker": added.worker });
    if route.settings.respond == crate::config::Respond::Accepted {
        return (StatusCode::ACCEPTED, axum::Json(accepted)).into_response();
    }
    let registry = host.worker(added.worker).map(|w| w.registry());
    let Some(mut handle) = registry.and_then(|r| r.handle_of(added.id)) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "gone",
            "the task's record was purged before it could be read",
        );
    };
    let timeout = route.settings.timeout;
    if tokio::time::timeout(timeout, handle.ended()).await.is_err() {
        return (
            StatusCode::GATEWAY_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": {
                    "kind": "timeout",
                    "message": format!(
                        "the task did not end within {timeout:?} (the route's `timeout`); it goes on"
                    ),
                },
                "task_id": added.id,
            })),
        )
            .into_response();
    }
    let info = registry.and_then(|r| r.get(added.id));
    match info.as_ref().and_then(|i| i.outcome.as_ref()) {
        Some(Outcome::Done { result }) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            result.clone(),
        )
            .into_response(),
        Some(Outcome::Failed { .. }) => task_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "task_failed",
            "the task failed; its error is in the host's log",
            added.id,
        ),
        Some(Outcome::Cancelled { .. }) => task_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "task_cancelled",
            "the task was cancelled before it ended",
            added.id,
        ),
        None => {
            let state = info.map(|i| i.state).unwrap_or(TaskState::Done);
            task_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "gone",
                &format!("the task ended ({state}) but its outcome was purged"),
                added.id,
            )
        }
    }
}

fn task_error(status: StatusCode, kind: &str, message: &str, task: u64) -> Response {
    (
        status,
        axum::Json(serde_json::json!({
            "error": { "kind": kind, "message": message },
            "task_id": task,
        })),
    )
        .into_response()
}

/// A task that did not start: the factory's refusal is the client's
/// business (its request did not fit); a host limit is 503; the rest is
/// logged and answered without details.
fn refusal(route: &Route, refused: AddTaskError) -> Response {
    match refused {
        AddTaskError::Refused(guest) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            format!(
                "the task refused the request: {}",
                crate::bindings::describe(&guest)
            ),
        ),
        // The request made arguments over `args_bytes`: no retry helps.
        AddTaskError::Register(RegisterError::Limit(limit))
            if limit.setting == Some("args_bytes") =>
        {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the request as the task's arguments: {limit}"),
            )
        }
        AddTaskError::Register(register) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "limit",
            format!("{register}; try again later"),
        ),
        other => {
            tracing::error!(
                route = route.label,
                "{}: the task could not start: {other}",
                route.label
            );
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "not_started",
                "the task could not start; the host's log says why",
            )
        }
    }
}

/// Whether `headers[name]` is `sha256=<hex>` of the HMAC-SHA256 of `body`
/// with `secret`, compared in constant time.
fn signed(secret: &[u8], name: &str, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
    let Some(given) = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
    else {
        return false;
    };
    let Some(given) = decode_hex(given.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
