//! Requests to other hosts, answered as their control API would answer:
//! an HTTP status and a JSON body.
//!
//! A [`Kind`] of request (`tasks`: start a task) has three subjects under the
//! cluster's name: `{name}.{kind}.any` (a queue group: NATS gives each
//! request to one host), `{name}.{kind}.host.{host}` and
//! `{name}.{kind}.all`. The answer carries the [`HOST_HEADER`] and the
//! [`STATUS_HEADER`].

use super::{HOST_HEADER, members::Members};
use crate::config::{ClusterConfig, cluster::is_token};
use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The header with an answer's HTTP status.
pub const STATUS_HEADER: &str = "Taskhost-Status";

/// How long a request waits for its answers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which hosts a request goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One host, whichever NATS picks.
    Any,
    /// This one.
    Host(String),
    /// Every host present.
    All,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        match text {
            "any" => Ok(Target::Any),
            "all" => Ok(Target::All),
            host if is_token(host) => Ok(Target::Host(host.to_string())),
            other => Err(format!(
                "host {other:?}: give `any`, `all` or a host's name (letters, digits, `-`, `_`)"
            )),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Any => f.write_str("any"),
            Target::All => f.write_str("all"),
            Target::Host(host) => f.write_str(host),
        }
    }
}

/// One host's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answering host's name.
    pub host: String,
    /// The HTTP status it answered with, as the control API would (502 if
    /// the message carried none).
    pub status: u16,
    /// Its JSON body, as the control API would answer it.
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No host of the cluster takes this request (none up, or no host of
    /// that name).
    #[error("no host of cluster `{cluster}` answers for {target}")]
    NoHost {
        /// The cluster's name (`[cluster] name`).
        cluster: String,
        /// The host, `any` or `all` the request was for.
        target: Target,
    },
    /// NATS is not reachable from here now.
    #[error("NATS is not reachable: {0}")]
    Unreachable(String),
    /// No answer within [`REQUEST_TIMEOUT`] (10 s); for `all`, from none of
    /// the hosts (some answering is a partial success).
    #[error("no answer from {target} within {} s", REQUEST_TIMEOUT.as_secs())]
    TimedOut {
        /// The host, `any` or `all` the request was for.
        target: Target,
    },
    /// Every host is at its task limit (`tasks_per_worker` on each
    /// worker), as their last heartbeats said.
    #[error(
        "no host of cluster `{cluster}` has room for another task: each is at \
         [limits] tasks_per_worker on every worker"
    )]
    NoRoom {
        /// The cluster's name (`[cluster] name`).
        cluster: String,
    },
}

/// What a request between hosts asks for: each kind has its own subjects
/// and its own responder, and carries its own serde type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Start tasks: an `operations::types::Submission`.
    Submissions,
    /// An operation every host answers: an
    /// `operations::types::ClusterCall`.
    Calls,
}

impl Kind {
    /// Its part of the subjects (`{name}.{kind}.any`).
    pub fn subject_part(self) -> &'static str {
        match self {
            Kind::Submissions => "tasks",
            Kind::Calls => "calls",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subject_part())
    }
}

/// What answers requests of one kind on this host.
pub trait Responder: Send + Sync + 'static {
    /// The answer to `request`: an HTTP status and a JSON body.
    fn answer(&self, request: Bytes) -> Pin<Box<dyn Future<Output = (u16, Bytes)> + Send>>;
}

fn subject(config: &ClusterConfig, kind: Kind, target: &Target) -> String {
    match target {
        Target::Any => format!("{}.{kind}.any", config.name),
        Target::All => format!("{}.{kind}.all", config.name),
        Target::Host(host) => format!("{}.{kind}.host.{host}", config.name),
    }
}

/// Answers requests of `kind` for this host, on the three subjects.
pub(super) async fn serve(
    client: &async_nats::Client,
    config: &ClusterConfig,
    kind: Kind,
    responder: Arc<dyn Responder>,
) -> Result<JoinHandle<()>> {
    let any = client
        .queue_subscribe(
            subject(config, kind, &Target::Any),
            format!("{}.{kind}", config.name),
        )
        .await;
    let host = client
        .subscribe(subject(config, kind, &Target::Host(config.host.clone())))
        .await;
    let all = client.subscribe(subject(config, kind, &Target::All)).await;
    let (any, host, all) = (any, host, all);
    let mut requests = futures_util::stream::select_all([
        any.with_context(|| format!("cannot take `{kind}` requests"))?,
        host.with_context(|| format!("cannot take `{kind}` requests"))?,
        all.with_context(|| format!("cannot take `{kind}` requests"))?,
    ]);
    client
        .flush()
        .await
        .context("NATS did not confirm the subscriptions")?;
    let client = client.clone();
    let me = config.host.clone();
    Ok(tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let responder = responder.clone();
            let client = client.clone();
            let me = me.clone();
            // Each its own task: a slow answer holds up no other.
            tokio::spawn(async move {
                let (mut status, mut body) = responder.answer(message.payload).await;
                // An answer over the server's message limit would be lost on
                // the way (the asker would time out): it says so instead.
                let max = client.server_info().max_payload;
                if body.len() + 1024 > max {
                    status = 413;
                    body = serde_json::to_vec(&serde_json::json!({"error": {
                        "kind": "too_large",
                        "message": format!(
                            "host {me}'s answer is {} bytes, over the NATS server's max_payload \
                             of {max} bytes: ask that host's control API directly, or narrow \
                             the request (`tasks --state`, a purge)",
                            body.len()
                        ),
                    }}))
                    .unwrap_or_default()
                    .into();
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(HOST_HEADER, me.as_str());
                headers.insert(STATUS_HEADER, status.to_string().as_str());
                if let Err(error) = client.publish_with_headers(reply, headers, body).await {
                    tracing::warn!("cannot answer a cluster request: {error}");
                }
            });
        }
    }))
}

/// Sends `payload` as a request of `kind` to `target`: the answer of the
/// one host for `Any` and `Host`, every present host's for `All` (a host
/// that did not answer in time is missing from them).
pub(super) async fn request(
    client: &async_nats::Client,
    config: &ClusterConfig,
    members: &Members,
    kind: Kind,
    target: &Target,
    payload: Bytes,
) -> Result<Vec<Answer>, RequestError> {
    if !super::online(client) {
        return Err(RequestError::Unreachable(
            "disconnected, reconnecting (see /health)".into(),
        ));
    }
    let subject = subject(config, kind, target);
    let no_host = || RequestError::NoHost {
        cluster: config.name.clone(),
        target: target.clone(),
    };
    if *target != Target::All {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(REQUEST_TIMEOUT));
        let message = client
            .send_request(subject, request)
            .await
            .map_err(|error| match error.kind() {
                async_nats::RequestErrorKind::NoResponders => no_host(),
                async_nats::RequestErrorKind::TimedOut => RequestError::TimedOut {
                    target: target.clone(),
                },
                _ => RequestError::Unreachable(error.to_string()),
            })?;
        return Ok(vec![answer_of(&message)]);
    }
    // Hosts that beat but do not serve (starting, or stopping) are not
    // waited for.
    let expected: BTreeSet<String> = members.serving().into_iter().map(|h| h.host).collect();
    if expected.is_empty() {
        return Err(no_host());
    }
    let inbox = client.new_inbox();
    let mut answers_in = client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| RequestError::Unreachable(error.to_string()))?;
    client
        .publish_with_reply(subject, inbox, payload)
        .await
        .map_err(|error| RequestError::Unreachable(error.to_string()))?;
    let mut answers = Vec::new();
    let mut waiting = expected;
    let deadline = tokio::time::sleep(REQUEST_TIMEOUT);
    tokio::pin!(deadline);
    while !waiting.is_empty() {
        tokio::select! {
            message = answers_in.next() => {
                let Some(message) = message else { break };
                let answer = answer_of(&message);
                waiting.remove(&answer.host);
                answers.push(answer);
            }
            () = &mut deadline => break,
        }
    }
    if answers.is_empty() {
        return Err(RequestError::TimedOut {
            target: target.clone(),
        });
    }
    answers.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(answers)
}

/// An answer as its message carries it: the answering host, the status
/// (502 when missing) and the body.
pub(super) fn answer_of(message: &async_nats::Message) -> Answer {
    let header = |name: &str| header_of(message, name);
    Answer {
        host: header(HOST_HEADER).unwrap_or_default(),
        status: header(STATUS_HEADER)
            .and_then(|status| status.parse().ok())
            .unwrap_or(502),
        body: message.payload.clone(),
    }
}

/// The value of header `name` of `message`, if it has one.
pub(super) fn header_of(message: &async_nats::Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(name))
        .map(|value| value.as_str().to_string())
}
