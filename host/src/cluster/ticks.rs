//! Schedules in a cluster: every host runs the same schedules, and a tick
//! runs on the host that claims it first, in the JetStream KV bucket
//! `{name}-ticks` (`create`: one claimant wins). Claims expire after a
//! day, which is also how far back a catch-up may reach in a cluster.

use crate::config::ClusterConfig;
use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::Duration;

/// How long a tick's claim is kept.
const KEEP: Duration = Duration::from_secs(24 * 3600);

/// Which host runs each tick.
pub struct Ticks {
    client: async_nats::Client,
    store: kv::Store,
    host: String,
}

impl Ticks {
    pub(super) async fn open(client: &async_nats::Client, config: &ClusterConfig) -> Result<Ticks> {
        let jetstream = async_nats::jetstream::new(client.clone());
        let store = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}-ticks", config.name),
                description: "taskhost: which host ran each schedule tick".into(),
                history: 1,
                max_age: KEEP,
                ..Default::default()
            })
            .await
            .context("cannot open the JetStream KV bucket of schedule ticks (is JetStream on: nats-server -js?)")?;
        Ok(Ticks {
            client: client.clone(),
            store,
            host: config.host.clone(),
        })
    }

    /// Whether this host runs `tick` of `schedule`: true for the first
    /// host to ask. When NATS cannot answer, the tick runs here (a tick
    /// twice is better than a tick lost while the cluster is degraded), and
    /// the log says so.
    pub async fn claim(&self, schedule: &str, tick: &str) -> bool {
        if !super::online(&self.client) {
            tracing::warn!(
                schedule,
                "NATS is unreachable: tick {tick} of schedule {schedule} runs here"
            );
            return true;
        }
        let key = URL_SAFE_NO_PAD.encode(format!("{schedule}@{tick}"));
        match self.store.create(key, self.host.clone().into()).await {
            Ok(_) => true,
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => false,
            Err(error) => {
                tracing::warn!(
                    schedule,
                    "cannot claim tick {tick} of schedule {schedule} in the cluster ({error}); \
                     running it here"
                );
                true
            }
        }
    }
}

impl crate::scheduler::TickClaims for Ticks {
    fn claim<'a>(
        &'a self,
        schedule: &'a str,
        tick: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(Ticks::claim(self, schedule, tick))
    }
}
