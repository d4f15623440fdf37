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

use crate::operations::types::{
    CancelRequest, DispatchRequest, Health, KeysQuery, KvBucketView, KvEntry, KvKeys, KvPut,
    KvWritten, LoadRequest, Loaded, PluginView, Purged, ScheduleView, Submission, Submitted,
    TaskFilter, Woken,
};
use crate::task::TaskView;
use std::marker::PhantomData;

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
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
    pub method: Method,
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
    pub method: Method,
    pub path: &'static str,
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

pub const LIST_TASKS: Route<TaskFilter, Vec<TaskView>> = Route::new(
    Get,
    "/v1/tasks",
    "list tasks (`worker`, `state`, `plugin`, `name`)",
);
pub const SUBMIT: Route<Submission, Submitted> = Route::new(
    Post,
    "/v1/tasks",
    "add a task (one worker, all, or a host of the cluster)",
);
pub const CANCEL: Route<CancelRequest, Vec<TaskView>> =
    Route::new(Post, "/v1/tasks/cancel", "cancel by name, wait until ended");
pub const TASK: Route<(), TaskView> = Route::new(Get, "/v1/tasks/{id}", "one task");
pub const PURGE: Route<(), Purged> = Route::new(Post, "/v1/purge", "drop ended tasks");
pub const DISPATCH: Route<DispatchRequest, Woken> =
    Route::new(Post, "/v1/events/{event}", "dispatch an event");
pub const PLUGINS: Route<(), Vec<PluginView>> =
    Route::new(Get, "/v1/plugins", "plugins and their builds");
pub const LOAD_PLUGIN: Route<LoadRequest, Loaded> =
    Route::new(Put, "/v1/plugins/{name}", "load or replace a plugin");
pub const KV_BUCKETS: Route<(), Vec<KvBucketView>> =
    Route::new(Get, "/v1/kv", "key-value buckets, with key and byte counts");
pub const KV_KEYS: Route<KeysQuery, KvKeys> = Route::new(
    Get,
    "/v1/kv/{bucket}",
    "a page of a bucket's keys (`after`, `limit`)",
);
pub const KV_GET: Route<(), KvEntry> = Route::new(Get, "/v1/kv/{bucket}/{*key}", "one value");
pub const KV_PUT: Route<KvPut, KvWritten> =
    Route::new(Put, "/v1/kv/{bucket}/{*key}", "set one value");
pub const KV_DELETE: Route<(), KvWritten> =
    Route::new(Delete, "/v1/kv/{bucket}/{*key}", "delete one value");
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
pub const STREAM: Route<(), ()> =
    Route::new(Get, "/v1/stream", "lifecycle events (Server-Sent Events)");
pub const HOSTS: Route<(), Vec<crate::cluster::HostBeat>> =
    Route::new(Get, "/v1/hosts", "the hosts of this host's cluster");
pub const HEALTH: Route<(), Health> =
    Route::new(Get, "/health", "ok, or degraded with why (no token needed)");
pub const METRICS: Route<(), String> = Route::new(Get, "/metrics", "Prometheus / OpenMetrics text");
pub const CLUSTER_TASKS: Route<TaskFilter, Vec<serde_json::Value>> = Route::new(
    Get,
    "/v1/cluster/tasks",
    "every host's tasks, each with its host",
);
pub const CLUSTER_PLUGINS: Route<(), Vec<serde_json::Value>> =
    Route::new(Get, "/v1/cluster/plugins", "every host's builds");
pub const CLUSTER_SCHEDULES: Route<(), Vec<serde_json::Value>> =
    Route::new(Get, "/v1/cluster/schedules", "every host's schedules");
pub const CLUSTER_CANCEL: Route<CancelRequest, Vec<serde_json::Value>> = Route::new(
    Post,
    "/v1/cluster/tasks/cancel",
    "cancel by name on every host that has such a task",
);
pub const CLUSTER_PURGE: Route<(), Vec<serde_json::Value>> =
    Route::new(Post, "/v1/cluster/purge", "drop ended tasks on every host");

/// Every route, in the order the docs list them.
pub const ALL: [Listed; 24] = [
    LIST_TASKS.listed(),
    SUBMIT.listed(),
    CANCEL.listed(),
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
    STREAM.listed(),
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
