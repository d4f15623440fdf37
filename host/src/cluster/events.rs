//! Events across hosts: a dispatch made on one host wakes the matching
//! waiters of every host, at most once each, as on one host (waiters
//! present when it arrives; none remembered for later).
//!
//! The host's [`crate::events::EventHub`] hands its own dispatches to a
//! bounded queue; one task publishes them on `{name}.events.{event}` with
//! the [`HOST_HEADER`]; another receives everything under
//! `{name}.events.>` and hands what other hosts sent to the hub's waiters.
//! Patterns (`jobs.*`) are matched by each host's hub, as before, so they
//! keep their meaning.

use super::HOST_HEADER;
use crate::config::ClusterConfig;
use crate::worker::TaskEnv;
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Dispatches queued for NATS at most; past it the other hosts miss them
/// (counted, and logged).
const RELAY_QUEUE: usize = 4096;

/// Starts relaying `env`'s events over `client`: returns the two tasks
/// doing it. Subscribed before it returns, so a dispatch another host makes
/// from then on reaches this one.
pub(super) async fn bridge(
    client: &async_nats::Client,
    config: &ClusterConfig,
    env: Arc<TaskEnv>,
) -> Result<Vec<JoinHandle<()>>> {
    let prefix = format!("{}.events.", config.name);
    let mut incoming = client
        .subscribe(format!("{prefix}>"))
        .await
        .context("cannot subscribe to the cluster's events")?;
    // The server has the subscription once it answered this.
    client
        .flush()
        .await
        .context("NATS did not confirm the subscription")?;
    let Some(mut outgoing) = env.events.relay_to(&config.name, RELAY_QUEUE) else {
        bail!("this host's events are relayed already");
    };

    let receive = {
        let env = env.clone();
        let host = config.host.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            while let Some(message) = incoming.next().await {
                let from = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(HOST_HEADER))
                    .map(|value| value.as_str().to_string());
                if from.as_deref() == Some(host.as_str()) {
                    continue;
                }
                let Some(event) = message.subject.as_str().strip_prefix(&prefix) else {
                    continue;
                };
                let Ok(payload) = std::str::from_utf8(&message.payload) else {
                    tracing::warn!(
                        event,
                        "an event from host {} is not UTF-8; dropped",
                        from.as_deref().unwrap_or("(unnamed)")
                    );
                    continue;
                };
                if payload.len() > env.app.limits.event_payload_bytes {
                    tracing::warn!(
                        event,
                        "an event from host {} has a {} byte payload, over this host's \
                         [limits] event_payload_bytes ({}); dropped",
                        from.as_deref().unwrap_or("(unnamed)"),
                        payload.len(),
                        env.app.limits.event_payload_bytes
                    );
                    continue;
                }
                env.metrics.cluster_event("received");
                env.events.deliver(event, payload.into());
            }
        })
    };

    let send = {
        let client = client.clone();
        let host = config.host.clone();
        tokio::spawn(async move {
            while let Some(relayed) = outgoing.recv().await {
                if !super::online(&client) {
                    // At most once: not replayed, stale, after NATS is back.
                    env.metrics.cluster_event("unsent");
                    continue;
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(HOST_HEADER, host.as_str());
                let subject = format!("{prefix}{}", relayed.event);
                let payload = bytes::Bytes::copy_from_slice(relayed.payload.as_bytes());
                match client.publish_with_headers(subject, headers, payload).await {
                    Ok(()) => env.metrics.cluster_event("sent"),
                    Err(error) => {
                        env.metrics.cluster_event("unsent");
                        tracing::warn!(
                            event = relayed.event,
                            "cannot send event {:?} to the cluster: {error}",
                            relayed.event
                        )
                    }
                }
            }
        })
    };
    Ok(vec![receive, send])
}
