//! Every endpoint of the control API, once: its method, its path and the
//! types of its request and answer. The router mounts these paths, the
//! CLI's client calls them (`Client::call`), the tests' client too, and a
//! test holds docs/control.md to this list, so no path is a string typed in
//! two places.
//!
//! A path's `{name}` is one segment and `{*name}` the rest of the path
//! (axum's syntax); [`Route::path_with`] fills them in, percent-encoded. A
//! GET's or DELETE's request is its query string, others' their JSON body;
//! `()` is no request.

use crate::config::LimitsChange;
use crate::operations::types::{
    CancelRequest, DeadLetters, DeadQuery, DispatchRequest, Health, KeysQuery, KvBucketView,
    KvEntry, KvKeys, KvPut, KvWritten, LoadRequest, Loaded, LogsQuery, PluginView, Purged,
    QueueView, ScheduleView, Submission, Submitted, TaskFilter, TaskLogs, WaitRequest, Woken,
};
use crate::storage::StoredLetter;
use crate::task::TaskView;
use std::marker::PhantomData;

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A read; its request, if any, is the query string.
    Get,
    /// An action or a new thing; its request is the JSON body.
    Post,
    /// Sets the thing the path names, whole; its request is the JSON body.
    Put,
    /// Removes the thing the path names; its request, if any, is the query
    /// string.
    Delete,
}

impl Method {
    /// The method as HTTP spells it: `GET`, `POST`, `PUT`, `DELETE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    /// Whether the request goes in the query string (else in the body).
    pub fn takes_query(self) -> bool {
        matches!(self, Method::Get | Method::Delete)
    }
}

/// One endpoint: `Request` is what it takes, `Answer` what a success
/// answers.
pub struct Route<Request, Answer> {
    /// The method it is mounted under; another method on its path is 405.
    pub method: Method,
    /// As axum mounts it: `{name}` is one segment, `{*name}` the rest of the
    /// path (see [`Route::path_with`]).
    pub path: &'static str,
    /// What it does, for the docs' table.
    pub does: &'static str,
    types: PhantomData<fn(Request) -> Answer>,
}

impl<Request, Answer> Route<Request, Answer> {
    const fn new(method: Method, path: &'static str, does: &'static str) -> Self {
        Route {
            method,
            path,
            does,
            types: PhantomData,
        }
    }

    /// The path with its `{...}` parts replaced by `params`, in order, each
    /// percent-encoded (slashes too: a key with one stays one key).
    pub fn path_with(&self, params: &[&str]) -> String {
        let mut path = String::new();
        let mut params = params.iter();
        let mut rest = self.path;
        while let Some(open) = rest.find('{') {
            path.push_str(&rest[..open]);
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
            let value = params.next().copied().unwrap_or_default();
            path.push_str(&encode(value));
            rest = &rest[(close + 1).min(rest.len())..];
        }
        path.push_str(rest);
        path
    }

    /// The path to call with `params` filled in and `request` as its query
    /// (a GET or DELETE), and the JSON body (others); the error says why
    /// the request does not encode.
    pub fn request(
        &self,
        params: &[&str],
        request: &Request,
    ) -> Result<(String, Option<String>), String>
    where
        Request: serde::Serialize,
    {
        let mut path = self.path_with(params);
        if self.method.takes_query() {
            path.push_str(&query_of(request)?);
            Ok((path, None))
        } else {
            let body = serde_json::to_string(request)
                .map_err(|e| format!("cannot encode the request: {e}"))?;
            Ok((path, Some(body)))
        }
    }

    /// What [`ALL`] lists of it.
    pub const fn listed(&self) -> Listed {
        Listed {
            method: self.method,
            path: self.path,
            does: self.does,
        }
    }
}

/// A route without its types, as the docs list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// As [`Route::method`].
    pub method: Method,
    /// As [`Route::path`], with its `{...}` parts unfilled.
    pub path: &'static str,
    /// As [`Route::does`]: a few words for the docs' table.
    pub does: &'static str,
}

/// `request` as a query string (`?a=1&b=x`, values percent-encoded),
/// from its JSON object's present fields; empty for none.
fn query_of(request: &impl serde::Serialize) -> Result<String, String> {
    let value =
        serde_json::to_value(request).map_err(|e| format!("cannot encode the request: {e}"))?;
    let serde_json::Value::Object(fields) = value else {
        return Ok(String::new());
    };
    let pairs: Vec<String> = fields
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            format!("{key}={}", encode(&text))
        })
        .collect();
    Ok(if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    })
}

/// Percent-encodes `text` for a path segment or a query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

use Method::{Delete, Get, Post, Put};

/// This host's tasks, the query's fields narrowing them; a `state` that is no
/// state is a 400.
pub const LIST_TASKS: Route<TaskFilter, Vec<TaskView>> = Route::new(
    Get,
    "/v1/tasks",
    "list tasks (`worker`, `state`, `plugin`, `name`)",
);
/// 201 with the tasks started; 200 with `created: false` when the idempotency
/// key named a task that exists.
pub const SUBMIT: Route<Submission, Submitted> = Route::new(
    Post,
    "/v1/tasks",
    "add a task (one worker, all, or a host of the cluster)",
);
/// Answers once every task so named has ended (forced after the grace period),
/// or 504 `timeout` past `timeout_ms` (10 s by default).
pub const CANCEL: Route<CancelRequest, Vec<TaskView>> =
    Route::new(Post, "/v1/tasks/cancel", "cancel by name, wait until ended");
/// Answers the task (by `id`, or `name`) once it has ended, result included;
/// 504 `timeout` past `timeout_ms` (10 s by default), the task going on.
pub const WAIT: Route<WaitRequest, TaskView> =
    Route::new(Post, "/v1/tasks/wait", "wait until a task has ended");
/// `{id}` is the task's number on this host; 404 `not_found` once it is purged,
/// or if it never was.
pub const TASK: Route<(), TaskView> = Route::new(Get, "/v1/tasks/{id}", "one task");
/// `POST /v1/tasks/{id}/cancel`.
pub const CANCEL_ID: Route<(), TaskView> = Route::new(
    Post,
    "/v1/tasks/{id}/cancel",
    "cancel one task by id, wait until ended",
);
/// `GET /v1/tasks/{id}/logs?after=&limit=&wait_ms=`.
pub const TASK_LOGS: Route<LogsQuery, TaskLogs> =
    Route::new(Get, "/v1/tasks/{id}/logs", "a task's kept log lines");
/// `GET /v1/tasks/{id}/journal`: a resuming task's journal; 404 for a task
/// that keeps none.
pub const TASK_JOURNAL: Route<(), crate::operations::types::TaskJournal> = Route::new(
    Get,
    "/v1/tasks/{id}/journal",
    "a resuming task's journal of host calls",
);
/// Drops the ended tasks of every worker, and the kept records of ended durable
/// tasks; their names are free again.
pub const PURGE: Route<(), Purged> = Route::new(Post, "/v1/purge", "drop ended tasks");
/// Wakes the tasks waiting for `{event}`; 413 `limit` for a payload over
/// `event_payload_bytes`.
pub const DISPATCH: Route<DispatchRequest, Woken> =
    Route::new(Post, "/v1/events/{event}", "dispatch an event");
/// Every loaded build: each plugin's serving one, and older ones still draining
/// their tasks.
pub const PLUGINS: Route<(), Vec<PluginView>> =
    Route::new(Get, "/v1/plugins", "plugins and their builds");
/// Loads `{name}` from a file on the host; 422 `refused` leaves the old build
/// serving, 404 `not_found` for no file.
pub const LOAD_PLUGIN: Route<LoadRequest, Loaded> =
    Route::new(Put, "/v1/plugins/{name}", "load or replace a plugin");
/// Every bucket that holds a key: `PLUGIN/NAME` for a plugin's own, `NAME` for
/// a shared one.
pub const KV_BUCKETS: Route<(), Vec<KvBucketView>> =
    Route::new(Get, "/v1/kv", "key-value buckets, with key and byte counts");
/// Keys in byte order, 1,000 a page unless `limit` says (at most 10,000).
pub const KV_KEYS: Route<KeysQuery, KvKeys> = Route::new(
    Get,
    "/v1/kv/{bucket}",
    "a page of a bucket's keys (`after`, `limit`)",
);
/// `{*key}` is the rest of the path, so a key may hold `/`; 404 `not_found`
/// when there is no such key.
pub const KV_GET: Route<(), KvEntry> = Route::new(Get, "/v1/kv/{bucket}/{*key}", "one value");
/// Stores `text` or `base64`, logged at info; 413 `limit` past a `kv_*` bound
/// of `[limits]`.
pub const KV_PUT: Route<KvPut, KvWritten> =
    Route::new(Put, "/v1/kv/{bucket}/{*key}", "set one value");
/// `deleted` says whether there was a key; a deletion is logged at info.
pub const KV_DELETE: Route<(), KvWritten> =
    Route::new(Delete, "/v1/kv/{bucket}/{*key}", "delete one value");
/// App.toml's schedules and those guests added; 503 `starting` until the
/// workers have started.
pub const SCHEDULES: Route<(), Vec<ScheduleView>> = Route::new(
    Get,
    "/v1/schedules",
    "schedules: next run, last outcome, runs, misses",
);
/// `pause` and `resume` answer with the schedule, `trigger` with the tasks
/// it started.
pub const STEER_SCHEDULE: Route<(), serde_json::Value> = Route::new(
    Post,
    "/v1/schedules/{name}/{action}",
    "pause, resume or trigger a schedule",
);
/// Every queue: waiting, running, start rate, oldest wait, top keys,
/// dead letters, limits.
pub const QUEUES: Route<(), Vec<QueueView>> =
    Route::new(Get, "/v1/queues", "queues: waiting, running, rate, limits");
/// `pause`, `resume`, `drain` or `reset` a queue, answering with it; kept
/// across restarts.
pub const STEER_QUEUE: Route<(), QueueView> = Route::new(
    Post,
    "/v1/queues/{name}/{action}",
    "pause, resume, drain or reset a queue",
);
/// Each field given replaces the queue's limit (`0` or `"off"` removes
/// it); kept across restarts until `reset`.
pub const QUEUE_LIMITS: Route<LimitsChange, QueueView> = Route::new(
    Put,
    "/v1/queues/{name}/limits",
    "change a queue's limits at run time",
);
/// Dead letters, oldest first, a page at a time.
pub const DEAD: Route<DeadQuery, DeadLetters> =
    Route::new(Get, "/v1/dead", "dead letters: queued tasks that failed");
/// Submits a dead letter again and drops it.
pub const RETRY_DEAD: Route<(), Submitted> =
    Route::new(Post, "/v1/dead/{id}/retry", "submit a dead letter again");
/// Drops a dead letter, answering with it.
pub const DISCARD_DEAD: Route<(), StoredLetter> =
    Route::new(Delete, "/v1/dead/{id}", "drop a dead letter");
/// Server-Sent Events, one [`crate::lifecycle::LifecycleEvent`] each,
/// `subscribed` first; it ends only with the host.
pub const STREAM: Route<(), ()> =
    Route::new(Get, "/v1/stream", "lifecycle events (Server-Sent Events)");
/// This host's last 100 plugin loads and refusals, newest first: each the
/// stream's `plugin_loaded` or `plugin_refused` event with its `at_ms`.
pub const LOADS: Route<(), Vec<crate::host::LoadRecord>> = Route::new(
    Get,
    "/v1/loads",
    "the last 100 plugin loads and refusals (hot-load history)",
);
/// This host's tasks counted by state, failed in the last hour and done in
/// the last minute: what the dashboard's overview shows, at the cost of a
/// count however many tasks are kept.
pub const SUMMARY: Route<(), crate::operations::types::TaskSummary> = Route::new(
    Get,
    "/v1/summary",
    "task counts by state, failed in the last hour, done in the last minute",
);
/// The hosts of this host's cluster, as their heartbeats say; 404 `no_cluster`
/// without `[cluster]`.
pub const HOSTS: Route<(), Vec<crate::cluster::HostBeat>> =
    Route::new(Get, "/v1/hosts", "the hosts of this host's cluster");
/// Always 200 while the host serves, degraded or not; the one route that needs
/// no token.
pub const HEALTH: Route<(), Health> =
    Route::new(Get, "/health", "ok, or degraded with why (no token needed)");
/// OpenMetrics text, not JSON; needs the bearer token like every route but
/// [`HEALTH`].
pub const METRICS: Route<(), String> = Route::new(Get, "/metrics", "Prometheus / OpenMetrics text");
/// [`LIST_TASKS`] on every host present: the arrays joined, each entry with its
/// `host`.
pub const CLUSTER_TASKS: Route<TaskFilter, Vec<serde_json::Value>> = Route::new(
    Get,
    "/v1/cluster/tasks",
    "every host's tasks, each with its host",
);
/// [`PLUGINS`] on every host present, each build with its `host`.
pub const CLUSTER_PLUGINS: Route<(), Vec<serde_json::Value>> =
    Route::new(Get, "/v1/cluster/plugins", "every host's builds");
/// [`SCHEDULES`] on every host present, each schedule with its `host`.
pub const CLUSTER_SCHEDULES: Route<(), Vec<serde_json::Value>> =
    Route::new(Get, "/v1/cluster/schedules", "every host's schedules");
/// [`CANCEL`] on every host present; a host's `not_found` is an error only if
/// no host had the task.
pub const CLUSTER_CANCEL: Route<CancelRequest, Vec<serde_json::Value>> = Route::new(
    Post,
    "/v1/cluster/tasks/cancel",
    "cancel by name on every host that has such a task",
);
/// [`PURGE`] on every host present: one `{purged, host}` per host.
pub const CLUSTER_PURGE: Route<(), Vec<serde_json::Value>> =
    Route::new(Post, "/v1/cluster/purge", "drop ended tasks on every host");

/// Every route, in the order the docs list them.
pub const ALL: [Listed; 34] = [
    LIST_TASKS.listed(),
    SUBMIT.listed(),
    CANCEL.listed(),
    WAIT.listed(),
    TASK.listed(),
    PURGE.listed(),
    DISPATCH.listed(),
    PLUGINS.listed(),
    LOAD_PLUGIN.listed(),
    KV_BUCKETS.listed(),
    KV_KEYS.listed(),
    KV_GET.listed(),
    KV_PUT.listed(),
    KV_DELETE.listed(),
    SCHEDULES.listed(),
    STEER_SCHEDULE.listed(),
    QUEUES.listed(),
    STEER_QUEUE.listed(),
    QUEUE_LIMITS.listed(),
    DEAD.listed(),
    RETRY_DEAD.listed(),
    DISCARD_DEAD.listed(),
    STREAM.listed(),
    TASK_JOURNAL.listed(),
    SUMMARY.listed(),
    LOADS.listed(),
    HOSTS.listed(),
    HEALTH.listed(),
    METRICS.listed(),
    CLUSTER_TASKS.listed(),
    CLUSTER_PLUGINS.listed(),
    CLUSTER_SCHEDULES.listed(),
    CLUSTER_CANCEL.listed(),
    CLUSTER_PURGE.listed(),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_filled_in_order_and_encoded() {
        assert_eq!(TASK.path_with(&["12"]), "/v1/tasks/12");
        assert_eq!(
            KV_GET.path_with(&["examples/state", "a b/c"]),
            "/v1/kv/examples%2Fstate/a%20b%2Fc"
        );
        assert_eq!(
            STEER_SCHEDULE.path_with(&["nightly run", "pause"]),
            "/v1/schedules/nightly%20run/pause"
        );
        assert_eq!(PURGE.path_with(&[]), "/v1/purge");
    }
}
