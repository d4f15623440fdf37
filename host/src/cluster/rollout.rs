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

/// Where a host loads what the cluster rolls out: the host itself, seen
/// from this layer.
pub trait PluginSink: Send + Sync + 'static {
    /// The build (`sha256:` and 12 hex digits) plugin `name` serves here
    /// now, if it is loaded.
    fn build_of(&self, name: &str) -> Option<String>;

    /// Hot-loads `bytes` as plugin `name`; `from` says where they came
    /// from. The build it serves now, or why it was refused.
    fn load(
        &self,
        name: String,
        from: PathBuf,
        bytes: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

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
        let store = match jetstream.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("taskhost: plugins rolled out to every host".into()),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("cannot open the JetStream object store {bucket}"))?,
        };
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

    /// Stores `bytes` as the build of `plugin` for every host; returns its
    /// digest.
    pub async fn publish(&self, plugin: &str, bytes: &[u8]) -> Result<String> {
        if !super::online(&self.client) {
            bail!("NATS is unreachable, so the build cannot be rolled out now");
        }
        let digest = digest_of(bytes);
        let meta = object_store::ObjectMetadata {
            name: plugin.to_string(),
            description: Some(format!("plugin {plugin}, put by host {}", self.host)),
            metadata: HashMap::from([(DIGEST.to_string(), digest.clone())]),
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
        };
        let outcome = self.fetch_checked(&plugin, &report.digest, sink).await;
        match outcome {
            Ok(None) => report.build = sink.build_of(&plugin),
            Ok(Some(bytes)) => match sink.load(plugin.clone(), from, bytes).await {
                Ok(build) => report.build = Some(build),
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

    /// The object's bytes once they match its digest; none when this
    /// host serves that build already.
    async fn fetch_checked(
        &self,
        plugin: &str,
        digest: &str,
        sink: &dyn PluginSink,
    ) -> Result<Option<Vec<u8>>> {
        if !digest.starts_with("sha256:") || digest.len() != "sha256:".len() + 64 {
            bail!("the object of plugin {plugin} has no sha256 digest in its metadata; refused");
        }
        if sink.build_of(plugin).as_deref() == Some(build_of_digest(digest).as_str()) {
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
