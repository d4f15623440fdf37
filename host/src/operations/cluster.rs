//! The operations that reach the other hosts of a cluster: what this host
//! answers when they ask ([`Submissions`], [`ClusterCalls`], [`HostPlugins`]),
//! how answers from several hosts are joined, and the roll-out of a build.

use super::types::{ClusterCall, HostBuild, LoadRequest, Loaded, Submission, WaitRequest};
use super::{ErrorKind, OpError, Operations, load_error};
use crate::host::Host;
use crate::task::TaskView;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a roll-out waits for the hosts to say what they did: a host
/// compiles the build first (a 12 MB JavaScript component took over 60 s
/// in a debug build on a busy machine).
const ROLLOUT_WAIT: Duration = Duration::from_secs(120);

type Answering = Pin<Box<dyn Future<Output = (u16, bytes::Bytes)> + Send>>;

/// An answer to another host: the status and JSON body the control API
/// would answer with.
fn answer<T: serde::Serialize>(result: Result<T, OpError>, ok: u16) -> (u16, bytes::Bytes) {
    let (status, body) = match result {
        Ok(value) => (ok, serde_json::to_vec(&value)),
        Err(error) => (error.kind.status(), serde_json::to_vec(&error.body())),
    };
    (status, body.unwrap_or_default().into())
}

pub(super) fn no_cluster() -> OpError {
    OpError::new(
        ErrorKind::NoCluster,
        "this host has no [cluster]: it is the only host",
    )
}

pub(super) fn request_error(error: crate::cluster::RequestError) -> OpError {
    let kind = match error {
        crate::cluster::RequestError::TimedOut { .. } => ErrorKind::HostTimedOut,
        _ => ErrorKind::NoHost,
    };
    OpError::new(kind, error.to_string())
}

/// One error for the hosts that refused: their kind when they all gave
/// one (a guest's `start-task-on` gets `duplicate-name`, say), `not_found`
/// when they all found nothing (no such task here, no such worker
/// there), else `refused`; the message says what each host said.
pub(super) fn joined_error(failed: &[(String, OpError)]) -> OpError {
    let first = failed.first().map_or(ErrorKind::Refused, |(_, e)| e.kind);
    let kind = if failed.iter().all(|(_, e)| e.kind == first) {
        first
    } else if failed.iter().all(|(_, e)| e.kind.status() == 404) {
        ErrorKind::NotFound
    } else {
        ErrorKind::Refused
    };
    let said: Vec<String> = failed
        .iter()
        .map(|(host, error)| format!("host {host}: {}: {}", error.kind, error.message))
        .collect();
    OpError::new(kind, said.join("; "))
}

/// `call` on every host present, the answers' arrays joined, each entry
/// with its `host`. A host's `not_found` is no error while another host
/// answered.
pub(super) async fn across(
    host: &Host,
    call: ClusterCall,
) -> Result<Vec<serde_json::Value>, OpError> {
    let cluster = host.cluster().ok_or_else(no_cluster)?;
    let payload = serde_json::to_vec(&call).unwrap_or_default();
    let answers = cluster
        .request(
            crate::cluster::Kind::Calls,
            &crate::cluster::Target::All,
            payload.into(),
        )
        .await
        .map_err(request_error)?;
    let mut joined = Vec::new();
    let mut failed = Vec::new();
    let mut answered = false;
    for answer in answers {
        if !(200..300).contains(&answer.status) {
            failed.push((answer.host, OpError::of_answer(answer.status, &answer.body)));
            continue;
        }
        answered = true;
        // An array's entries each, an object (a purge's count) as one
        // entry; each says which host it came from.
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
    }
    // Any "not here" (no such task, no such worker) of a host is no error
    // while another host answered.
    failed.retain(|(_, error)| !(answered && error.kind.status() == 404));
    if failed.is_empty() {
        Ok(joined)
    } else {
        Err(joined_error(&failed))
    }
}

/// `load --cluster`: loads the build here (a build this host refuses is
/// put nowhere), then puts it in the cluster's object store and waits for
/// every host present to say what it did.
pub(super) async fn roll_out(
    host: &Host,
    name: &str,
    request: &LoadRequest,
) -> Result<Loaded, OpError> {
    let cluster = host.cluster().ok_or_else(|| {
        OpError::bad_request(
            "`cluster` rolls a build out to a cluster's hosts, and this host has no [cluster]",
        )
    })?;
    let bytes = tokio::fs::read(&request.path).await.map_err(|error| {
        let message = format!(
            "plugin `{name}`: cannot read {}: {error}",
            request.path.display()
        );
        if error.kind() == std::io::ErrorKind::NotFound {
            OpError::new(ErrorKind::NotFound, message)
        } else {
            OpError::new(ErrorKind::Refused, message)
        }
    })?;
    let plugin = host
        .load_plugin_bytes(name, &request.path, bytes.clone())
        .await
        .map_err(load_error)?;
    let rollout = cluster.rollout();
    let here = cluster.config().host.clone();
    let digest = rollout
        .publish(name, &bytes, request.restart_tasks)
        .await
        .map_err(|error| {
            OpError::new(
                ErrorKind::Unavailable,
                format!("plugin `{name}` was loaded on this host only: {error:#}"),
            )
        })?;
    // After the build is out: a restart that fails here leaves the other
    // hosts loading (and restarting) it, and says so.
    let restarted = match request.restart_tasks {
        true => host.restart_startup_tasks(name).await.map_err(|error| {
            OpError::new(
                ErrorKind::Refused,
                format!(
                    "plugin `{name}` was loaded and rolled out, but its startup tasks could not \
                     be restarted on this host: {error:#}"
                ),
            )
        })?,
        false => 0,
    };
    let hosts: Vec<String> = cluster.hosts().into_iter().map(|beat| beat.host).collect();
    let reports = rollout.reports(name, &digest, &hosts, ROLLOUT_WAIT).await;
    let rollout = hosts
        .iter()
        .map(|host| match reports.iter().find(|r| &r.host == host) {
            Some(report) => HostBuild {
                host: host.clone(),
                build: report.build.clone(),
                error: report.error.clone(),
                // This host restarted its own tasks above.
                restarted: if *host == here {
                    restarted
                } else {
                    report.restarted
                },
            },
            None => HostBuild {
                host: host.clone(),
                restarted: 0,
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
        restarted,
        rollout,
    })
}

impl Operations {
    /// Answers the other hosts of `cluster`: their submissions and calls,
    /// the builds they roll out, and this host's guests' `start-task-on`.
    /// The workers hold the operations weakly (for `start-task-on`); the
    /// cluster's responders hold them until the host stops serving.
    pub(crate) async fn serve_cluster(
        self: &Arc<Self>,
        cluster: &crate::cluster::Cluster,
    ) -> anyhow::Result<()> {
        cluster
            .serve(
                crate::cluster::Kind::Submissions,
                Arc::new(Submissions(self.clone())),
            )
            .await?;
        cluster
            .serve(
                crate::cluster::Kind::Calls,
                Arc::new(ClusterCalls(self.clone())),
            )
            .await?;
        cluster.watch_plugins(Arc::new(HostPlugins(Arc::downgrade(&self.host))));
        let remote: Arc<dyn crate::worker::RemoteTasks> = self.clone();
        self.host.serve_remote_tasks(Arc::downgrade(&remote));
        Ok(())
    }
}

/// Other hosts' submissions with a `host` that chose this one, answered as
/// `POST /v1/tasks` answers here.
struct Submissions(pub Arc<Operations>);

impl crate::cluster::Responder for Submissions {
    fn answer(&self, request: bytes::Bytes) -> Answering {
        let operations = self.0.clone();
        Box::pin(async move {
            let submitted = match serde_json::from_slice::<Submission>(&request) {
                Ok(submission) if submission.host.is_none() => operations.submit(submission).await,
                Ok(_) => Err(OpError::bad_request(
                    "a submission another host forwards names no `host`",
                )),
                Err(error) => Err(OpError::bad_request(format!(
                    "a task request from another host does not parse: {error}"
                ))),
            };
            let created = submitted.as_ref().is_ok_and(|s| s.created());
            answer(submitted, if created { 201 } else { 200 })
        })
    }
}

/// Other hosts' [`ClusterCall`]s, answered by this host's operations.
struct ClusterCalls(pub Arc<Operations>);

impl crate::cluster::Responder for ClusterCalls {
    fn answer(&self, request: bytes::Bytes) -> Answering {
        let operations = self.0.clone();
        Box::pin(async move {
            let answered = match serde_json::from_slice::<ClusterCall>(&request) {
                Ok(call) => operations.call(call).await,
                Err(error) => Err(OpError::bad_request(format!(
                    "a call from another host does not parse: {error}"
                ))),
            };
            answer(answered, 200)
        })
    }
}

/// Guests' `start-task-on`: a [`Submission`] with a `host`, placed by the
/// operations. Held weakly by the host's workers (the operations point
/// back at the host).
impl crate::worker::RemoteTasks for Operations {
    fn submit(self: Arc<Self>, submission: Submission) -> crate::worker::Placed {
        Box::pin(async move { Operations::submit(&self, submission).await })
    }

    fn host_name(&self) -> String {
        self.host
            .cluster()
            .map(|cluster| cluster.config().host.clone())
            .unwrap_or_default()
    }

    fn join(self: Arc<Self>, host: String, id: u64) -> crate::app::Joined {
        Box::pin(async move { join_on(&self.host, &host, id).await })
    }
}

/// How long one request of a join on another host waits there before it
/// is asked again: within the cluster's request timeout
/// ([`crate::cluster::requests::REQUEST_TIMEOUT`], 10 s).
const JOIN_SLICE: Duration = Duration::from_secs(8);

/// Waits until task `id` of `host` has ended: its record, with its `host`.
/// The host answers once the task ended or [`JOIN_SLICE`] passed; then
/// it is asked again, for as long as the caller waits.
async fn join_on(this: &Host, host: &str, id: u64) -> Result<TaskView, OpError> {
    let cluster = this.cluster().ok_or_else(no_cluster)?;
    let call = ClusterCall::Wait {
        request: WaitRequest {
            id: Some(id),
            timeout_ms: Some(JOIN_SLICE.as_millis() as u64),
            ..WaitRequest::default()
        },
    };
    let payload = bytes::Bytes::from(serde_json::to_vec(&call).unwrap_or_default());
    let target = crate::cluster::Target::Host(host.to_string());
    loop {
        let answers = cluster
            .request(crate::cluster::Kind::Calls, &target, payload.clone())
            .await
            .map_err(request_error)?;
        let Some(answer) = answers.into_iter().next() else {
            return Err(OpError::new(
                ErrorKind::NoHost,
                format!("host {host} did not answer"),
            ));
        };
        if (200..300).contains(&answer.status) {
            let mut view: TaskView = serde_json::from_slice(&answer.body).map_err(|e| {
                OpError::new(
                    ErrorKind::Internal,
                    format!("host {host} answered a wait for task {id} with no task: {e}"),
                )
            })?;
            view.host = Some(answer.host);
            return Ok(view);
        }
        let error = OpError::of_answer(answer.status, &answer.body);
        if error.kind != ErrorKind::Timeout {
            return Err(error);
        }
    }
}

/// The host as the cluster's plugin roll-out sees it.
struct HostPlugins(pub Weak<Host>);

impl crate::cluster::rollout::PluginSink for HostPlugins {
    fn build_of(&self, name: &str) -> Option<String> {
        self.0
            .upgrade()?
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
        restart_tasks: bool,
    ) -> crate::cluster::rollout::SinkLoad {
        let host = self.0.upgrade();
        Box::pin(async move {
            let host = host.ok_or_else(|| "the host is stopping".to_string())?;
            let plugin = host
                .load_plugin_bytes(&name, &from, bytes)
                .await
                .map_err(|error| format!("{error:#}"))?;
            let restarted = match restart_tasks {
                true => host
                    .restart_startup_tasks(&name)
                    .await
                    .map_err(|error| format!("loaded, but {error:#}"))?,
                false => 0,
            };
            Ok((plugin.version.to_string(), restarted))
        })
    }

    fn refuse(&self, name: &str, from: &std::path::Path, error: &str) {
        if let Some(host) = self.0.upgrade() {
            host.refuse_plugin(name, from, &error);
        }
    }
}
