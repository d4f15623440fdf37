//! Plugin roll-out: `taskhost load PLUGIN PATH --cluster` puts the
//! component in the JetStream object store `{name}-plugins` (object name:
//! the plugin's), with its SHA-256 in the object's metadata (`digest`).
//! Every host watches the store (a host that joins later reads the latest
//! object of each plugin first), fetches a new object, checks its bytes
//! against that digest and hot-loads it through the same path as a local
//! `load`. Each host reports what it did in the KV bucket `{name}-rollout`
//! under `{plugin}.{host}`: the build it runs, or why it refused; a
//! refused build leaves the old one serving on that host.

use crate::config::ClusterConfig;
use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv, object_store};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// The metadata key of an object's digest: `sha256:` and 64 hex digits.
const DIGEST: &str = "digest";

/// The metadata key that asks every host to restart the plugin's startup
/// tasks on the build (`load --cluster --restart-tasks`): `"true"`.
const RESTART_TASKS: &str = "restart_tasks";

/// What [`PluginSink::load`] comes to: the build served and the startup
/// tasks restarted, or why the build was refused.
pub type SinkLoad = Pin<Box<dyn Future<Output = Result<(String, usize), String>> + Send>>;

/// Where a host loads what the cluster rolls out: the host itself, seen
/// from this layer.
pub trait PluginSink: Send + Sync + 'static {
    /// The build (`sha256:` and 12 hex digits) plugin `name` serves here
    /// now, if it is loaded.
    fn build_of(&self, name: &str) -> Option<String>;

    /// Hot-loads `bytes` as plugin `name`, then with `restart_tasks`
    /// restarts its startup tasks on it; `from` says where they came from.
    /// The build it serves now and how many tasks it restarted, or why it
    /// was refused.
    fn load(&self, name: String, from: PathBuf, bytes: Vec<u8>, restart_tasks: bool) -> SinkLoad;

    /// Says that a build of plugin `name` from `from` was refused before
    /// it was loaded (a bad digest), as a refused load does.
    fn refuse(&self, name: &str, from: &Path, error: &str);
}

/// What a host did with a rolled-out build: the one serde type of a
/// report in `{name}-rollout`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutReport {
    /// The reporting host's name.
    pub host: String,
    /// The plugin rolled out.
    pub plugin: String,
    /// The digest of the object it was given.
    pub digest: String,
    /// The build it serves after: the new one, unless refused.
    #[serde(default)]
    pub build: Option<String>,
    /// Why it refused the new build.
    #[serde(default)]
    pub error: Option<String>,
    /// Startup tasks it restarted on the build (`--restart-tasks`).
    #[serde(default)]
    pub restarted: usize,
}

/// The digest of `bytes` as the object store's metadata holds it.
pub fn digest_of(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut text = String::from("sha256:");
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// The build a digest loads as: the first 12 hex digits, as the loader
/// names builds.
pub fn build_of_digest(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// The cluster's plugins' store and reports.
pub struct Rollout {
    client: async_nats::Client,
    store: object_store::ObjectStore,
    reports: kv::Store,
    bucket: String,
    host: String,
}

impl Rollout {
    pub(super) async fn open(client: &async_nats::Client, config: &ClusterConfig) -> Result<Self> {
        let jetstream = jetstream::new(client.clone());
        let bucket = format!("{}-plugins", config.name);
        let store = super::object_store(
            &jetstream,
            &bucket,
            "taskhost: plugins rolled out to every host",
        )
        .await?;
        let reports_bucket = format!("{}-rollout", config.name);
        let reports = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: reports_bucket.clone(),
                description: "taskhost: which build of each rolled-out plugin each host runs"
                    .into(),
                history: 1,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot open the JetStream KV bucket {reports_bucket}"))?;
        Ok(Rollout {
            client: client.clone(),
            store,
            reports,
            bucket,
            host: config.host.clone(),
        })
    }

    /// Stores `bytes` as the build of `plugin` for every host, which with
    /// `restart_tasks` restart the plugin's startup tasks on it; returns
    /// its digest.
    pub async fn publish(&self, plugin: &str, bytes: &[u8], restart_tasks: bool) -> Result<String> {
        if !super::online(&self.client) {
            bail!("NATS is unreachable, so the build cannot be rolled out now");
        }
        let digest = digest_of(bytes);
        let meta = object_store::ObjectMetadata {
            name: plugin.to_string(),
            description: Some(format!("plugin {plugin}, put by host {}", self.host)),
            metadata: HashMap::from([
                (DIGEST.to_string(), digest.clone()),
                (RESTART_TASKS.to_string(), restart_tasks.to_string()),
            ]),
            ..Default::default()
        };
        let mut reader = bytes;
        self.store
            .put(meta, &mut reader)
            .await
            .with_context(|| format!("cannot store plugin {plugin} in {}", self.bucket))?;
        Ok(digest)
    }

    /// The reports of `hosts` on the build `digest` of `plugin`, once all
    /// came or `within` passed (a host that did not report is missing).
    pub async fn reports(
        &self,
        plugin: &str,
        digest: &str,
        hosts: &[String],
        within: Duration,
    ) -> Vec<RolloutReport> {
        let deadline = Instant::now() + within;
        let mut found: HashMap<String, RolloutReport> = HashMap::new();
        loop {
            for host in hosts {
                if found.contains_key(host) {
                    continue;
                }
                if let Ok(Some(value)) = self.reports.get(format!("{plugin}.{host}")).await
                    && let Ok(report) = serde_json::from_slice::<RolloutReport>(&value)
                    && report.digest == digest
                {
                    found.insert(host.clone(), report);
                }
            }
            if found.len() == hosts.len() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut reports: Vec<RolloutReport> = found.into_values().collect();
        reports.sort_by(|a, b| a.host.cmp(&b.host));
        reports
    }

    async fn report(&self, report: &RolloutReport) {
        let Ok(value) = serde_json::to_vec(report) else {
            return;
        };
        if let Err(error) = self
            .reports
            .put(format!("{}.{}", report.plugin, self.host), value.into())
            .await
        {
            tracing::warn!(
                "cannot report the roll-out of plugin {} to the cluster: {error}",
                report.plugin
            );
        }
    }

    /// Fetches, checks and loads one rolled-out object.
    async fn apply(&self, info: &object_store::ObjectInfo, sink: &dyn PluginSink) {
        let plugin = info.name.clone();
        let from = PathBuf::from(format!("nats:{}/{plugin}", self.bucket));
        let mut report = RolloutReport {
            host: self.host.clone(),
            plugin: plugin.clone(),
            digest: info.metadata.get(DIGEST).cloned().unwrap_or_default(),
            build: None,
            error: None,
            restarted: 0,
        };
        let restart_tasks = info.metadata.get(RESTART_TASKS).map(String::as_str) == Some("true");
        let outcome = self
            .fetch_checked(&plugin, &report.digest, sink.build_of(&plugin))
            .await;
        match outcome {
            Ok(None) => report.build = sink.build_of(&plugin),
            Ok(Some(bytes)) => match sink.load(plugin.clone(), from, bytes, restart_tasks).await {
                Ok((build, restarted)) => {
                    report.build = Some(build);
                    report.restarted = restarted;
                }
                Err(error) => {
                    report.build = sink.build_of(&plugin);
                    report.error = Some(error);
                }
            },
            Err(error) => {
                let error = format!("{error:#}");
                sink.refuse(&plugin, &from, &error);
                report.build = sink.build_of(&plugin);
                report.error = Some(error);
            }
        }
        self.report(&report).await;
    }

    /// The latest build of each rolled-out plugin that this host does not
    /// serve yet (`serving` says which build it serves of a plugin), with
    /// where it came from: what a host joining the cluster loads before
    /// any of its tasks starts. A build that cannot be fetched or does not
    /// match its digest comes with why.
    pub async fn latest_builds(
        &self,
        serving: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, PathBuf, Result<Vec<u8>>)>> {
        let mut listed = self
            .store
            .list()
            .await
            .with_context(|| format!("cannot list the plugins of {}", self.bucket))?;
        let mut latest = Vec::new();
        while let Some(info) = listed.next().await {
            let info =
                info.with_context(|| format!("cannot list the plugins of {}", self.bucket))?;
            if info.deleted {
                continue;
            }
            let plugin = info.name.clone();
            let digest = info.metadata.get(DIGEST).cloned().unwrap_or_default();
            let from = PathBuf::from(format!("nats:{}/{plugin}", self.bucket));
            match self.fetch_checked(&plugin, &digest, serving(&plugin)).await {
                Ok(None) => {}
                Ok(Some(bytes)) => latest.push((plugin, from, Ok(bytes))),
                Err(error) => latest.push((plugin, from, Err(error))),
            }
        }
        Ok(latest)
    }

    /// The object's bytes once they match its digest; none when this
    /// host serves that build already (`serving`).
    async fn fetch_checked(
        &self,
        plugin: &str,
        digest: &str,
        serving: Option<String>,
    ) -> Result<Option<Vec<u8>>> {
        if !digest.starts_with("sha256:") || digest.len() != "sha256:".len() + 64 {
            bail!("the object of plugin {plugin} has no sha256 digest in its metadata; refused");
        }
        if serving.as_deref() == Some(build_of_digest(digest).as_str()) {
            return Ok(None);
        }
        let mut object = self
            .store
            .get(plugin)
            .await
            .with_context(|| format!("cannot fetch plugin {plugin} from {}", self.bucket))?;
        // Checked against the digest of the object fetched: a newer one may
        // have replaced the one this update announced.
        let digest = object
            .info()
            .metadata
            .get(DIGEST)
            .cloned()
            .unwrap_or_default();
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("cannot read plugin {plugin} from {}", self.bucket))?;
        let actual = digest_of(&bytes);
        if actual != digest {
            bail!(
                "the build of plugin {plugin} in {} does not match its digest: it was published \
                 as {digest}, its bytes are {actual}; refused, the loaded build keeps serving",
                self.bucket
            );
        }
        Ok(Some(bytes))
    }
}

/// Watches the store and applies every new object (and, first, the latest
/// of each plugin), until the host stops; NATS going away restarts the
/// watch once it is back.
pub(super) fn watch(rollout: Arc<Rollout>, sink: Arc<dyn PluginSink>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match rollout.store.watch_with_history().await {
                Ok(mut updates) => {
                    while let Some(update) = updates.next().await {
                        match update {
                            Ok(info) if !info.deleted => rollout.apply(&info, &*sink).await,
                            Ok(_) => {}
                            Err(error) => {
                                tracing::debug!("plugin roll-out watch: {error}");
                                break;
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!("plugin roll-out watch: {error}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
