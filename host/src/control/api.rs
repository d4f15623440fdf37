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
//! | GET | /v1/kv | key-value buckets, with key and byte counts |
//! | GET | /v1/kv/{bucket}?after=&limit= | a page of a bucket's keys |
//! | GET, PUT, DELETE | /v1/kv/{bucket}/{key} | one value |
//! | GET | /v1/schedules | schedules: next run, last outcome, runs, misses |
//! | POST | /v1/schedules/{name}/{pause,resume,trigger} | steer one |
//! | GET | /v1/stream | lifecycle events (Server-Sent Events) |
//! | GET | /metrics | Prometheus / OpenMetrics text |

use super::schema::{
    AddRequest, Added, AddedTask, BuildState, CancelRequest, DispatchRequest, ErrorBody,
    ErrorDetail, FactoryView, HostBuild, KvBucketView, KvEntry, KvKeys, KvPut, KvWritten,
    LimitDetail, LoadRequest, Loaded, MemoryImage, PluginView, Purged, ScheduleView, Triggered,
    Woken,
};
use super::{body_limit, kv_body_limit};
use crate::config::{Limit, RetrySpec, TaskSpec};
use crate::host::{CancelError, Host};
use crate::lifecycle::LifecycleEvent;
use crate::plugin::LoadError;
use crate::registry::AddTaskError;
use crate::registry::RegisterError;
use crate::scheduler::{ScheduleError, Scheduler};
use crate::storage::{BucketId, KvError, Storage};
use crate::task::{TaskState, TaskView, WorkerId};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use serde::Deserialize;
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
    let kv_body_limit = DefaultBodyLimit::max(kv_body_limit(&host.config().limits));
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
        .route("/v1/kv", get(kv_buckets))
        .route("/v1/kv/{bucket}", get(kv_keys))
        .route(
            "/v1/kv/{bucket}/{*key}",
            get(kv_get)
                .put(kv_put)
                .delete(kv_delete)
                .layer(kv_body_limit),
        )
        .route("/v1/schedules", get(list_schedules))
        .route("/v1/schedules/{name}/{action}", post(steer_schedule))
        .route("/v1/stream", get(stream))
        .route("/v1/hosts", get(list_hosts))
        .route("/health", get(health))
        .route(
            "/v1/cluster/{*rest}",
            get(across_cluster).post(across_cluster),
        )
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
    /// Boxed: errors travel in `Result`s, which should stay small.
    limit: Option<Box<LimitDetail>>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            limit: None,
        }
    }

    /// Kind `limit`, with the bound in the body.
    fn limit(status: StatusCode, limit: &Limit) -> ApiError {
        ApiError {
            limit: Some(Box::new(limit.into())),
            ..ApiError::new(status, "limit", limit.to_string())
        }
    }
}

impl ApiError {
    /// The JSON body of the error, as every endpoint answers it.
    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message.clone(),
                limit: self.limit.as_deref().cloned(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
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
    // Health is for probes that hold no token; it tells only ok or degraded.
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
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

/// `worker` in queries and bodies: an index, or `main`.
fn parse_worker(text: &str) -> Result<WorkerId, ApiError> {
    text.parse()
        .map_err(|message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFilter {
    worker: Option<String>,
    /// A state's name; anything else is a 400 that lists them, not an
    /// empty list that looks like "no such tasks".
    state: Option<TaskState>,
    plugin: Option<String>,
    name: Option<String>,
}

async fn list_tasks(
    State(ctx): State<Ctx>,
    query: Result<Query<TaskFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    let Query(filter) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let worker = filter.worker.as_deref().map(parse_worker).transpose()?;
    let tasks = ctx
        .host
        .tasks()
        .into_iter()
        .filter(|t| worker.is_none_or(|w| t.ident.worker == w))
        .filter(|t| filter.state.is_none_or(|s| t.state == s))
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
        .map(|t| TaskView::from(&t))
        .collect();
    Ok(Json(tasks))
}

async fn get_task(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
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
        .map(|t| Json(TaskView::from(&t)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no task {id}")))
}

async fn add_task(
    State(ctx): State<Ctx>,
    body: Result<Json<AddRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    let Json(request) = body?;
    let (status, added) = match request.host.clone() {
        Some(target) => add_on_hosts(&ctx.host, &target, request).await?,
        None => add_here(&ctx.host, request).await?,
    };
    Ok((status, Json(added)))
}

/// The host as the cluster's plugin roll-out sees it.
pub(crate) struct HostPlugins(pub Arc<Host>);

impl crate::cluster::rollout::PluginSink for HostPlugins {
    fn build_of(&self, name: &str) -> Option<String> {
        self.0
            .plugins()
            .into_iter()
            .find(|p| &*p.name == name)
            .map(|p| p.version.to_string())
    }

    fn load(
        &self,
        name: String,
        from: std::path::PathBuf,
        bytes: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>> {
        let host = self.0.clone();
        Box::pin(async move {
            host.load_plugin_bytes(&name, &from, bytes)
                .await
                .map(|plugin| plugin.version.to_string())
                .map_err(|error| format!("{error:#}"))
        })
    }

    fn refuse(&self, name: &str, from: &std::path::Path, error: &str) {
        self.0.refuse_plugin(name, from, &error);
    }
}

/// The cluster's `tasks` requests: other hosts' `POST /v1/tasks` with a
/// `host` that chose this one, answered as that endpoint answers here.
pub(crate) struct TaskSubmissions(pub Arc<Host>);

impl crate::cluster::Responder for TaskSubmissions {
    fn answer(
        &self,
        request: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (u16, bytes::Bytes)> + Send>> {
        let host = self.0.clone();
        Box::pin(async move {
            let added = match serde_json::from_slice::<AddRequest>(&request) {
                Ok(request) if request.host.is_none() => add_here(&host, request).await,
                Ok(_) => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "a request another host forwards names no `host`",
                )),
                Err(error) => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("a task request from another host does not parse: {error}"),
                )),
            };
            let (status, body) = match added {
                Ok((status, added)) => (status, serde_json::to_vec(&added)),
                Err(error) => (error.status, serde_json::to_vec(&error.body())),
            };
            (status.as_u16(), body.unwrap_or_default().into())
        })
    }
}

/// A control request another host forwards (`/v1/cluster/...`): the one
/// serde type of that wire.
#[derive(serde::Serialize, Deserialize)]
struct Forwarded {
    method: String,
    /// `/v1/...`, with its query.
    path: String,
    #[serde(default)]
    body: Option<serde_json::Value>,
}

/// The requests that may go to every host at once: listings and the
/// verbs an operator applies cluster-wide. Not the stream (it never ends),
/// nor a hot-load (a roll-out is its own thing: docs/cluster.md).
fn forwardable(method: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    matches!(
        (method, path),
        ("GET", "/v1/tasks" | "/v1/plugins" | "/v1/schedules")
            | ("POST", "/v1/tasks/cancel" | "/v1/purge")
    )
}

/// Answers other hosts' forwarded control requests by replaying them on a
/// router of its own (its own token: no API need be served here).
pub(crate) struct ClusterApi {
    router: Router,
    bearer: String,
}

impl ClusterApi {
    pub(crate) fn new(host: Arc<Host>) -> std::io::Result<ClusterApi> {
        let token = super::state_file::new_token().map_err(std::io::Error::other)?;
        Ok(ClusterApi {
            bearer: format!("Bearer {token}"),
            router: router(host, token),
        })
    }
}

impl crate::cluster::Responder for ClusterApi {
    fn answer(
        &self,
        request: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = (u16, bytes::Bytes)> + Send>> {
        let router = self.router.clone();
        let bearer = self.bearer.clone();
        Box::pin(async move {
            let refuse = |message: String| {
                let error = ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
                let body = serde_json::to_vec(&error.body()).unwrap_or_default();
                (400, bytes::Bytes::from(body))
            };
            let forwarded: Forwarded = match serde_json::from_slice(&request) {
                Ok(forwarded) => forwarded,
                Err(error) => {
                    return refuse(format!("a forwarded request does not parse: {error}"));
                }
            };
            if !forwardable(&forwarded.method, &forwarded.path) {
                return refuse(format!(
                    "{} {} does not go across a cluster",
                    forwarded.method, forwarded.path
                ));
            }
            let body = match &forwarded.body {
                Some(body) => axum::body::Body::from(body.to_string()),
                None => axum::body::Body::empty(),
            };
            let request = axum::http::Request::builder()
                .method(forwarded.method.as_str())
                .uri(forwarded.path.as_str())
                .header(header::AUTHORIZATION, bearer)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
            let Ok(request) = request else {
                return refuse(format!(
                    "{} {} is not a request",
                    forwarded.method, forwarded.path
                ));
            };
            let response = match tower::ServiceExt::oneshot(router, request).await {
                Ok(response) => response,
                Err(infallible) => match infallible {},
            };
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            (status, body)
        })
    }
}

/// `GET /health`: `degraded` while a part the host relies on is away (in
/// a cluster: NATS), `ok` otherwise.
async fn health(State(ctx): State<Ctx>) -> Json<super::schema::Health> {
    let mut problems = Vec::new();
    if let Some(cluster) = ctx.host.cluster()
        && !cluster.is_connected()
    {
        problems.push(format!(
            "NATS is unreachable: events and tasks do not reach the other hosts of cluster `{}` \
             (local work goes on; the client reconnects)",
            cluster.config().name
        ));
    }
    Json(super::schema::Health {
        status: if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        problems,
    })
}

/// `GET /v1/hosts`: the hosts of this host's cluster, as heard lately.
async fn list_hosts(
    State(ctx): State<Ctx>,
) -> Result<Json<Vec<crate::cluster::HostBeat>>, ApiError> {
    let cluster = ctx.host.cluster().ok_or_else(no_cluster)?;
    Ok(Json(cluster.hosts()))
}

fn no_cluster() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_cluster",
        "this host has no [cluster]: it is the only host",
    )
}

/// `GET|POST /v1/cluster/{rest}`: `/v1/{rest}` on every host present, the
/// answers' arrays joined, each entry with its `host`. A host's 404 (no
/// task of that name there) is no error while another host answered.
async fn across_cluster(
    State(ctx): State<Ctx>,
    method: axum::http::Method,
    Path(rest): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: bytes::Bytes,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let cluster = ctx.host.cluster().ok_or_else(no_cluster)?;
    let mut path = format!("/v1/{rest}");
    if let Some(query) = query {
        path = format!("{path}?{query}");
    }
    if !forwardable(method.as_str(), &path) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{method} /v1/{rest} does not go across a cluster; these do: GET /v1/tasks, \
                 /v1/plugins, /v1/schedules; POST /v1/tasks/cancel, /v1/purge"
            ),
        ));
    }
    let body = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("body: {e}"))
        })?)
    };
    let forwarded = Forwarded {
        method: method.to_string(),
        path,
        body,
    };
    let payload = serde_json::to_vec(&forwarded).unwrap_or_default();
    let answers = cluster
        .request("api", &crate::cluster::Target::All, payload.into())
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_host",
                error.to_string(),
            )
        })?;
    let mut joined = Vec::new();
    let mut failures = Vec::new();
    let mut answered = false;
    for answer in answers {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status.is_success() {
            answered = true;
            // An array's entries each, an object (a purge's count) as
            // one entry; each says which host it came from.
            let entries = match serde_json::from_slice(&answer.body) {
                Ok(serde_json::Value::Array(entries)) => entries,
                Ok(object @ serde_json::Value::Object(_)) => vec![object],
                _ => Vec::new(),
            };
            for mut entry in entries {
                if let Some(object) = entry.as_object_mut() {
                    object.insert("host".into(), answer.host.clone().into());
                }
                joined.push(entry);
            }
        } else {
            let detail = serde_json::from_slice::<ErrorBody>(&answer.body)
                .map(|body| body.error.message)
                .unwrap_or_else(|_| "an answer that does not parse".into());
            failures.push((answer.host, status, detail));
        }
    }
    let fatal: Vec<&(String, StatusCode, String)> = failures
        .iter()
        .filter(|(_, status, _)| !(answered && *status == StatusCode::NOT_FOUND))
        .collect();
    if let Some((_, status, _)) = fatal.first() {
        let message: Vec<String> = fatal
            .iter()
            .map(|(host, _, detail)| format!("host {host}: {detail}"))
            .collect();
        return Err(ApiError::new(*status, "refused", message.join("; ")));
    }
    Ok(Json(joined))
}

/// `POST /v1/tasks` with a `host`: sent to that host (or `any`, or `all`)
/// of the cluster, which answers as it would here; each task says where it
/// runs.
async fn add_on_hosts(
    host: &Host,
    target: &str,
    mut request: AddRequest,
) -> Result<(StatusCode, Added), ApiError> {
    let Some(cluster) = host.cluster() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`host` is for a host in a cluster, and this one has no [cluster]: drop `host`",
        ));
    };
    let target: crate::cluster::Target = target.parse().map_err(|message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    })?;
    request.host = None;
    let payload = serde_json::to_vec(&request).unwrap_or_default();
    let answers = cluster
        .request("tasks", &target, payload.into())
        .await
        .map_err(|error| {
            let status = match error {
                crate::cluster::RequestError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            ApiError::new(status, "no_host", error.to_string())
        })?;
    let mut added = Added { tasks: Vec::new() };
    let mut created = false;
    let mut failed = Vec::new();
    for answer in answers {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status.is_success() {
            let Ok(mut theirs) = serde_json::from_slice::<Added>(&answer.body) else {
                failed.push((
                    answer.host,
                    StatusCode::BAD_GATEWAY,
                    "internal".to_string(),
                    "an answer that does not parse".to_string(),
                ));
                continue;
            };
            created |= status == StatusCode::CREATED;
            for task in &mut theirs.tasks {
                task.host = Some(answer.host.clone());
            }
            added.tasks.extend(theirs.tasks);
        } else {
            let detail = serde_json::from_slice::<ErrorBody>(&answer.body)
                .map(|body| (body.error.kind, body.error.message))
                .unwrap_or_else(|_| ("internal".into(), "an answer that does not parse".into()));
            failed.push((answer.host, status, detail.0, detail.1));
        }
    }
    if let Some((_, status, first_kind, _)) = failed.first() {
        let status = *status;
        // One kind of refusal from every host that refused keeps its kind
        // (a guest's `start-task-on` gets `duplicate-name`, say).
        let kind = if failed.iter().all(|(_, _, kind, _)| kind == first_kind) {
            known_kind(first_kind)
        } else {
            "refused"
        };
        let said: Vec<String> = failed
            .iter()
            .map(|(host, _, kind, message)| format!("host {host}: {kind}: {message}"))
            .collect();
        let started: Vec<String> = added
            .tasks
            .iter()
            .map(|t| format!("{} (task {})", t.host.as_deref().unwrap_or("?"), t.id))
            .collect();
        let mut message = said.join("; ");
        if !started.is_empty() {
            message = format!("{message}; started on {}", started.join(", "));
        }
        return Err(ApiError::new(status, kind, message));
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, added))
}

/// An error kind another host answered with, as one of ours (`refused`
/// for one this host does not know).
fn known_kind(kind: &str) -> &'static str {
    [
        "duplicate_name",
        "unknown_plugin",
        "unknown_factory",
        "invalid_args",
        "limit",
        "no_worker",
        "bad_request",
        "unavailable",
        "storage",
        "elsewhere",
    ]
    .into_iter()
    .find(|known| *known == kind)
    .unwrap_or("refused")
}

/// Guests' `start-task-on`: sent to the cluster as `POST /v1/tasks` with
/// a `host` is, and answered with where each task runs.
pub(crate) struct GuestSubmissions(pub std::sync::Weak<Host>);

impl crate::worker::RemoteTasks for GuestSubmissions {
    fn start_on(
        &self,
        target: String,
        plugin: String,
        spec: TaskSpec,
        cluster_name: bool,
    ) -> crate::worker::Placed {
        use crate::bindings::GuestError;
        let host = self.0.upgrade();
        Box::pin(async move {
            let host = host.ok_or_else(|| GuestError::Failed("the host is stopping".into()))?;
            let args: serde_json::Value = serde_json::from_str(&spec.args)
                .map_err(|e| GuestError::InvalidArgs(format!("args are not JSON: {e}")))?;
            let name = spec.name.clone().unwrap_or_default();
            let factory = spec.factory.clone();
            let request = AddRequest {
                plugin: plugin.clone(),
                factory: spec.factory,
                args,
                name: spec.name,
                worker: None,
                all_workers: false,
                retry: spec.retry.as_ref().map(|policy| policy.spec()),
                durable: spec.durable,
                idempotency_key: spec.idempotency_key,
                host: None,
                scope: if cluster_name {
                    super::schema::NameScope::Cluster
                } else {
                    super::schema::NameScope::Worker
                },
            };
            match add_on_hosts(&host, &target, request).await {
                Ok((_, added)) => Ok(added
                    .tasks
                    .into_iter()
                    .map(|task| (task.host.unwrap_or_default(), task.id))
                    .collect()),
                Err(error) => Err(match error.kind {
                    "duplicate_name" => GuestError::DuplicateName(name),
                    "unknown_plugin" => GuestError::UnknownPlugin(plugin),
                    "unknown_factory" => GuestError::UnknownFactory(factory),
                    "invalid_args" | "bad_request" => GuestError::InvalidArgs(error.message),
                    "limit" => GuestError::Limit(error.message),
                    _ => GuestError::Failed(error.message),
                }),
            }
        })
    }
}

/// `POST /v1/tasks` on this host.
async fn add_here(host: &Host, request: AddRequest) -> Result<(StatusCode, Added), ApiError> {
    let workers: Vec<WorkerId> = if request.all_workers {
        if request.worker.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give `worker` or `all_workers`, not both",
            ));
        }
        host.workers()
            .map(|w| w.id())
            .filter(|w| *w != WorkerId::Main)
            .collect()
    } else {
        vec![request.worker.unwrap_or(WorkerId::Index(0))]
    };
    let retry = request
        .retry
        .as_ref()
        .map(RetrySpec::policy)
        .transpose()
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("retry: {e:#}"),
            )
        })?;
    if request.idempotency_key.is_some() && workers.len() > 1 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "an idempotency key names one task: give `worker`, not `all_workers`",
        ));
    }
    let spec = TaskSpec {
        factory: request.factory.clone(),
        args: request.args.to_string(),
        name: request.name.clone(),
        retry,
        durable: request.durable,
        idempotency_key: request.idempotency_key.clone(),
        connection: None,
    };
    let claim = match request.scope {
        super::schema::NameScope::Worker => None,
        super::schema::NameScope::Cluster => {
            let Some(cluster) = host.cluster() else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "`scope = cluster` is for a host in a cluster, and this one has no [cluster]",
                ));
            };
            let Some(name) = &request.name else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "`scope = cluster` makes a name unique across the cluster: give `name`",
                ));
            };
            if workers.len() != 1 {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "a cluster-scoped name is one task: give `worker`, not `all_workers`",
                ));
            }
            cluster
                .names()
                .claim(name, workers[0])
                .await
                .map_err(|error| match error {
                    crate::cluster::names::ClaimError::Taken { .. } => {
                        ApiError::new(StatusCode::CONFLICT, "duplicate_name", error.to_string())
                    }
                    crate::cluster::names::ClaimError::Unreachable(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_host",
                        error.to_string(),
                    ),
                })?;
            Some((cluster.names(), name.clone()))
        }
    };
    let mut tasks = Vec::new();
    let mut created = false;
    for worker in workers {
        let added = match host.add_task(worker, &request.plugin, spec.clone()).await {
            Ok(added) => added,
            Err(error) => {
                if let Some((names, name)) = &claim {
                    names.release(name).await;
                }
                return Err(add_error(error));
            }
        };
        if let Some((names, name)) = &claim {
            names.bind(name, added.worker, added.id).await;
        }
        created |= added.created;
        tasks.push(AddedTask {
            worker: added.worker,
            id: added.id,
            name: added.name,
            created: added.created,
            host: None,
        });
    }
    // A durable submission whose key named an existing task created
    // nothing: 200 with that task, not 201.
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Added { tasks }))
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
        AddTaskError::Register(RegisterError::Limit(limit)) => {
            ApiError::limit(StatusCode::TOO_MANY_REQUESTS, &limit)
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
        AddTaskError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message),
        AddTaskError::Storage(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
        }
        AddTaskError::Unavailable(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
        AddTaskError::Elsewhere(_) => ApiError::new(StatusCode::CONFLICT, "elsewhere", message),
    }
}

async fn cancel_task(
    State(ctx): State<Ctx>,
    body: Result<Json<CancelRequest>, JsonRejection>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    let Json(request) = body?;
    let workers: Vec<WorkerId> = match &request.worker {
        Some(worker) => vec![*worker],
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
            Ok(info) => Ok(TaskView::from(&info)),
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
            Err(CancelError::Storage(message)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                message,
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

async fn purge(State(ctx): State<Ctx>) -> Result<Json<Purged>, ApiError> {
    let purged = ctx.host.purge().await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("{e:#}"),
        )
    })?;
    // The purged tasks' cluster-scoped names are free at once.
    if let Some(cluster) = ctx.host.cluster() {
        let host = &ctx.host;
        cluster
            .names()
            .release_unlisted(|worker, id| {
                host.worker(worker)
                    .is_some_and(|w| w.registry().get(id).is_some())
            })
            .await;
    }
    Ok(Json(Purged { purged }))
}

async fn dispatch(
    State(ctx): State<Ctx>,
    Path(event): Path<String>,
    body: Result<Json<DispatchRequest>, JsonRejection>,
) -> Result<Json<Woken>, ApiError> {
    let Json(request) = body?;
    crate::events::check_dispatch(&event, &request.payload, &ctx.host.config().limits)
        .map_err(|limit| ApiError::limit(StatusCode::PAYLOAD_TOO_LARGE, &limit))?;
    ctx.host
        .events()
        .check_travels(&event, false)
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message))?;
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
    Ok(Json(Woken {
        woken: ctx.host.dispatch(&event, &request.payload),
    }))
}

async fn list_plugins(State(ctx): State<Ctx>) -> Json<Vec<PluginView>> {
    Json(
        ctx.host
            .builds()
            .into_iter()
            .map(|build| PluginView {
                name: build.plugin.name.to_string(),
                version: build.plugin.version.to_string(),
                path: build.plugin.path.clone(),
                wit: build.plugin.wit_version().to_string(),
                state: if build.serving {
                    BuildState::Serving
                } else {
                    BuildState::Draining
                },
                live_tasks: build.live_tasks,
                data_bytes: build.plugin.data_bytes,
                memory_image: if build.plugin.has_large_image() {
                    MemoryImage::CopyOnWrite
                } else {
                    MemoryImage::Copied
                },
                factories: build
                    .plugin
                    .factories
                    .iter()
                    .map(|f| FactoryView {
                        name: f.name.clone(),
                        description: f.description.clone(),
                    })
                    .collect(),
                host: None,
            })
            .collect(),
    )
}

async fn load_plugin(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Result<Json<LoadRequest>, JsonRejection>,
) -> Result<Json<Loaded>, ApiError> {
    let Json(request) = body?;
    if request.cluster {
        return roll_out(&ctx, &name, &request).await.map(Json);
    }
    let plugin = ctx
        .host
        .load_plugin(&name, &request.path)
        .await
        .map_err(|error| match error {
            LoadError::Missing(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
            LoadError::Refused(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused",
                error.to_string(),
            ),
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
    Ok(Json(Loaded {
        name: plugin.name.to_string(),
        version: plugin.version.to_string(),
        path: plugin.path.clone(),
        restarted,
        rollout: Vec::new(),
    }))
}

/// How long a roll-out waits for the hosts to say what they did: a host
/// compiles the build first (a 12 MB JavaScript component took over 60 s
/// in a debug build on a busy machine).
const ROLLOUT_WAIT: Duration = Duration::from_secs(120);

fn load_error(error: LoadError) -> ApiError {
    match error {
        LoadError::Missing(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
        }
        LoadError::Refused(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused",
            error.to_string(),
        ),
    }
}

/// `load --cluster`: loads the build here (a build this host refuses is
/// put nowhere), then puts it in the cluster's object store and waits for
/// every host present to say what it did.
async fn roll_out(ctx: &Ctx, name: &str, request: &LoadRequest) -> Result<Loaded, ApiError> {
    let cluster = ctx.host.cluster().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`cluster` rolls a build out to a cluster's hosts, and this host has no [cluster]"
                .to_string(),
        )
    })?;
    if request.restart_tasks {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`restart_tasks` is not rolled out: load with `cluster`, then restart the startup \
             tasks host by host"
                .to_string(),
        ));
    }
    let bytes = tokio::fs::read(&request.path).await.map_err(|error| {
        let message = format!(
            "plugin `{name}`: cannot read {}: {error}",
            request.path.display()
        );
        if error.kind() == std::io::ErrorKind::NotFound {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
        } else {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", message)
        }
    })?;
    let plugin = ctx
        .host
        .load_plugin_bytes(name, &request.path, bytes.clone())
        .await
        .map_err(load_error)?;
    let rollout = cluster.rollout();
    let digest = rollout.publish(name, &bytes).await.map_err(|error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("plugin `{name}` was loaded on this host only: {error:#}"),
        )
    })?;
    let hosts: Vec<String> = cluster.hosts().into_iter().map(|beat| beat.host).collect();
    let reports = rollout.reports(name, &digest, &hosts, ROLLOUT_WAIT).await;
    let rollout = hosts
        .iter()
        .map(|host| match reports.iter().find(|r| &r.host == host) {
            Some(report) => HostBuild {
                host: host.clone(),
                build: report.build.clone(),
                error: report.error.clone(),
            },
            None => HostBuild {
                host: host.clone(),
                build: None,
                error: Some(format!(
                    "did not say within {} s whether it loaded the build",
                    ROLLOUT_WAIT.as_secs()
                )),
            },
        })
        .collect();
    Ok(Loaded {
        name: plugin.name.to_string(),
        version: plugin.version.to_string(),
        path: plugin.path.clone(),
        restarted: 0,
        rollout,
    })
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
    let hello = futures_util::stream::once(async { Ok(sse(&LifecycleEvent::Subscribed)) });
    let events = BroadcastStream::new(ctx.host.lifecycle_stream()).map(|item| {
        Ok(match item {
            Ok(event) => sse(&event),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                sse(&LifecycleEvent::Lagged { missed })
            }
        })
    });
    Sse::new(hello.chain(events)).keep_alive(KeepAlive::default())
}

fn scheduler(ctx: &Ctx) -> Result<&Arc<Scheduler>, ApiError> {
    ctx.host.scheduler().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "the schedules start with the workers",
        )
    })
}

fn schedule_error(error: ScheduleError) -> ApiError {
    let message = error.to_string();
    match error {
        ScheduleError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
        ScheduleError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        ScheduleError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message),
        ScheduleError::Limit(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit", message),
        ScheduleError::Storage(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
        }
    }
}

async fn list_schedules(State(ctx): State<Ctx>) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    Ok(Json(
        scheduler(&ctx)?
            .list()
            .iter()
            .map(ScheduleView::from)
            .collect(),
    ))
}

/// `pause` and `resume` answer with the schedule; `trigger` with the tasks
/// it started (409 when its `overlap` refuses).
async fn steer_schedule(
    State(ctx): State<Ctx>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let scheduler = scheduler(&ctx)?;
    let answer = match action.as_str() {
        "pause" | "resume" => {
            let info = scheduler
                .set_paused(&name, action == "pause")
                .await
                .map_err(schedule_error)?;
            serde_json::to_value(ScheduleView::from(&info))
        }
        "trigger" => {
            let tasks = scheduler.trigger(&name).await.map_err(schedule_error)?;
            serde_json::to_value(Triggered {
                schedule: name,
                tasks,
            })
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                format!("no schedule action `{other}` (pause, resume, trigger)"),
            ));
        }
    };
    answer
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// One lifecycle event as a Server-Sent Event: its JSON as the data line.
fn sse(event: &LifecycleEvent) -> Event {
    Event::default().data(serde_json::to_string(event).unwrap_or_default())
}

/// The host's key-value storage (always open in a running host).
fn kv_storage(ctx: &Ctx) -> Result<Arc<dyn Storage>, ApiError> {
    ctx.host.storage().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage",
            "this host has no key-value storage open",
        )
    })
}

fn bucket_id(text: &str) -> Result<BucketId, ApiError> {
    BucketId::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))
}

fn kv_error(error: KvError) -> ApiError {
    match error {
        KvError::Limit(limit) => ApiError::limit(StatusCode::PAYLOAD_TOO_LARGE, &limit),
        KvError::EmptyKey => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", error.to_string())
        }
        KvError::NotAnInteger { .. } | KvError::Overflow { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string())
        }
        KvError::Storage(message) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", message)
        }
    }
}

/// Most keys one `GET /v1/kv/{bucket}` returns.
const MAX_KEYS_PER_PAGE: usize = 10_000;

async fn kv_buckets(State(ctx): State<Ctx>) -> Result<Json<Vec<KvBucketView>>, ApiError> {
    let stats = kv_storage(&ctx)?.buckets().await.map_err(kv_error)?;
    Ok(Json(
        stats
            .into_iter()
            .map(|s| KvBucketView {
                bucket: s.bucket.to_string(),
                keys: s.keys,
                bytes: s.bytes,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn kv_keys(
    State(ctx): State<Ctx>,
    Path(bucket): Path<String>,
    query: Result<Query<KeysQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<KvKeys>, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let id = bucket_id(&bucket)?;
    let limit = query.limit.unwrap_or(1000).clamp(1, MAX_KEYS_PER_PAGE);
    let page = kv_storage(&ctx)?
        .list_keys(&id, query.after.as_deref(), limit)
        .await
        .map_err(kv_error)?;
    Ok(Json(KvKeys {
        bucket: id.to_string(),
        keys: page.keys,
        next: page.next,
    }))
}

async fn kv_get(
    State(ctx): State<Ctx>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Json<KvEntry>, ApiError> {
    let id = bucket_id(&bucket)?;
    let value = kv_storage(&ctx)?
        .get(&id, &key)
        .await
        .map_err(kv_error)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("bucket {id} has no key {key:?}"),
            )
        })?;
    let (text, base64) = match String::from_utf8(value) {
        Ok(text) => (Some(text), None),
        Err(error) => (None, Some(BASE64.encode(error.into_bytes()))),
    };
    Ok(Json(KvEntry {
        bucket: id.to_string(),
        key,
        text,
        base64,
    }))
}

async fn kv_put(
    State(ctx): State<Ctx>,
    Path((bucket, key)): Path<(String, String)>,
    body: Result<Json<KvPut>, JsonRejection>,
) -> Result<Json<KvWritten>, ApiError> {
    let Json(put) = body?;
    let id = bucket_id(&bucket)?;
    let value = match (put.text, put.base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => BASE64.decode(encoded.as_bytes()).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`base64` is not base64: {e}"),
            )
        })?,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give exactly one of `text` and `base64`",
            ));
        }
    };
    kv_storage(&ctx)?
        .set(&id, &key, &value)
        .await
        .map_err(kv_error)?;
    // Operators change state tasks rely on: leave a trace of it.
    tracing::info!(bucket = %id, key, bytes = value.len(), "key-value entry set through the control API");
    Ok(Json(KvWritten {
        bucket: id.to_string(),
        key,
        bytes: value.len(),
        deleted: false,
    }))
}

async fn kv_delete(
    State(ctx): State<Ctx>,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Json<KvWritten>, ApiError> {
    let id = bucket_id(&bucket)?;
    let deleted = kv_storage(&ctx)?
        .delete(&id, &key)
        .await
        .map_err(kv_error)?;
    if deleted {
        tracing::info!(bucket = %id, key, "key-value entry deleted through the control API");
    }
    Ok(Json(KvWritten {
        bucket: id.to_string(),
        key,
        bytes: 0,
        deleted,
    }))
}
