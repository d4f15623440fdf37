//! Which hosts are in the cluster: each host says so on
//! `{name}.hosts.{host}` every [`HEARTBEAT`] with what it runs, and counts
//! as present while its last word is younger than [`EXPIRY`].

use crate::config::ClusterConfig;
use crate::worker::TaskEnv;
use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How often a host says it is there.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long after its last heartbeat a host still counts.
pub const EXPIRY: Duration = Duration::from_secs(3);

/// What a host says of itself: the one serde type of a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostBeat {
    /// Its name (`[cluster] host`, by default its hostname).
    pub host: String,
    /// taskhost's version.
    pub version: String,
    /// Tasks alive on it now.
    pub live_tasks: usize,
    /// Its started workers, the main scope not counted (0 before they start).
    pub workers: u32,
    /// It takes other hosts' requests (its workers run and it is not
    /// stopping): a request for `all` expects an answer from these.
    #[serde(default)]
    pub serving: bool,
    /// How many more tasks it takes now (`tasks_per_worker` on each
    /// worker, less those alive): `any` goes to hosts with room.
    #[serde(default)]
    pub room: usize,
}

/// The hosts heard from, with when.
#[derive(Default)]
pub struct Members {
    seen: Mutex<HashMap<String, (Instant, HostBeat)>>,
    /// This host's name, and since when it has heard its own heartbeats
    /// without a gap past the expiry: until then (at start, after NATS was
    /// away) a host missing from `seen` may just not have been heard yet.
    me: Mutex<(String, Option<Instant>, Option<Instant>)>,
}

impl Members {
    /// The hosts present now, by name.
    pub fn present(&self) -> Vec<HostBeat> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, (at, _)| now.duration_since(*at) < EXPIRY);
        let mut hosts: Vec<HostBeat> = seen.values().map(|(_, beat)| beat.clone()).collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        hosts
    }

    fn heard(&self, beat: HostBeat) {
        let now = Instant::now();
        {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            let (host, since, last) = &mut *me;
            if *host == beat.host {
                if last.is_none_or(|last| now.duration_since(last) >= EXPIRY) {
                    *since = Some(now);
                }
                *last = Some(now);
            }
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(beat.host.clone(), (now, beat));
    }

    /// The hosts present now that take requests, by name.
    pub fn serving(&self) -> Vec<HostBeat> {
        self.present()
            .into_iter()
            .filter(|beat| beat.serving)
            .collect()
    }

    /// Whether a host missing now is known to be gone: this host has heard
    /// its own heartbeats without a gap for two expiry periods, so it has
    /// heard every live host's too.
    pub fn settled(&self) -> bool {
        let me = self.me.lock().unwrap_or_else(|e| e.into_inner());
        let (_, since, last) = &*me;
        let now = Instant::now();
        matches!((since, last), (Some(since), Some(last))
            if now.duration_since(*since) >= 2 * EXPIRY && now.duration_since(*last) < EXPIRY)
    }
}

/// Starts hearing the others and beating for this host; this host hears
/// itself too, so it counts itself the same way.
pub(super) async fn start(
    client: &async_nats::Client,
    config: &ClusterConfig,
    env: Arc<TaskEnv>,
    members: Arc<Members>,
    serving: Arc<std::sync::atomic::AtomicBool>,
    changed: Arc<tokio::sync::Notify>,
) -> Result<Vec<JoinHandle<()>>> {
    members.me.lock().unwrap_or_else(|e| e.into_inner()).0 = config.host.clone();
    let mut beats = client
        .subscribe(format!("{}.hosts.*", config.name))
        .await
        .context("cannot subscribe to the cluster's heartbeats")?;
    let hear = tokio::spawn(async move {
        while let Some(message) = beats.next().await {
            if let Ok(beat) = serde_json::from_slice::<HostBeat>(&message.payload) {
                members.heard(beat);
            }
        }
    });
    let client = client.clone();
    let subject = format!("{}.hosts.{}", config.name, config.host);
    let host = config.host.clone();
    let beat = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // On the beat, and at once when it starts or stops serving.
            tokio::select! {
                _ = ticks.tick() => {}
                () = changed.notified() => {}
            }
            let beat = HostBeat {
                host: host.clone(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                live_tasks: env.tracker.len(),
                workers: env
                    .workers
                    .read()
                    .map(|w| w.len().saturating_sub(1) as u32)
                    .unwrap_or(0),
                serving: serving.load(std::sync::atomic::Ordering::Relaxed),
                room: env.room(),
            };
            let Ok(payload) = serde_json::to_vec(&beat) else {
                continue;
            };
            if !super::online(&client) {
                continue;
            }
            // A lost beat is the next one's job; NATS being away is logged
            // by the connection.
            let _ = client.publish(subject.clone(), payload.into()).await;
        }
    });
    Ok(vec![hear, beat])
}
