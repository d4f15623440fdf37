//! Tasks for `any` host, taken by the hosts with free capacity: a
//! JetStream work-queue stream `{name}-any` with one pull consumer that
//! every host shares. A host fetches only while it has room for more tasks
//! (`tasks_per_worker` on each worker, less those alive), so a full host
//! takes none and a busy one takes fewer; NATS's queue group, which this
//! replaces for tasks, picked at random.
//!
//! A submission carries the subject its answer goes to and a deadline: the
//! submitter waits up to [`REQUEST_TIMEOUT`] for the answer, then deletes
//! the message if no host took it; a host that fetches it after the
//! deadline drops it, so a task nobody took in time never starts later.

use super::requests::{
    Answer, REQUEST_TIMEOUT, RequestError, Responder, STATUS_HEADER, Target, answer_of,
};
use super::{HOST_HEADER, members::Members};
use crate::config::ClusterConfig;
use crate::worker::TaskEnv;
use anyhow::{Context, Result};
use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Where a submission's answer goes.
const REPLY_HEADER: &str = "Taskhost-Reply";

/// When a submission stops being worth running (Unix ms).
const DEADLINE_HEADER: &str = "Taskhost-Deadline";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cluster's queue of tasks for any host.
pub struct AnyQueue {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    cluster: String,
    host: String,
}

impl AnyQueue {
    pub(super) async fn open(client: &async_nats::Client, config: &ClusterConfig) -> Result<Self> {
        let jetstream = jetstream::new(client.clone());
        let name = format!("{}-any", config.name);
        let subject = format!("{}.any", config.name);
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                description: Some("taskhost: tasks for any host, taken by free capacity".into()),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::Memory,
                // A submission is worth running for its deadline only.
                max_age: REQUEST_TIMEOUT * 6,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot open the JetStream stream {name}"))?;
        stream
            .get_or_create_consumer(
                "hosts",
                pull::Config {
                    durable_name: Some("hosts".into()),
                    description: Some("taskhost: every host, fetching while it has room".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: REQUEST_TIMEOUT,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot open the consumer of {name}"))?;
        Ok(AnyQueue {
            client: client.clone(),
            jetstream,
            stream,
            subject,
            cluster: config.name.clone(),
            host: config.host.clone(),
        })
    }

    /// Queues `payload` for any host with room and waits for its answer.
    pub async fn submit(&self, members: &Members, payload: Bytes) -> Result<Answer, RequestError> {
        let no_host = || RequestError::NoHost {
            cluster: self.cluster.clone(),
            target: Target::Any,
        };
        if !super::online(&self.client) {
            return Err(RequestError::Unreachable(
                "disconnected, reconnecting (see /health)".into(),
            ));
        }
        let serving = members.serving();
        if serving.is_empty() {
            return Err(no_host());
        }
        if serving.iter().all(|host| host.room == 0) {
            return Err(RequestError::NoRoom {
                cluster: self.cluster.clone(),
            });
        }
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| RequestError::Unreachable(e.to_string()))?;
        let deadline = now_ms() + REQUEST_TIMEOUT.as_millis() as u64;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(REPLY_HEADER, inbox.as_str());
        headers.insert(DEADLINE_HEADER, deadline.to_string().as_str());
        let ack = self
            .jetstream
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
            .map_err(|e| RequestError::Unreachable(e.to_string()))?
            .await
            .map_err(|e| RequestError::Unreachable(e.to_string()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, answers.next()).await {
            Ok(Some(message)) => Ok(answer_of(&message)),
            _ => {
                // Not taken: it must not start later. (Taken but not
                // answered in time: the host drops it past the deadline.)
                let _ = self.stream.delete_message(ack.sequence).await;
                Err(RequestError::TimedOut {
                    target: Target::Any,
                })
            }
        }
    }
}

/// Takes tasks for any host from the queue while this host has room, and
/// answers each with `responder`, until aborted.
pub(super) fn serve(
    queue: Arc<AnyQueue>,
    env: Arc<TaskEnv>,
    responder: Arc<dyn Responder>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let consumer = loop {
            match queue.stream.get_consumer::<pull::Config>("hosts").await {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::debug!("tasks for any host: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            let room = env.room();
            if room == 0 || !super::online(&queue.client) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let batch = consumer
                .batch()
                .max_messages(room.min(8))
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let Ok(mut messages) = batch else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            while let Some(Ok(message)) = messages.next().await {
                take(&queue, &env, &*responder, message).await;
            }
        }
    })
}

/// Answers one submission, unless its submitter gave up on it.
async fn take(
    queue: &AnyQueue,
    env: &TaskEnv,
    responder: &dyn Responder,
    message: jetstream::Message,
) {
    let header = |name: &str| super::requests::header_of(&message, name);
    let (Some(reply), Some(deadline)) = (
        header(REPLY_HEADER),
        header(DEADLINE_HEADER).and_then(|d| d.parse::<u64>().ok()),
    ) else {
        let _ = message.ack_with(AckKind::Term).await;
        return;
    };
    // Full since it asked for tasks (its own filled it): handed back, for
    // a host with room (after a moment, so it does not come straight back
    // to this host's pending fetch).
    if env.room() == 0 {
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_millis(50))))
            .await;
        return;
    }
    // Acknowledged first: a task is started at most once, even if this
    // host dies before it answers (the submitter then times out).
    let _ = message.ack().await;
    if now_ms() >= deadline {
        return;
    }
    let (status, body) = responder.answer(message.payload.clone()).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HOST_HEADER, queue.host.as_str());
    headers.insert(STATUS_HEADER, status.to_string().as_str());
    if let Err(error) = queue
        .client
        .publish_with_headers(reply, headers, body)
        .await
    {
        tracing::warn!("cannot answer a task for any host: {error}");
    }
}
