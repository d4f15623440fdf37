//! `taskhost run --watch`: plugin files and plugin crates are watched, and a
//! change is rebuilt (for `build = ...` plugins) and hot-loaded, exactly as
//! `taskhost load` would: new tasks use the new build, a broken one is
//! refused and the old build keeps serving.

use crate::config::{AppConfig, PluginSource};
use crate::host::Host;
use crate::plugin::build::{self, BuildOptions, BuildOutput};
use anyhow::{Context, Result};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Editors and builds write in bursts: wait this long without a new change
/// before rebuilding.
const QUIET: Duration = Duration::from_millis(300);

/// A running watch; dropping it stops watching.
pub(crate) struct Watch {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What to watch for one plugin, and what a change in it means.
struct Target {
    name: String,
    source: PluginSource,
    /// A changed path under one of these concerns this plugin.
    roots: Vec<PathBuf>,
    /// A Python or JavaScript plugin: its directory holds its build output
    /// and caches too, so only its sources count.
    script: Option<Script>,
}

/// A plugin built from a whole directory of scripts.
#[derive(Clone, Copy)]
enum Script {
    Python,
    JavaScript,
}

impl Script {
    fn of(dir: &Path) -> Option<Script> {
        if build::python::is_python_plugin(dir) {
            Some(Script::Python)
        } else if build::js::is_js_plugin(dir) {
            Some(Script::JavaScript)
        } else {
            None
        }
    }

    fn is_source(self, path: &Path) -> bool {
        match self {
            Script::Python => {
                path.extension().is_some_and(|e| e == "py")
                    || path.file_name().is_some_and(|n| n == "pyproject.toml")
            }
            Script::JavaScript => build::js::is_source(path),
        }
    }
}

impl Target {
    fn concerns(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| path.starts_with(root))
            && self.script.is_none_or(|script| script.is_source(path))
    }
}

/// Starts watching every plugin of `config`. A source changed since
/// `since` (when loading began: the build may have read it before the
/// change, and the watch began after) counts as changed now.
pub(crate) fn start(
    host: Arc<Host>,
    config: &AppConfig,
    build_options: BuildOptions,
    since: std::time::SystemTime,
) -> Result<Watch> {
    let (changes, mut changed) = mpsc::unbounded_channel::<PathBuf>();
    let early = changes.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            )
        {
            for path in event.paths {
                let _ = changes.send(path);
            }
        }
    })
    .context("cannot start the file watcher")?;

    let mut targets = Vec::new();
    for (name, plugin) in &config.plugins {
        let script = match &plugin.source {
            PluginSource::Build(dir) => Script::of(dir),
            PluginSource::File(_) => None,
        };
        let roots = match &plugin.source {
            PluginSource::File(path) => {
                let file = std::fs::canonicalize(path)
                    .with_context(|| format!("cannot watch {}", path.display()))?;
                // Builds replace the file by renaming: watch its directory.
                let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
                watcher.watch(&dir, RecursiveMode::NonRecursive)?;
                vec![file]
            }
            PluginSource::Build(dir) if script.is_some() => {
                let dir = std::fs::canonicalize(dir)
                    .with_context(|| format!("cannot watch {}", dir.display()))?;
                watcher.watch(&dir, RecursiveMode::Recursive)?;
                vec![dir]
            }
            PluginSource::Build(dir) => {
                let dir = std::fs::canonicalize(dir)
                    .with_context(|| format!("cannot watch {}", dir.display()))?;
                let src = dir.join("src");
                let manifest = dir.join("Cargo.toml");
                watcher.watch(&src, RecursiveMode::Recursive)?;
                watcher.watch(&manifest, RecursiveMode::NonRecursive)?;
                vec![src, manifest]
            }
        };
        targets.push(Target {
            name: name.clone(),
            source: plugin.source.clone(),
            roots,
            script,
        });
    }
    tracing::info!(
        plugins = targets.len(),
        "watching {} plugin(s) for changes",
        targets.len()
    );
    for target in &targets {
        for root in &target.roots {
            if let Some(path) = changed_since(root, since, target, 0) {
                let _ = early.send(path);
            }
        }
    }

    let task = tokio::spawn(async move {
        while let Some(first) = changed.recv().await {
            let mut paths = vec![first];
            while let Ok(Some(path)) = tokio::time::timeout(QUIET, changed.recv()).await {
                paths.push(path);
            }
            let touched: BTreeSet<&str> = targets
                .iter()
                .filter(|t| paths.iter().any(|p| t.concerns(p)))
                .map(|t| t.name.as_str())
                .collect();
            for target in targets.iter().filter(|t| touched.contains(t.name.as_str())) {
                reload(&host, target, &build_options).await;
            }
        }
    });
    Ok(Watch {
        _watcher: watcher,
        task,
    })
}

/// How deep [`changed_since`] looks into a plugin's directory.
const MAX_DEPTH: usize = 16;

/// A source under `path` (a file, or a directory walked to [`MAX_DEPTH`],
/// past build output, dependencies and hidden directories) of `target`
/// modified at or after `since`, if there is one.
fn changed_since(
    path: &Path,
    since: std::time::SystemTime,
    target: &Target,
    depth: usize,
) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        let modified = meta.modified().ok()?;
        return (modified >= since && target.concerns(path)).then(|| path.to_path_buf());
    }
    if !meta.is_dir() || depth >= MAX_DEPTH {
        return None;
    }
    std::fs::read_dir(path).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name();
        let skipped = name.to_str().is_none_or(|name| {
            name.starts_with('.') || matches!(name, "node_modules" | "target" | "__pycache__")
        });
        match skipped {
            true => None,
            false => changed_since(&entry.path(), since, target, depth + 1),
        }
    })
}

async fn reload(host: &Host, target: &Target, build_options: &BuildOptions) {
    let path = match &target.source {
        PluginSource::File(path) => path.clone(),
        PluginSource::Build(dir) => {
            tracing::info!(
                plugin = target.name,
                "plugin {} changed: rebuilding",
                target.name
            );
            let crate_dir = dir.clone();
            let options = BuildOptions {
                output: BuildOutput::Capture,
                ..build_options.clone()
            };
            match tokio::task::spawn_blocking(move || build::build(&crate_dir, &options)).await {
                Ok(Ok(path)) => path,
                Ok(Err(error)) => {
                    host.refuse_plugin(&target.name, dir, &error.context("rebuilding failed"));
                    return;
                }
                Err(error) => {
                    tracing::error!("build thread failed: {error}");
                    return;
                }
            }
        }
    };
    // Refusals are logged and announced by the host itself.
    let _ = host.load_plugin(&target.name, &path).await;
}
