//! Cluster-scoped task names: a name asked to be unique across the
//! cluster is claimed in the JetStream KV bucket `{name}-names` before its
//! task is registered. `create` succeeds for one claimant only, so two
//! hosts adding the same name at once cannot both win. A claim is freed
//! when its task is purged, when its host leaves, and, by every other
//! host, once its host has been silent past the heartbeat expiry.

use super::members::{EXPIRY, Members};
use crate::config::ClusterConfig;
use crate::task::{TaskId, WorkerId};
use anyhow::{Context, Result};
use async_nats::jetstream::kv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// Who holds a name: the one serde type of a claim's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The claiming host's name; `?` when a taken claim could not be read.
    pub host: String,
    /// The worker of that host the task runs on.
    pub worker: WorkerId,
    /// The task's id on that host; 0 from claim until [`Names::bind`].
    pub id: TaskId,
}

/// Why a name could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another task holds the name: refused as `duplicate_name`.
    #[error("a task named {name:?} runs on host {} (cluster-scoped names are unique across the cluster)", owner.host)]
    Taken {
        /// The name asked for.
        name: String,
        /// Who holds it, as its claim says.
        owner: Owner,
    },
    /// NATS could not be asked (away, or the bucket refused the call):
    /// refused as `no_host`.
    #[error("cannot claim a cluster-scoped name: {0}")]
    Unreachable(String),
}

/// This host's view of the claims.
pub struct Names {
    client: async_nats::Client,
    store: kv::Store,
    host: String,
    /// The names this host claimed: for which task, and the claim's
    /// revision (a claim is freed only if it is still that revision, so a
    /// host never frees a claim another host made since).
    mine: Mutex<HashMap<String, Claim>>,
}

/// One of this host's claims.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// The worker the task runs on.
    pub worker: WorkerId,
    /// 0 until its task is registered.
    pub id: TaskId,
    revision: u64,
}

/// A task name as a KV key: any text, as key characters.
fn key(name: &str) -> String {
    URL_SAFE_NO_PAD.encode(name)
}

impl Names {
    pub(super) async fn open(client: &async_nats::Client, config: &ClusterConfig) -> Result<Names> {
        let jetstream = async_nats::jetstream::new(client.clone());
        let store = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: format!("{}-names", config.name),
                description: "taskhost: cluster-scoped task names and their owners".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .context("cannot open the JetStream KV bucket of cluster-scoped names (is JetStream on: nats-server -js?)")?;
        let names = Names {
            client: client.clone(),
            store,
            host: config.host.clone(),
            mine: Mutex::default(),
        };
        names.free_left_behind().await;
        Ok(names)
    }

    /// Frees the claims an earlier run of this host left (it died, and
    /// came back before the others swept them): no task of this process
    /// holds them.
    async fn free_left_behind(&self) {
        let Ok(mut keys) = self.store.keys().await else {
            return;
        };
        while let Some(Ok(key)) = keys.next().await {
            let Ok(Some(entry)) = self.store.entry(key.clone()).await else {
                continue;
            };
            if serde_json::from_slice::<Owner>(&entry.value).is_ok_and(|o| o.host == self.host)
                && self
                    .store
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await
                    .is_ok()
            {
                self.purge_marker(&key).await;
            }
        }
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claim>> {
        self.mine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `name` for a task about to be registered on `worker` of
    /// this host; [`Names::bind`] then says which task it became, or
    /// [`Names::release`] frees it if none did.
    pub async fn claim(&self, name: &str, worker: WorkerId) -> Result<(), ClaimError> {
        let id = 0;
        let owner = Owner {
            host: self.host.clone(),
            worker,
            id,
        };
        if !super::online(&self.client) {
            return Err(ClaimError::Unreachable(
                "NATS is unreachable now (see /health)".into(),
            ));
        }
        let value = serde_json::to_vec(&owner).unwrap_or_default();
        match self.store.create(key(name), value.into()).await {
            Ok(revision) => {
                self.mine().insert(
                    name.to_string(),
                    Claim {
                        worker,
                        id,
                        revision,
                    },
                );
                Ok(())
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                let owner = match self.store.get(key(name)).await {
                    Ok(Some(value)) => serde_json::from_slice(&value).ok(),
                    _ => None,
                };
                Err(ClaimError::Taken {
                    name: name.to_string(),
                    owner: owner.unwrap_or(Owner {
                        host: "?".into(),
                        worker,
                        id: 0,
                    }),
                })
            }
            Err(error) => Err(ClaimError::Unreachable(error.to_string())),
        }
    }

    /// Records which task holds `name`, claimed by this host, here and in
    /// the claim (so `tasks --cluster` and a refused claimant see its id).
    pub async fn bind(&self, name: &str, worker: WorkerId, id: TaskId) {
        let Some(claim) = self.mine().get(name).copied() else {
            return;
        };
        let owner = Owner {
            host: self.host.clone(),
            worker,
            id,
        };
        let value = serde_json::to_vec(&owner).unwrap_or_default();
        let revision = match self
            .store
            .update(key(name), value.into(), claim.revision)
            .await
        {
            Ok(revision) => revision,
            // Not this host's claim any more (swept while NATS was away):
            // the task keeps its name here, and the log says so.
            Err(error) => {
                tracing::warn!(
                    "the cluster-scoped name {name:?} could not be bound to its task: {error}"
                );
                claim.revision
            }
        };
        self.mine().insert(
            name.to_string(),
            Claim {
                worker,
                id,
                revision,
            },
        );
    }

    /// Frees `name`, if this host holds it (and its claim is still the one
    /// this host made).
    pub async fn release(&self, name: &str) {
        let Some(claim) = self.mine().remove(name) else {
            return;
        };
        match self
            .store
            .delete_expect_revision(key(name), Some(claim.revision))
            .await
        {
            Ok(()) => self.purge_marker(&key(name)).await,
            Err(error) => {
                tracing::debug!("the cluster-scoped name {name:?} was not freed: {error}")
            }
        }
    }

    /// Removes from the stream the marker a delete of `key` left: a KV
    /// delete keeps one per key for good, and names come and go, so the
    /// bucket would grow with every name ever claimed. Only up to the
    /// marker: a claim made since stays (and replaced the marker anyway).
    async fn purge_marker(&self, key: &str) {
        let Ok(Some(entry)) = self.store.entry(key).await else {
            return;
        };
        if entry.operation == kv::Operation::Put {
            return;
        }
        let purged = self
            .store
            .stream
            .purge()
            .filter(format!("{}{key}", self.store.prefix))
            .sequence(entry.revision + 1)
            .await;
        if let Err(error) = purged {
            tracing::debug!("the marker of a freed cluster-scoped name stays: {error}");
        }
    }

    /// Frees the names of this host whose tasks `listed` no longer lists
    /// (purged).
    pub async fn release_unlisted(&self, listed: impl Fn(WorkerId, TaskId) -> bool) {
        let gone: Vec<String> = self
            .mine()
            .iter()
            // Id 0: claimed, its task not registered yet.
            .filter(|(_, claim)| claim.id != 0 && !listed(claim.worker, claim.id))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.release(&name).await;
        }
    }

    /// The names this host holds whose claims are no longer its own: swept
    /// by the other hosts while this one was silent (paused, cut off) and
    /// maybe claimed again since. Forgotten here; the caller stops their
    /// tasks, so a name never runs on two hosts. A claim that cannot be
    /// read now (NATS away) is kept.
    pub async fn lost(&self) -> Vec<(String, Claim, Option<Owner>)> {
        let held: Vec<(String, Claim)> = self
            .mine()
            .iter()
            .filter(|(_, claim)| claim.id != 0)
            .map(|(name, claim)| (name.clone(), *claim))
            .collect();
        let mut lost = Vec::new();
        for (name, claim) in held {
            let entry = match self.store.entry(key(&name)).await {
                Ok(entry) => entry,
                Err(_) => continue,
            };
            let now = entry.filter(|e| e.operation == kv::Operation::Put);
            if now.as_ref().is_some_and(|e| e.revision == claim.revision) {
                continue;
            }
            let owner = now.and_then(|e| serde_json::from_slice::<Owner>(&e.value).ok());
            self.mine().remove(&name);
            lost.push((name, claim, owner));
        }
        lost
    }

    /// Frees every name this host holds (it is leaving).
    pub async fn release_all(&self) {
        let names: Vec<String> = self.mine().keys().cloned().collect();
        for name in names {
            self.release(&name).await;
        }
    }

    /// Frees the names of hosts silent past the expiry: run by every
    /// host, so a dead host's names come free whoever notices first. A
    /// claim younger than the expiry is left alone (its host may not have
    /// been heard yet).
    async fn sweep(&self, members: &Members) {
        // At start, or just after NATS came back, a live host may not have
        // been heard yet: its claims are not touched until then.
        if !members.settled() {
            return;
        }
        let present: Vec<String> = members.present().into_iter().map(|h| h.host).collect();
        let Ok(mut keys) = self.store.keys().await else {
            return;
        };
        while let Some(Ok(key)) = keys.next().await {
            let Ok(Some(entry)) = self.store.entry(key.clone()).await else {
                continue;
            };
            let Ok(owner) = serde_json::from_slice::<Owner>(&entry.value) else {
                continue;
            };
            let now = crate::task::unix_millis(std::time::SystemTime::now()) as i128;
            let created = entry.created.unix_timestamp_nanos() / 1_000_000;
            let young = now - created < EXPIRY.as_millis() as i128;
            if present.contains(&owner.host) || young {
                continue;
            }
            tracing::info!(
                "host {} is gone: its cluster-scoped task name is free again",
                owner.host
            );
            // Only the claim read: one made since (the name taken again)
            // stays.
            if self
                .store
                .delete_expect_revision(&key, Some(entry.revision))
                .await
                .is_ok()
            {
                self.purge_marker(&key).await;
            }
        }
    }
}

/// Every expiry period: frees this host's names whose tasks were purged
/// (by an operator or a guest's `purge-tasks`), and the claims of silent
/// hosts.
pub(super) fn sweeper(
    names: Arc<Names>,
    members: Arc<Members>,
    env: Arc<crate::worker::TaskEnv>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(EXPIRY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = std::time::Instant::now();
        let mut was_online = true;
        loop {
            ticks.tick().await;
            // Back from a silence the others may have taken for this host
            // being gone (they drop a host silent for EXPIRY, its
            // heartbeat coming every second): a tick later than half a
            // period (the monotonic clock goes on while a process is
            // stopped, so a pause shows), or NATS back after an outage.
            // The others may have freed this host's names and given them
            // to other tasks.
            let online = super::online(&names.client);
            let back = online && !was_online;
            was_online = online;
            if back || last.elapsed() > EXPIRY + EXPIRY / 2 {
                for (name, claim, owner) in names.lost().await {
                    let Some(handle) = env
                        .worker(claim.worker)
                        .and_then(|w| w.registry().handle_of(claim.id))
                    else {
                        continue;
                    };
                    if handle.is_ended() {
                        continue;
                    }
                    tracing::warn!(
                        task = name,
                        "task {name} lost its cluster-scoped name while this host was silent \
                         past the expiry ({}): it is stopped here",
                        match owner {
                            Some(owner) => format!("it runs on host {} now", owner.host),
                            None => "the other hosts freed it".to_string(),
                        }
                    );
                    handle.cancel();
                }
            }
            last = std::time::Instant::now();
            names
                .release_unlisted(|worker, id| {
                    env.worker(worker)
                        .is_some_and(|w| w.registry().get(id).is_some())
                })
                .await;
            names.sweep(&members).await;
        }
    })
}
