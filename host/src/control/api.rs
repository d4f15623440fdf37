//! The control API's handlers: HTTP only. Each takes its request apart
//! (path, query, JSON body), calls one operation of [`crate::operations`]
//! and writes the answer or the error as JSON. The paths and their types
//! are [`super::routes`].

use super::dashboard::{self, Access, Sessions, same};
use super::{body_limit, kv_body_limit};
use crate::config::LimitsChange;
use crate::host::Host;
use crate::lifecycle::LifecycleEvent;
use crate::operations::types::{
    CancelRequest, ClusterCall, DispatchRequest, Health, KeysQuery, KvBucketView, KvEntry, KvKeys,
    KvPut, KvWritten, LoadRequest, Loaded, LogsQuery, PluginView, Purged, QueueView, ScheduleView,
    TaskFilter, TaskLogs, WaitRequest, Woken,
};
use crate::operations::{DeadLetters, DeadQuery};
use crate::operations::{ErrorKind, OpError, Operations, Submission, Submitted};
use crate::storage::StoredLetter;
use crate::task::TaskView;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;

#[derive(Clone)]
struct Ctx {
    ops: Arc<Operations>,
    token: Arc<str>,
    /// The read-only token (GET requests only); none: there is none.
    read_token: Option<Arc<str>>,
    /// The dashboard's signed-in sessions.
    sessions: Arc<Sessions>,
}

type Answer<T> = Result<Json<T>, OpError>;

pub(super) fn router(host: Arc<Host>, token: String, read_token: Option<String>) -> Router {
    let body_limit = body_limit(&host.config().limits);
    let kv_body_limit = DefaultBodyLimit::max(kv_body_limit(&host.config().limits));
    let ctx = Ctx {
        ops: Operations::new(host),
        token: token.into(),
        read_token: read_token.map(Into::into),
        sessions: Arc::default(),
    };
    use super::routes as r;
    Router::new()
        .route("/ui", get(|| async { dashboard::asset("") }))
        .route("/ui/", get(|| async { dashboard::asset("") }))
        .route("/ui/login", post(sign_in))
        .route("/ui/logout", post(sign_out))
        .route("/ui/session", get(session))
        .route(
            "/ui/{file}",
            get(|Path(file): Path<String>| async move { dashboard::asset(&file) }),
        )
        .route(r::LIST_TASKS.path, get(list_tasks).post(add_task))
        .route(r::CANCEL.path, post(cancel_task))
        .route(r::WAIT.path, post(wait_task))
        .route(r::TASK.path, get(get_task))
        .route(r::TASK_LOGS.path, get(task_logs))
        .route(r::TASK_JOURNAL.path, get(task_journal))
        .route(r::CANCEL_ID.path, post(cancel_by_id))
        .route(r::PURGE.path, post(purge))
        .route(r::DISPATCH.path, post(dispatch))
        .route(r::PLUGINS.path, get(list_plugins))
        .route(r::LOAD_PLUGIN.path, put(load_plugin))
        .route(r::KV_BUCKETS.path, get(kv_buckets))
        .route(r::KV_KEYS.path, get(kv_keys))
        .route(
            r::KV_GET.path,
            get(kv_get)
                .put(kv_put)
                .delete(kv_delete)
                .layer(kv_body_limit),
        )
        .route(r::SCHEDULES.path, get(list_schedules))
        .route(r::STEER_SCHEDULE.path, post(steer_schedule))
        .route(r::QUEUES.path, get(list_queues))
        .route(r::STEER_QUEUE.path, post(steer_queue))
        .route(r::QUEUE_LIMITS.path, put(set_queue_limits))
        .route(r::DEAD.path, get(list_dead))
        .route(r::RETRY_DEAD.path, post(retry_dead))
        .route(r::DISCARD_DEAD.path, delete(discard_dead))
        .route(r::STREAM.path, get(stream))
        .route(r::HOSTS.path, get(list_hosts))
        .route(r::SUMMARY.path, get(summary))
        .route(r::LOADS.path, get(loads))
        .route(r::HEALTH.path, get(health))
        .route(r::CLUSTER_TASKS.path, get(cluster_tasks))
        .route(r::CLUSTER_PLUGINS.path, get(cluster_plugins))
        .route(r::CLUSTER_SCHEDULES.path, get(cluster_schedules))
        .route(r::CLUSTER_CANCEL.path, post(cluster_cancel))
        .route(r::CLUSTER_PURGE.path, post(cluster_purge))
        .route("/v1/cluster/{*rest}", get(not_across).post(not_across))
        .route(r::METRICS.path, get(metrics))
        .fallback(|| async { OpError::new(ErrorKind::NoRoute, "no such endpoint") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            OpError::new(
                ErrorKind::MethodNotAllowed,
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
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        StatusCode::METHOD_NOT_ALLOWED => ErrorKind::MethodNotAllowed,
        StatusCode::NOT_FOUND => ErrorKind::NoRoute,
        status if status.is_server_error() => ErrorKind::Internal,
        _ => ErrorKind::BadRequest,
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    // The extractor's status stands (a 415 stays a 415).
    let mut response = OpError::new(kind, message).into_response();
    *response.status_mut() = status;
    response
}

/// Longest plain-text error body rewrapped as JSON.
const MAX_ERROR_TEXT: usize = 16 * 1024;

impl IntoResponse for OpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

/// A body that is not the request's JSON: 400 (not JSON), 422 (JSON of
/// the wrong shape), 415 (not declared JSON), 413 (past the size bound).
fn body_error(rejection: JsonRejection) -> OpError {
    let kind = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        StatusCode::UNPROCESSABLE_ENTITY => ErrorKind::BadBody,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::BadMediaType,
        _ => ErrorKind::BadRequest,
    };
    OpError::new(kind, rejection.body_text())
}

fn query_error(rejection: QueryRejection) -> OpError {
    OpError::bad_request(rejection.body_text())
}

/// Every route needs `Authorization: Bearer <token>`.
async fn authorize(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    // Health is for probes that hold no token; it tells only ok or degraded.
    // The dashboard's page and its sign-in hold no data and check their own.
    let path = request.uri().path();
    if path == super::routes::HEALTH.path || path == "/ui" || path.starts_with("/ui/") {
        return next.run(request).await;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let access = match presented {
        Some(token) => ctx
            .access_of(token)
            .ok_or_else(|| OpError::new(ErrorKind::Unauthorized, "wrong token"))
            .and_then(|access| access.allows(request.method()).map(|()| access)),
        None => match ctx.sessions.authorize(&headers, request.method()) {
            Some(access) => access,
            None => Err(OpError::new(
                ErrorKind::Unauthorized,
                "missing `Authorization: Bearer <token>` (the token is in the host's control \
                 file)",
            )),
        },
    };
    match access {
        Ok(_) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

impl Ctx {
    /// What `token` may do: none if it is neither token.
    fn access_of(&self, token: &str) -> Option<Access> {
        if same(token.as_bytes(), self.token.as_bytes()) {
            Some(Access::Full)
        } else if self
            .read_token
            .as_ref()
            .is_some_and(|read| same(token.as_bytes(), read.as_bytes()))
        {
            Some(Access::ReadOnly)
        } else {
            None
        }
    }
}

/// `POST /ui/login` `{"token"}`: either token starts a dashboard session
/// (a cookie; the answer has its access and CSRF value).
async fn sign_in(
    State(ctx): State<Ctx>,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Result<Response, OpError> {
    let Json(body) = body.map_err(body_error)?;
    let access = ctx.access_of(body.token.trim()).ok_or_else(|| {
        OpError::new(
            ErrorKind::Unauthorized,
            "wrong token: use the `token` (or `read_token`) of the host's control file",
        )
    })?;
    let (view, cookie) = ctx.sessions.sign_in(access)?;
    Ok(([(header::SET_COOKIE, cookie)], Json(view)).into_response())
}

/// `POST /ui/logout`: ends the session.
async fn sign_out(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let cookie = ctx.sessions.sign_out(&headers);
    ([(header::SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

/// `GET /ui/session`: the session the cookie names, or 401.
async fn session(State(ctx): State<Ctx>, headers: HeaderMap) -> Result<Response, OpError> {
    let view = ctx
        .sessions
        .current(&headers)
        .ok_or_else(|| OpError::new(ErrorKind::Unauthorized, "not signed in"))?;
    let app = ctx.ops.host().config().name.clone();
    Ok(Json(serde_json::json!({ "session": view, "app": app })).into_response())
}

/// A sign-in's body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

async fn list_tasks(
    State(ctx): State<Ctx>,
    query: Result<Query<TaskFilter>, QueryRejection>,
) -> Answer<Vec<TaskView>> {
    let Query(filter) = query.map_err(query_error)?;
    ctx.ops.list_tasks(&filter).map(Json)
}

async fn get_task(State(ctx): State<Ctx>, Path(id): Path<String>) -> Answer<TaskView> {
    ctx.ops.task(&id).map(Json)
}

async fn cancel_by_id(State(ctx): State<Ctx>, Path(id): Path<String>) -> Answer<TaskView> {
    ctx.ops.cancel_by_id(&id).await.map(Json)
}

async fn task_journal(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Answer<crate::operations::types::TaskJournal> {
    ctx.ops.task_journal(&id).await.map(Json)
}

async fn task_logs(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Answer<TaskLogs> {
    let Query(query) = query.map_err(query_error)?;
    ctx.ops.task_logs(&id, &query).await.map(Json)
}

/// 201 when a task was created, 200 when a durable submission's key named
/// a task that existed.
async fn add_task(
    State(ctx): State<Ctx>,
    body: Result<Json<Submission>, JsonRejection>,
) -> Result<(StatusCode, Json<Submitted>), OpError> {
    let Json(submission) = body.map_err(body_error)?;
    let submitted = ctx.ops.submit(submission).await?;
    let status = if submitted.created() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(submitted)))
}

async fn cancel_task(
    State(ctx): State<Ctx>,
    body: Result<Json<CancelRequest>, JsonRejection>,
) -> Answer<Vec<TaskView>> {
    let Json(request) = body.map_err(body_error)?;
    ctx.ops.cancel(request).await.map(Json)
}

async fn wait_task(
    State(ctx): State<Ctx>,
    body: Result<Json<WaitRequest>, JsonRejection>,
) -> Answer<TaskView> {
    let Json(request) = body.map_err(body_error)?;
    ctx.ops.wait(request).await.map(Json)
}

async fn purge(State(ctx): State<Ctx>) -> Answer<Purged> {
    ctx.ops.purge().await.map(Json)
}

async fn dispatch(
    State(ctx): State<Ctx>,
    Path(event): Path<String>,
    body: Result<Json<DispatchRequest>, JsonRejection>,
) -> Answer<Woken> {
    let Json(request) = body.map_err(body_error)?;
    ctx.ops.dispatch(&event, request).await.map(Json)
}

async fn list_plugins(State(ctx): State<Ctx>) -> Json<Vec<PluginView>> {
    Json(ctx.ops.plugins())
}

async fn load_plugin(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Result<Json<LoadRequest>, JsonRejection>,
) -> Answer<Loaded> {
    let Json(request) = body.map_err(body_error)?;
    ctx.ops.load_plugin(&name, request).await.map(Json)
}

async fn list_schedules(State(ctx): State<Ctx>) -> Answer<Vec<ScheduleView>> {
    ctx.ops.schedules().map(Json)
}

async fn steer_schedule(
    State(ctx): State<Ctx>,
    Path((name, action)): Path<(String, String)>,
) -> Answer<serde_json::Value> {
    let action = action.parse()?;
    ctx.ops.steer_schedule(&name, action).await.map(Json)
}

async fn list_queues(State(ctx): State<Ctx>) -> Answer<Vec<QueueView>> {
    ctx.ops.queues().await.map(Json)
}

async fn steer_queue(
    State(ctx): State<Ctx>,
    Path((name, action)): Path<(String, String)>,
) -> Answer<QueueView> {
    let action = action.parse()?;
    ctx.ops.steer_queue(&name, action).await.map(Json)
}

async fn set_queue_limits(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    body: Result<Json<LimitsChange>, JsonRejection>,
) -> Answer<QueueView> {
    let Json(change) = body.map_err(body_error)?;
    ctx.ops.set_queue_limits(&name, change).await.map(Json)
}

async fn list_dead(
    State(ctx): State<Ctx>,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Answer<DeadLetters> {
    let Query(query) = query.map_err(query_error)?;
    ctx.ops.dead(&query).await.map(Json)
}

fn letter_id(text: &str) -> Result<u64, OpError> {
    text.parse().map_err(|_| {
        OpError::bad_request(format!(
            "{text:?} is not a dead letter's id (a number, as `taskhost dead` lists them)"
        ))
    })
}

async fn retry_dead(State(ctx): State<Ctx>, Path(id): Path<String>) -> Answer<Submitted> {
    ctx.ops.retry_dead(letter_id(&id)?).await.map(Json)
}

async fn discard_dead(State(ctx): State<Ctx>, Path(id): Path<String>) -> Answer<StoredLetter> {
    ctx.ops.discard_dead(letter_id(&id)?).await.map(Json)
}

async fn health(State(ctx): State<Ctx>) -> Json<Health> {
    Json(ctx.ops.health())
}

async fn loads(State(ctx): State<Ctx>) -> Answer<Vec<crate::host::LoadRecord>> {
    Ok(Json(ctx.ops.loads()))
}

async fn summary(State(ctx): State<Ctx>) -> Answer<crate::operations::types::TaskSummary> {
    Ok(Json(ctx.ops.summary()))
}

async fn list_hosts(State(ctx): State<Ctx>) -> Answer<Vec<crate::cluster::HostBeat>> {
    ctx.ops.hosts().map(Json)
}

async fn cluster_tasks(
    State(ctx): State<Ctx>,
    query: Result<Query<TaskFilter>, QueryRejection>,
) -> Answer<Vec<serde_json::Value>> {
    let Query(filter) = query.map_err(query_error)?;
    let call = ClusterCall::ListTasks { filter };
    ctx.ops.across_cluster(call).await.map(Json)
}

async fn cluster_plugins(State(ctx): State<Ctx>) -> Answer<Vec<serde_json::Value>> {
    ctx.ops
        .across_cluster(ClusterCall::ListPlugins)
        .await
        .map(Json)
}

async fn cluster_schedules(State(ctx): State<Ctx>) -> Answer<Vec<serde_json::Value>> {
    ctx.ops
        .across_cluster(ClusterCall::ListSchedules)
        .await
        .map(Json)
}

async fn cluster_cancel(
    State(ctx): State<Ctx>,
    body: Result<Json<CancelRequest>, JsonRejection>,
) -> Answer<Vec<serde_json::Value>> {
    let Json(request) = body.map_err(body_error)?;
    let call = ClusterCall::Cancel { request };
    ctx.ops.across_cluster(call).await.map(Json)
}

async fn cluster_purge(State(ctx): State<Ctx>) -> Answer<Vec<serde_json::Value>> {
    ctx.ops.across_cluster(ClusterCall::Purge).await.map(Json)
}

/// `/v1/cluster/...` of a request that does not go to every host.
async fn not_across(method: axum::http::Method, Path(rest): Path<String>) -> OpError {
    OpError::bad_request(format!(
        "{method} /v1/{rest} does not go across a cluster; these do: GET /v1/tasks, \
         /v1/plugins, /v1/schedules; POST /v1/tasks/cancel, /v1/purge"
    ))
}

async fn metrics(State(ctx): State<Ctx>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.ops.host().metrics_text(),
    )
        .into_response()
}

async fn stream(
    State(ctx): State<Ctx>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    // The first event says the stream is attached: a follower that waits
    // for it misses nothing that happens afterwards.
    let hello = futures_util::stream::once(async { Ok(sse(&LifecycleEvent::Subscribed)) });
    let events = BroadcastStream::new(ctx.ops.host().lifecycle_stream()).map(|item| {
        Ok(match item {
            Ok(event) => sse(&event),
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(missed)) => {
                sse(&LifecycleEvent::Lagged { missed })
            }
        })
    });
    Sse::new(hello.chain(events)).keep_alive(KeepAlive::default())
}

/// One lifecycle event as a Server-Sent Event: its JSON as the data line.
fn sse(event: &LifecycleEvent) -> Event {
    Event::default().data(serde_json::to_string(event).unwrap_or_default())
}

async fn kv_buckets(State(ctx): State<Ctx>) -> Answer<Vec<KvBucketView>> {
    ctx.ops.kv_buckets().await.map(Json)
}

async fn kv_keys(
    State(ctx): State<Ctx>,
    Path(bucket): Path<String>,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> Answer<KvKeys> {
    let Query(query) = query.map_err(query_error)?;
    ctx.ops.kv_keys(&bucket, &query).await.map(Json)
}

async fn kv_get(
    State(ctx): State<Ctx>,
    Path((bucket, key)): Path<(String, String)>,
) -> Answer<KvEntry> {
    ctx.ops.kv_get(&bucket, key).await.map(Json)
}

async fn kv_put(
    State(ctx): State<Ctx>,
    Path((bucket, key)): Path<(String, String)>,
    body: Result<Json<KvPut>, JsonRejection>,
) -> Answer<KvWritten> {
    let Json(put) = body.map_err(body_error)?;
    ctx.ops.kv_put(&bucket, key, put).await.map(Json)
}

async fn kv_delete(
    State(ctx): State<Ctx>,
    Path((bucket, key)): Path<(String, String)>,
) -> Answer<KvWritten> {
    ctx.ops.kv_delete(&bucket, key).await.map(Json)
}
