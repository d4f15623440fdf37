//! App-scoped tasks (`scope = "app"`, singletons) in a cluster: one copy in
//! the whole app, run by the host that holds its claim.
//!
//! - The KV bucket `{name}-singletons` holds one claim per singleton,
//!   under its task name: the holding host and until when (Unix ms) it
//!   holds it. `create` succeeds for one host only; a claim is renewed
//!   (compare-and-swap on its revision) every third of the lease, which
//!   is `[cluster] ack_wait_ms`, the durable tasks' lease.
//! - Every other host checks the claim as often. One whose holder let it
//!   lapse (the host died, or was paused past the lease) is taken over,
//!   again by compare-and-swap, so two hosts cannot both win it.
//! - The holder's copy runs under a [`Lease`] counted from before each
//!   write and shorter than the claim (nine tenths of it): it is fenced
//!   (its host calls trap, it is forced) before any other host can take
//!   the claim, however long its host was held up. A holder that finds
//!   its claim taken stops its copy and waits its turn again.
//! - A copy that ended on its own stays ended while its host holds the
//!   claim: a singleton runs once per start of the host that holds it,
//!   as a startup task runs once per start of its host. A host that stops
//!   frees its claims, and another host starts the singleton at once.

use crate::config::ClusterConfig;
use crate::registry::TaskHandle;
use crate::task::Lease;
use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Who holds a singleton: the one serde type of a claim's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    /// The holding host's name.
    host: String,
    /// Until when (Unix ms) it holds it, unless renewed.
    until_ms: u64,
}

/// Starts this host's copy of a singleton under a lease: what the host
/// gives [`Singletons::supervise`].
pub type Starter = Arc<
    dyn Fn(Arc<Lease>) -> Pin<Box<dyn Future<Output = Result<TaskHandle, String>> + Send>>
        + Send
        + Sync,
>;

/// This host's claims of the cluster's singletons.
pub struct Singletons {
    client: async_nats::Client,
    store: kv::Store,
    host: String,
    /// How long a claim holds unless renewed (`ack_wait`).
    lease: Duration,
    /// The claims this host holds: their revision, so a stopping host
    /// frees only claims still its own.
    held: Mutex<HashMap<String, u64>>,
    /// The loops that claim and run each singleton: stopped first when
    /// the host stops, so a stopping host neither renews nor wins a claim
    /// (it would start a copy after its tasks were cancelled).
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

/// A claim this host won.
struct Held {
    key: String,
    revision: u64,
    /// What its copy acts under.
    lease: Arc<Lease>,
}

/// How a renewal went.
enum Renewal {
    Renewed,
    /// Another host holds the claim now.
    Lost(String),
    /// NATS could not be asked: the lease runs out on its own.
    Unreachable,
}

fn key(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Singletons {
    pub(super) async fn open(
        client: &async_nats::Client,
        config: &ClusterConfig,
    ) -> Result<Singletons> {
        let jetstream = async_nats::jetstream::new(client.clone());
        let store = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}-singletons", config.name),
                description: "taskhost: which host runs each app-scoped task".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .context("cannot open the JetStream KV bucket of app-scoped tasks")?;
        Ok(Singletons {
            client: client.clone(),
            store,
            host: config.host.clone(),
            lease: config.ack_wait,
            held: Mutex::default(),
            supervisors: Mutex::default(),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often a claim is renewed, and checked by the other hosts.
    fn every(&self) -> Duration {
        self.lease / 3
    }

    /// The claim's value from now, and the lease its copy gets, counted
    /// from `begun` (before the write) and a tenth shorter.
    fn value(&self) -> bytes::Bytes {
        let claim = Claim {
            host: self.host.clone(),
            until_ms: now_ms().saturating_add(u64::try_from(self.lease.as_millis()).unwrap_or(0)),
        };
        serde_json::to_vec(&claim).unwrap_or_default().into()
    }

    fn local_lease(&self) -> Duration {
        self.lease - self.lease / 10
    }

    /// Claims singleton `name` if nobody holds it, or its holder let the
    /// claim lapse (or is an earlier run of this host); none if another
    /// host holds it.
    async fn try_claim(&self, name: &str) -> Result<Option<Held>> {
        let key = key(name);
        let begun = Instant::now();
        let entry = self
            .store
            .entry(&key)
            .await
            .with_context(|| format!("cannot read the claim of {name}"))?;
        let won = match entry {
            None => self.store.create(&key, self.value()).await.ok(),
            Some(entry) => {
                let free = entry.operation != kv::Operation::Put
                    || serde_json::from_slice::<Claim>(&entry.value).map_or(true, |claim| {
                        claim.host == self.host || claim.until_ms <= now_ms()
                    });
                if !free {
                    return Ok(None);
                }
                self.store
                    .update(&key, self.value(), entry.revision)
                    .await
                    .ok()
            }
        };
        Ok(won.map(|revision| {
            self.held().insert(key.clone(), revision);
            Held {
                key,
                revision,
                lease: Arc::new(Lease::new(begun, self.local_lease())),
            }
        }))
    }

    async fn renew(&self, held: &mut Held) -> Renewal {
        if !super::online(&self.client) {
            return Renewal::Unreachable;
        }
        let begun = Instant::now();
        match self
            .store
            .update(&held.key, self.value(), held.revision)
            .await
        {
            Ok(revision) => {
                held.revision = revision;
                held.lease.renew(begun, self.local_lease());
                self.held().insert(held.key.clone(), revision);
                Renewal::Renewed
            }
            Err(error) => match self.store.entry(&held.key).await {
                // The write went through though its answer was lost: the
                // claim is this host's, at that revision.
                Ok(Some(entry))
                    if entry.operation == kv::Operation::Put
                        && serde_json::from_slice::<Claim>(&entry.value)
                            .is_ok_and(|claim| claim.host == self.host) =>
                {
                    held.revision = entry.revision;
                    held.lease.renew(begun, self.local_lease());
                    self.held().insert(held.key.clone(), entry.revision);
                    Renewal::Renewed
                }
                Ok(Some(entry)) if entry.revision != held.revision => {
                    self.held().remove(&held.key);
                    let holder = serde_json::from_slice::<Claim>(&entry.value)
                        .map_or_else(|_| "?".to_string(), |claim| claim.host);
                    Renewal::Lost(holder)
                }
                _ => {
                    tracing::debug!("cannot renew a singleton's claim: {error}");
                    Renewal::Unreachable
                }
            },
        }
    }

    /// Stops claiming and renewing (a host stopping): its copies are
    /// being cancelled, and [`Singletons::release_all`] frees the claims
    /// once they ended.
    pub(super) fn stop(&self) {
        for supervisor in self
            .supervisors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            supervisor.abort();
        }
    }

    /// Frees every claim this host holds, so another host starts those
    /// singletons at once rather than after the lease (a host stopping).
    pub(super) async fn release_all(&self) {
        let held: Vec<(String, u64)> = self.held().drain().collect();
        for (key, revision) in held {
            let _ = self
                .store
                .delete_expect_revision(&key, Some(revision))
                .await;
        }
    }

    /// Runs singleton `name` here whenever this host holds its claim,
    /// starting its copy with `start`, until the host stops.
    pub(super) fn supervise(self: &Arc<Self>, name: String, start: Starter) {
        let supervisor = tokio::spawn(self.clone().claim_and_run(name, start));
        self.supervisors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(supervisor);
    }

    async fn claim_and_run(self: Arc<Self>, name: String, start: Starter) {
        // Its copy here ended (on its own, or cancelled by an operator)
        // while this host held the claim: a claim this host wins back
        // after a lapse (NATS was away) starts nothing.
        let mut ended_here = false;
        loop {
            let mut held = match self.try_claim(&name).await {
                Ok(Some(held)) => held,
                Ok(None) => {
                    tokio::time::sleep(self.every()).await;
                    continue;
                }
                Err(error) => {
                    tracing::debug!("singleton {name}: {error:#}");
                    tokio::time::sleep(self.every()).await;
                    continue;
                }
            };
            let started = match ended_here {
                true => None,
                false => Some(start(held.lease.clone()).await),
            };
            let mut copy = match started {
                None => None,
                Some(Ok(handle)) => {
                    tracing::info!(
                        task = name,
                        host = self.host,
                        "app-scoped task {name} runs on this host"
                    );
                    Some(handle)
                }
                Some(Err(error)) => {
                    tracing::error!(
                        task = name,
                        "app-scoped task {name} cannot start on this host ({error}); \
                             another host may take it after the lease"
                    );
                    self.held().remove(&held.key);
                    tokio::time::sleep(self.lease).await;
                    continue;
                }
            };
            loop {
                tokio::time::sleep(self.every()).await;
                match self.renew(&mut held).await {
                    Renewal::Renewed => {}
                    Renewal::Lost(holder) => {
                        held.lease.revoke();
                        tracing::warn!(
                            task = name,
                            "app-scoped task {name}: host {holder} holds it now (this \
                                 host's claim lapsed); this copy is stopped"
                        );
                        // The other host runs it from now on.
                        ended_here = false;
                        break;
                    }
                    // Fenced already; it may run here again once NATS
                    // is back and nobody took the claim.
                    Renewal::Unreachable if !held.lease.holds() => {
                        ended_here = copy.as_ref().is_some_and(TaskHandle::is_ended);
                        break;
                    }
                    Renewal::Unreachable => {}
                }
            }
            // Stopped and gone before this host claims again, so a
            // copy it starts then finds the name free.
            if let Some(mut copy) = copy.take() {
                copy.cancel();
                copy.ended().await;
            }
        }
    }
}
