//! The builds tasks that resume began on.
//!
//! A task resuming from its journal must run the code that made the
//! journal's calls: the same calls in the same order. So every build the
//! host loads is kept in its storage (once per version, by content hash)
//! while it serves or an unfinished task that resumes began on it; a task
//! found unfinished at a start runs again on its first build, loaded from
//! there, even when app.toml or a hot-load has moved its plugin on since.
//! Tasks of one old build share one load of it, for as long as one runs.

use super::TaskEnv;
use crate::plugin::Plugin;
use crate::registry::AddTaskError;
use crate::storage::TaskRecord;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

impl TaskEnv {
    /// Keeps `component`, the bytes `plugin` was loaded from, where the
    /// storage keeps journals. A failure is logged: the build serves all
    /// the same, and a task that began on it and outlives it resumes on
    /// the build serving then (said when it does).
    pub(crate) async fn keep_build(&self, plugin: &Plugin, component: Vec<u8>) {
        let store = self.storage.tasks();
        if !store.keeps_journals() {
            return;
        }
        if let Err(error) = store
            .keep_build(&plugin.name, &plugin.version, component)
            .await
        {
            tracing::warn!(
                "plugin `{}`: cannot keep build {} for the tasks that resume on it ({error:#})",
                plugin.name,
                plugin.version
            );
        }
    }

    /// Drops the kept builds that neither serve nor began an unfinished
    /// task that resumes.
    pub(crate) async fn drop_builds(&self) {
        let store = self.storage.tasks();
        if !store.keeps_journals() {
            return;
        }
        let serving: Vec<String> = self
            .plugins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|plugin| plugin.version.to_string())
            .collect();
        match store.drop_builds(serving).await {
            Ok(0) => {}
            Ok(dropped) => tracing::debug!("dropped {dropped} kept build(s) no task needs"),
            Err(error) => tracing::warn!("{error:#}"),
        }
    }

    /// The build `record`'s task runs on: the one serving its plugin, or,
    /// for a task that resumes and began on another, that one (kept by
    /// the storage). Without it (not kept, or it no longer loads) the task
    /// runs on the serving build, and the log says so: its journal then
    /// stops it `nondeterministic` at the first call the builds make
    /// differently.
    pub(crate) async fn build_of(&self, record: &TaskRecord) -> Result<Arc<Plugin>, AddTaskError> {
        let serving = self.plugin(&record.plugin);
        let version = record.plugin_version.as_str();
        if !record.resume || serving.as_ref().is_some_and(|p| &*p.version == version) {
            return serving.ok_or_else(|| AddTaskError::UnknownPlugin(record.plugin.clone()));
        }
        if let Some(plugin) = self.first_build(version) {
            return Ok(plugin);
        }
        let now = serving
            .as_ref()
            .map_or("no build".to_string(), |p| format!("build {}", p.version));
        match self.load_kept(record).await {
            Ok(plugin) => {
                tracing::info!(
                    "durable task {} resumes on build {version} of plugin `{}`, which it began \
                     on ({now} serves new tasks)",
                    record.name,
                    record.plugin
                );
                Ok(plugin)
            }
            Err(why) => {
                tracing::warn!(
                    "durable task {} began on build {version} of plugin `{}`, which {why}: it \
                     resumes on {now}",
                    record.name,
                    record.plugin
                );
                serving.ok_or_else(|| AddTaskError::UnknownPlugin(record.plugin.clone()))
            }
        }
    }

    /// Build `version`, if a task running now holds it.
    fn first_build(&self, version: &str) -> Option<Arc<Plugin>> {
        self.first_builds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(version)
            .and_then(Weak::upgrade)
    }

    /// Loads the kept build `record`'s task began on; or says why not.
    async fn load_kept(&self, record: &TaskRecord) -> Result<Arc<Plugin>, String> {
        let version = &record.plugin_version;
        let component = match self.storage.tasks().kept_build(version).await {
            Ok(Some(component)) => component,
            Ok(None) => return Err("the storage does not keep".into()),
            Err(error) => return Err(format!("cannot be read ({error:#})")),
        };
        let from = PathBuf::from(format!("(kept build {version})"));
        let loaded = self
            .loader
            .load_component(&record.plugin, &from, component)
            .await
            .map_err(|error| format!("no longer loads ({error})"))?;
        if *loaded.plugin.version != **version {
            return Err(format!("is kept as {}", loaded.plugin.version));
        }
        let plugin = Arc::new(loaded.plugin);
        let mut builds = self.first_builds.lock().unwrap_or_else(|e| e.into_inner());
        // Two tasks of one build resuming at once: the first load wins.
        if let Some(loaded) = builds.get(version.as_str()).and_then(Weak::upgrade) {
            return Ok(loaded);
        }
        builds.retain(|_, build| build.strong_count() > 0);
        builds.insert(version.clone(), Arc::downgrade(&plugin));
        Ok(plugin)
    }
}
