//! The control API's routes. Each handler is a thin translation between
//! JSON and a [`Host`] call.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | /v1/tasks?worker=&state=&plugin=&name= | list tasks |
//! | GET | /v1/tasks/{id} | one task |
//! | POST | /v1/tasks | add a task (one worker, or all) |
//! | POST | /v1/tasks/cancel | cancel by name, wait until ended |
//! | POST | /v1/purge | drop ended tasks |
//! | POST | /v1/events/{event} | dispatch an event |
//! | GET | /v1/plugins | plugins and versions |
//! | PUT | /v1/plugins/{name} | load or replace a plugin |
//! | GET | /v1/stream | lifecycle events (Server-Sent Events) |
//! | GET | /metrics | Prometheus / OpenMetrics text |

use super::body_limit;
use crate::host::{CancelError, Host};
use crate::registry::RegisterError;
use crate::task::{Outcome, TaskInfo, WorkerId, unix_millis};
use crate::worker::AddTaskError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::BroadcastStream;

#[derive(Clone)]
struct Ctx {
    host: Arc<Host>,
    token: Arc<str>,
}

pub(super) fn router(host: Arc<Host>, token: String) -> Router {
    let body_limit = body_limit(&host.config().limits);
    let ctx = Ctx {
        host,
        token: token.into(),
    };
    Router::new()
        .route("/v1/tasks", get(list_tasks).post(add_task))
        .route("/v1/tasks/cancel", post(cancel_task))
        .route("/v1/tasks/{id}", get(get_task))
        .route("/v1/purge", post(purge))
        .route("/v1/events/{event}", post(dispatch))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}", put(load_plugin))
        .route("/v1/stream", get(stream))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this endpoint does not take {method}"),
            )
        })
        .layer(middleware::from_fn_with_state(ctx.clone(), authorize))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::map_response(json_errors))
        .with_state(ctx)
}

/// Extractors answer some bad requests themselves, in plain text (a path
/// segment that is not UTF-8, say); the API promises JSON errors, so those
/// are rewrapped here, keeping their status and message.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), MAX_ERROR_TEXT)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "no_route",
        status if status.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    ApiError::new(status, kind, message).into_response()
}

/// Longest plain-text error body rewrapped as JSON.
const MAX_ERROR_TEXT: usize = 16 * 1024;

/// A JSON error with a 4xx/5xx status.
pub(super) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"kind": self.kind, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let kind = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "bad_request"
        };
        ApiError::new(rejection.status(), kind, rejection.body_text())
    }
}

/// Every route needs `Authorization: Bearer <token>`.
async fn authorize(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if same(token.as_bytes(), ctx.token.as_bytes()) => next.run(request).await,
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <token>` (the token is in the host's control file)",
        )
        .into_response(),
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn worker_json(worker: WorkerId) -> Value {
    match worker {
        WorkerId::Main => json!("main"),
        WorkerId::Index(i) => json!(i),
    }
}

/// The JSON view of a task: the same names as the guest's `task-info`.
pub(super) fn task_json(info: &TaskInfo) -> Value {
    let (result, error, stage) = match &info.outcome {
        Some(Outcome::Done { result }) => (Some(result.as_str()), None, None),
        Some(Outcome::Failed { error }) => (None, Some(error.as_str()), None),
        Some(Outcome::Cancelled { stage }) => (None, None, Some(stage.as_str())),
        None => (None, None, None),
    };
    json!({
        "id": info.ident.id,
        "name": info.ident.name,
        "worker": worker_json(info.ident.worker),
        "plugin": &*info.ident.plugin,
        "plugin_version": &*info.ident.plugin_version,
        "factory": info.ident.factory,
        "state": info.state.as_str(),
        "created_at_ms": unix_millis(info.created_at),
        "started_at_ms": info.started_at.map(unix_millis),
        "ended_at_ms": info.ended_at.map(unix_millis),
        "result": result,
        "error": error,
        "cancel_stage": stage,
    })
}

/// `worker` in queries and bodies: an index, or `main`.
fn parse_worker(text: &str) -> Result<WorkerId, ApiError> {
    if text == "main" {
        return Ok(WorkerId::Main);
    }
    text.parse().map(WorkerId::Index).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`worker` must be an index or `main`, not {text:?}"),
        )
    })
}

/// `worker` in a JSON body: an index (number or string), or `"main"`.
fn worker_of(value: &Value) -> Result<WorkerId, ApiError> {
    match value {
        Value::String(text) => parse_worker(text),
        Value::Number(n) => parse_worker(&n.to_string()),
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`worker` must be an index or \"main\", not {other}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFilter {
    worker: Option<String>,
    state: Option<String>,
    plugin: Option<String>,
    name: Option<String>,
}

async fn list_tasks(
    State(ctx): State<Ctx>,
    query: Result<Query<TaskFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Query(filter) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let worker = filter.worker.as_deref().map(parse_worker).transpose()?;
    let tasks = ctx
        .host
        .tasks()
        .into_iter()
        .filter(|t| worker.is_none_or(|w| t.ident.worker == w))
        .filter(|t| {
            filter
                .state
                .as_deref()
                .is_none_or(|s| t.state.as_str() == s)
        })
        .filter(|t| {
            filter
                .plugin
                .as_deref()
                .is_none_or(|p| &*t.ident.plugin == p)
        })
        .filter(|t| {
            filter
                .name
                .as_deref()
                .is_none_or(|n| t.ident.name.as_deref() == Some(n))
        })
        .map(|t| task_json(&t))
        .collect();
    Ok(Json(tasks))
}

async fn get_task(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("task id must be a number, not {id:?}"),
        )
    })?;
    ctx.host
        .workers()
        .find_map(|w| w.registry().get(id))
        .map(|t| Json(task_json(&t)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no task {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    plugin: String,
    factory: String,
    #[serde(default)]
    args: Value,
    name: Option<String>,
    /// An index or "main"; default worker 0.
    worker: Option<Value>,
    #[serde(default)]
    all_workers: bool,
}

async fn add_task(
    State(ctx): State<Ctx>,
    body: Result<Json<AddRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(request) = body?;
    let workers: Vec<WorkerId> = if request.all_workers {
        if request.worker.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give `worker` or `all_workers`, not both",
            ));
        }
        ctx.host
            .workers()
            .map(|w| w.id())
            .filter(|w| *w != WorkerId::Main)
            .collect()
    } else {
        let worker = match &request.worker {
            None => WorkerId::Index(0),
            Some(value) => worker_of(value)?,
        };
        vec![worker]
    };
    let args = request.args.to_string();
    let mut ids = Vec::new();
    for worker in workers {
        let id = ctx
            .host
            .add_task(
                worker,
                &request.plugin,
                &request.factory,
                args.clone(),
                request.name.clone(),
            )
            .await
            .map_err(add_error)?;
        ids.push(json!({"worker": worker_json(worker), "id": id}));
    }
    Ok((StatusCode::CREATED, Json(json!({"tasks": ids}))))
}

fn add_error(error: AddTaskError) -> ApiError {
    use crate::bindings::GuestError;
    let message = error.to_string();
    match error {
        AddTaskError::NoWorker(_) => ApiError::new(StatusCode::NOT_FOUND, "no_worker", message),
        AddTaskError::UnknownPlugin(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_plugin", message)
        }
        AddTaskError::Register(RegisterError::DuplicateName(_)) => {
            ApiError::new(StatusCode::CONFLICT, "duplicate_name", message)
        }
        AddTaskError::Register(RegisterError::Limit(_)) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit", message)
        }
        AddTaskError::Refused(GuestError::UnknownFactory(_)) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_factory", message)
        }
        AddTaskError::Refused(GuestError::InvalidArgs(_)) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_args", message)
        }
        AddTaskError::Refused(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", message)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    name: String,
    /// An index or "main"; default: every worker that has a task so named.
    worker: Option<Value>,
    /// How long to wait for the tasks to end (default 10 s).
    timeout_ms: Option<u64>,
}

async fn cancel_task(
    State(ctx): State<Ctx>,
    body: Result<Json<CancelRequest>, JsonRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Json(request) = body?;
    let workers: Vec<WorkerId> = match &request.worker {
        Some(value) => vec![worker_of(value)?],
        None => ctx
            .host
            .workers()
            .filter(|w| w.registry().handle_by_name(&request.name).is_some())
            .map(|w| w.id())
            .collect(),
    };
    if workers.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no task named `{}`", request.name),
        ));
    }
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(10_000));
    let cancels = workers
        .iter()
        .map(|w| ctx.host.cancel_task(*w, &request.name));
    let ended = tokio::time::timeout(timeout, futures_util::future::join_all(cancels))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("`{}` had not ended after {timeout:?}", request.name),
            )
        })?;
    ended
        .into_iter()
        .map(|result| match result {
            Ok(info) => Ok(task_json(&info)),
            Err(CancelError::NoWorker(w)) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_worker",
                format!("no worker {w}"),
            )),
            Err(CancelError::NotFound(name)) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no task named `{name}` on that worker"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

async fn purge(State(ctx): State<Ctx>) -> Json<Value> {
    Json(json!({"purged": ctx.host.purge()}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DispatchRequest {
    #[serde(default)]
    payload: String,
    /// Dispatch only once at least this many tasks (host-wide) are waiting
    /// for some event, so a listener that is about to wait is not missed.
    wait_for: Option<usize>,
    /// How long `wait_for` may wait (default 10 s).
    timeout_ms: Option<u64>,
}

async fn dispatch(
    State(ctx): State<Ctx>,
    Path(event): Path<String>,
    body: Result<Json<DispatchRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body?;
    crate::events::check_dispatch(&event, &request.payload, &ctx.host.config().limits)
        .map_err(|message| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "limit", message))?;
    if let Some(count) = request.wait_for {
        let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(10_000));
        tokio::time::timeout(timeout, ctx.host.events().until_waiting(count))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("fewer than {count} task(s) were waiting after {timeout:?}"),
                )
            })?;
    }
    Ok(Json(
        json!({"woken": ctx.host.dispatch(&event, &request.payload)}),
    ))
}

async fn list_plugins(State(ctx): State<Ctx>) -> Json<Vec<Value>> {
    Json(
        ctx.host
            .plugins()
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "version": p.version,
                    "path": p.path,
                    "factories": p.factories.iter().map(|f| json!({"name": f.name, "description": f.description})).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    path: std::path::PathBuf,
    /// Restart the plugin's startup tasks on the new build.
    #[serde(default)]
    restart_tasks: bool,
}

async fn load_plugin(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Result<Json<LoadRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body?;
    let plugin = ctx
        .host
        .load_plugin(&name, &request.path)
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                format!("{error:#}"),
            )
        })?;
    let restarted = if request.restart_tasks {
        ctx.host
            .restart_startup_tasks(&name)
            .await
            .map_err(|error| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "refused",
                    format!("{error:#}"),
                )
            })?
    } else {
        0
    };
    Ok(Json(json!({
        "name": plugin.name, "version": plugin.version, "path": plugin.path, "restarted": restarted,
    })))
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.host.metrics_text(),
    )
        .into_response()
}

async fn stream(
    State(ctx): State<Ctx>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    // The first event says the stream is attached: a follower that waits
    // for it misses nothing that happens afterwards.
    let hello = futures_util::stream::once(async {
        Ok(Event::default().data(json!({"event": "subscribed"}).to_string()))
    });
    let events = BroadcastStream::new(ctx.host.subscribe()).map(|item| {
        Ok(match item {
            Ok(value) => Event::default().data(value.to_string()),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                Event::default().data(json!({"event": "lagged", "missed": missed}).to_string())
            }
        })
    });
    Sse::new(hello.chain(events)).keep_alive(KeepAlive::default())
}
