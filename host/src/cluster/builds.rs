//! The builds a cluster's resuming tasks began on, kept in the JetStream
//! object store `{name}-builds` (one object per build, named by its
//! version), so a task handed to another host resumes there on the build
//! it began with, whatever that host serves (`crate::worker`'s `builds`).
//!
//! Every host keeps each build it loads, once per version cluster-wide.
//! They are not dropped yet: a host knows the builds it serves, not the
//! others', so none can tell a build no host needs (bounded by the builds
//! an operator loads).

use anyhow::{Context, Result};
use async_nats::jetstream::{self, object_store};
use std::collections::HashMap;
use tokio::io::AsyncReadExt;

/// The object a build is kept as: its version with `-` for `:`.
fn object_name(version: &str) -> String {
    version.replace(':', "-")
}

pub(super) struct Builds {
    store: object_store::ObjectStore,
    bucket: String,
    host: String,
}

impl Builds {
    pub(super) async fn open(
        client: &async_nats::Client,
        cluster: &str,
        host: &str,
    ) -> Result<Builds> {
        let jetstream = jetstream::new(client.clone());
        let bucket = format!("{cluster}-builds");
        let store = super::object_store(
            &jetstream,
            &bucket,
            "taskhost: the builds resuming tasks began on",
        )
        .await?;
        Ok(Builds {
            store,
            bucket,
            host: host.to_string(),
        })
    }

    /// Keeps `component` as build `version` of `plugin`, unless it is kept.
    pub(super) async fn keep(&self, plugin: &str, version: &str, component: &[u8]) -> Result<()> {
        let name = object_name(version);
        if self.store.info(&name).await.is_ok() {
            return Ok(());
        }
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            description: Some(format!(
                "build {version} of plugin {plugin}, kept by host {}",
                self.host
            )),
            metadata: HashMap::from([("plugin".to_string(), plugin.to_string())]),
            ..Default::default()
        };
        let mut reader = component;
        self.store
            .put(meta, &mut reader)
            .await
            .with_context(|| format!("cannot keep build {version} in {}", self.bucket))?;
        Ok(())
    }

    /// Build `version`'s component, if it is kept.
    pub(super) async fn kept(&self, version: &str) -> Result<Option<Vec<u8>>> {
        let name = object_name(version);
        let mut object = match self.store.get(&name).await {
            Ok(object) => object,
            Err(error) if error.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(anyhow::Error::new(error))
                    .with_context(|| format!("cannot read build {version} from {}", self.bucket));
            }
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("cannot read build {version} from {}", self.bucket))?;
        Ok(Some(bytes))
    }
}
