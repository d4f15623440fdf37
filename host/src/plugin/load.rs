//! Component file -> [`Plugin`], refusing anything that is not one of ours.

use super::{Factory, Instances, LazyPre, Plugin};
use crate::app::AppContext;
use crate::bindings::{Factories, FactoriesPre, GuestError};
use crate::compile_cache::CompileCache;
use crate::config::{MAX_COMPONENT_BYTES, check_plugin_name};
use crate::engine::{HostEngine, IMAGE_THRESHOLD, data_segment_bytes};
use crate::private_files::hex;
use crate::store::{TaskData, linker};

use crate::task::{CancelSignal, TaskIdent, WorkerId};
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

/// The world a plugin must implement, as people write it.
pub(super) const WORLD: &str = "taskhost:plugin/plugin@0.5.0";

/// How long a plugin may take to list its factories or check arguments:
/// these calls do no real work, so a plugin that takes longer is broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a component could not be loaded. Callers branch on it: the control
/// API answers 404 for `Missing` and 422 for `Refused`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// There is no file at the path.
    #[error("{0:#}")]
    Missing(anyhow::Error),
    /// There is something at the path, but not a plugin this host can run:
    /// not a regular file, too large, not a component, does not compile,
    /// needs imports the host lacks or misses the world's exports, or its
    /// factories could not be listed. Also a bad plugin name.
    #[error("{0:#}")]
    Refused(anyhow::Error),
}

/// A plugin just loaded, with the component it was loaded from: kept by
/// the host's storage so that a task resuming from its journal can run
/// again on this build once another replaced it.
pub struct Loaded {
    /// The plugin, ready to start tasks from.
    pub plugin: Plugin,
    /// The component's bytes.
    pub component: Vec<u8>,
}

/// Loads plugins for one engine, with the imports every task gets: WASI p2
/// (capabilities decided per task, see `app::TaskData`) and the `app` handle.
pub struct PluginLoader {
    engines: HostEngine,
    /// For the warm engine, the cold one and the image one.
    linkers: [Linker<TaskData>; 3],
    /// For the warm image engine, when there is one.
    warm_image_linker: Option<Linker<TaskData>>,
    app: Arc<AppContext>,
}

impl PluginLoader {
    /// A loader for `engines`, linking the imports once per engine; `app` is
    /// what the tasks of the plugins it loads share.
    pub fn new(engines: &HostEngine, app: Arc<AppContext>) -> Result<PluginLoader> {
        Ok(PluginLoader {
            linkers: [
                linker(&engines.engine)?,
                linker(&engines.cold)?,
                linker(&engines.images)?,
            ],
            warm_image_linker: engines.warm_images.as_ref().map(linker).transpose()?,
            engines: engines.clone(),
            app,
        })
    }

    /// The engines it compiles for, which the host's workers run tasks on.
    pub fn engines(&self) -> &HostEngine {
        &self.engines
    }

    /// The compile cache, if enabled: its counts say whether loading
    /// compiled anything.
    pub fn compile_cache(&self) -> Option<&CompileCache> {
        self.engines.cache.as_deref()
    }

    /// Reads, compiles and links the component at `path` as plugin `name`,
    /// then asks it for its factories. Reading and compiling happen off the
    /// async threads: a slow disk or a big component stalls nothing else.
    pub async fn load(&self, name: &str, path: &Path) -> Result<Loaded, LoadError> {
        check_plugin_name(name).map_err(LoadError::Refused)?;
        let file = path.display();
        let owned = path.to_path_buf();
        let bytes = tokio::task::spawn_blocking(move || read_component(&owned))
            .await
            .context("reader thread failed")
            .map_err(LoadError::Refused)?
            .map_err(|error| {
                let missing = error
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                let error = error.context(format!("plugin `{name}`: cannot read {file}"));
                if missing {
                    LoadError::Missing(error)
                } else {
                    LoadError::Refused(error)
                }
            })?;
        self.load_bytes(name, path, bytes)
            .await
            .map_err(LoadError::Refused)
    }

    /// [`PluginLoader::load`] for a component already in memory (a
    /// cluster's roll-out); `from` names where it came from.
    pub async fn load_component(
        &self,
        name: &str,
        from: &Path,
        bytes: Vec<u8>,
    ) -> Result<Loaded, LoadError> {
        check_plugin_name(name).map_err(LoadError::Refused)?;
        self.load_bytes(name, from, bytes)
            .await
            .map_err(LoadError::Refused)
    }

    /// [`PluginLoader::load`] once the file is read.
    async fn load_bytes(&self, name: &str, path: &Path, bytes: Vec<u8>) -> Result<Loaded> {
        let file = path.display();
        if !wasmparser::Parser::is_component(&bytes) {
            if wasmparser::Parser::is_core_wasm(&bytes) {
                bail!(
                    "plugin `{name}`: {file} is a core WebAssembly module, not a component; \
                     build plugins with `taskhost build <crate dir>` (or wrap a module with \
                     `wasm-tools component new`)"
                );
            }
            bail!("plugin `{name}`: {file} is not a WebAssembly component (no wasm header)");
        }
        let version = format!("sha256:{}", &hex(&Sha256::digest(&bytes))[..12]);

        // Reading the data segments of an 18 MB component and compiling
        // are CPU-bound: keep them off the async threads.
        let engines = self.engines.clone();
        let plugin_name = name.to_string();
        let (data_bytes, components, bytes) = tokio::task::spawn_blocking(move || {
            let data_bytes = data_segment_bytes(&bytes);
            let compiled = compile(&engines, &bytes, data_bytes, &plugin_name);
            (data_bytes, compiled, bytes)
        })
        .await
        .context("compiler thread failed")?;
        let components =
            components.map_err(|e| anyhow!("plugin `{name}`: {file} does not compile: {e:#}"))?;

        let file = file.to_string();
        let linked =
            |linker: &Linker<TaskData>, component: &Component| link(linker, component, name, &file);
        let instances = match &components {
            Compiled::Pooled { warm, cold } => Instances::Pooled {
                warm: linked(&self.linkers[0], warm)?,
                cold: linked(&self.linkers[1], cold)?,
            },
            Compiled::Image {
                warm: Some(warm),
                cold: None,
            } if let Some(linker) = &self.warm_image_linker => {
                // The on-demand copy of the code is made from the pool's
                // the first time a task overflows the pool (or never).
                let (warm, engine) = (warm.clone(), self.engines.images.clone());
                let (linker_on_demand, name, file) =
                    (self.linkers[2].clone(), name.to_string(), file.clone());
                Instances::Image {
                    warm: Some(linked(linker, &warm)?),
                    cold: LazyPre::later(move || {
                        let begun = std::time::Instant::now();
                        let copied = warm.serialize().and_then(|artifact| {
                            // SAFETY: serialized just now by this process,
                            // from code it compiled or verified.
                            unsafe { Component::deserialize(&engine, &artifact) }
                        });
                        // The two engines share one configuration of code:
                        // a refusal is not expected, and names the plugin.
                        let cold = copied.map_err(|e| {
                            anyhow!(
                                "the warm image pool is full and {file}'s code could not be \
                                 copied for instances on demand: {e:#}"
                            )
                        })?;
                        let linked = link(&linker_on_demand, &cold, &name, &file)?;
                        tracing::info!(
                            plugin = name,
                            "plugin `{name}`: a task found the warm image pool full, so its \
                             code was copied for tasks instantiated on demand ({:.0} ms, once \
                             per build)",
                            begun.elapsed().as_secs_f64() * 1e3
                        );
                        Ok(linked)
                    }),
                }
            }
            Compiled::Image {
                cold: Some(cold), ..
            } => Instances::Image {
                warm: None,
                cold: LazyPre::ready(linked(&self.linkers[2], cold)?),
            },
            Compiled::Image { .. } => {
                bail!("plugin `{name}`: {file} was compiled for no engine")
            }
        };

        let mut plugin = Plugin {
            name: name.into(),
            path: path.to_path_buf(),
            version: version.into(),
            factories: Vec::new(),
            data_bytes,
            instances,
            retired: OnceLock::new(),
            superseded: std::sync::atomic::AtomicBool::new(false),
            replaced: tokio::sync::Notify::new(),
        };
        let listed = self
            .probe(&plugin, |instance, store| {
                Box::pin(async move { instance.call_list_factories(store).await })
            })
            .await
            .with_context(|| format!("plugin `{name}`: {file}: listing its factories failed"))?;
        plugin.factories = listed
            .into_iter()
            .map(|f| Factory {
                name: f.name,
                description: f.description,
            })
            .collect();
        Ok(Loaded {
            plugin,
            component: bytes,
        })
    }

    /// Asks the plugin whether `args` (JSON text) suit `factory`, without
    /// running anything. `Ok(Err(_))` is the plugin's answer; `Err(_)` means
    /// the plugin could not be asked (it trapped or hung).
    pub async fn check_args(
        &self,
        plugin: &Plugin,
        factory: &str,
        args: &str,
    ) -> Result<Result<(), GuestError>> {
        let factory = factory.to_string();
        let args = args.to_string();
        self.probe(plugin, move |instance, store| {
            Box::pin(async move { instance.call_check(store, &factory, &args).await })
        })
        .await
    }

    /// Runs `call` in a fresh, throw-away instance of `plugin`, bounded by
    /// [`PROBE_TIMEOUT`].
    async fn probe<R>(
        &self,
        plugin: &Plugin,
        call: impl for<'a> FnOnce(
            &'a Factories,
            &'a mut wasmtime::Store<TaskData>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<R> {
        let ident = Arc::new(TaskIdent {
            id: 0,
            name: Some(format!("{}:probe", plugin.name)),
            worker: WorkerId::Main,
            plugin: plugin.name.clone(),
            plugin_version: plugin.version.clone(),
            factory: String::new(),
            durable: None,
            connection: None,
            queue: None,
            parent: None,
            trace: None,
            args: crate::task::ShownArgs::default(),
        });
        let data = TaskData::new(ident, self.app.clone(), Arc::new(CancelSignal::default()));
        // Probes run on the cold engine: they should not leave pages in
        // the warm pool. A large-image plugin's probe takes a warm image
        // slot if one is free (its next task will want that slot's
        // pages), so that its on-demand copy is made only if ever needed.
        let image_slot = match plugin.has_large_image() {
            true => self.engines.warm_image_slots.take(),
            false => None,
        };
        let (engine, pre) = plugin
            .instantiation(&self.engines, image_slot.is_some())
            .map_err(|why| anyhow!("{why}"))?;
        let mut store = crate::store::new_store(engine, data);
        let work = async move {
            let mut instantiated = pre.instantiate_async(&mut store).await;
            if image_slot.is_some() && crate::engine::pool_was_full(&instantiated) {
                // Larger than the warm image pool's slots: on demand, as
                // its tasks will be.
                let (engine, pre) = plugin
                    .instantiation(&self.engines, false)
                    .map_err(wasmtime::Error::msg)?;
                store = crate::store::new_store(engine, store.into_data());
                instantiated = pre.instantiate_async(&mut store).await;
            }
            let instance = match instantiated {
                Ok(instance) => instance,
                Err(error) => {
                    return Err(match crate::engine::mapping_refused_hint(&error) {
                        Some(hint) => error.context(hint),
                        None => error,
                    });
                }
            };
            call(&instance, &mut store).await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, work).await {
            Ok(result) => result.map_err(anyhow::Error::from),
            Err(_) => bail!("no answer within {PROBE_TIMEOUT:?}"),
        }
    }
}

/// `component` linked to `linker`'s imports and checked against the
/// plugin world: errors name plugin `name` and its `file`.
fn link(
    linker: &Linker<TaskData>,
    component: &Component,
    name: &str,
    file: &str,
) -> Result<FactoriesPre<TaskData>> {
    let instance_pre = linker.instantiate_pre(component).map_err(|e| {
        anyhow!(
            "plugin `{name}`: {file} needs an import taskhost does not provide \
             (plugins may import `taskhost:plugin/app` and `connections`, WASI 0.2, \
             `wasi:http`, `wasi:keyvalue@0.2.0-draft2` and \
             `wasi:config/store@0.2.0-rc.1`): {e:#}"
        )
    })?;
    FactoriesPre::new(instance_pre).map_err(|e| {
        anyhow!("plugin `{name}`: {file} does not implement the world `{WORLD}`: {e:#}")
    })
}

/// A component compiled for the engines its tasks will run on.
enum Compiled {
    Pooled {
        warm: Component,
        cold: Component,
    },
    /// For the warm image pool when the host has one (the on-demand copy
    /// is made from it when first needed), else for the on-demand engine.
    Image {
        warm: Option<Component>,
        cold: Option<Component>,
    },
}

/// `bytes` compiled for the image engine when its data segments exceed
/// [`IMAGE_THRESHOLD`], else for the warm engine (through the compile
/// cache) and the cold one. Warm and cold share one configuration of
/// compiled code, so the cold one deserializes what the warm one compiled
/// (or the cache held) rather than compiling it again.
fn compile(
    engines: &HostEngine,
    bytes: &[u8],
    data_bytes: u64,
    name: &str,
) -> wasmtime::Result<Compiled> {
    let cached = |engine: &Engine| match &engines.cache {
        Some(cache) => cache.compiled(engine, bytes),
        None => {
            let component = Component::from_binary(engine, bytes)?;
            let artifact = component.serialize().ok();
            Ok((component, artifact))
        }
    };
    // The second engine of a pair takes what the first compiled.
    let also_for = |engine: &Engine, artifact: Option<&Vec<u8>>| {
        // SAFETY: the artifact was serialized by this process from code it
        // compiled, or read from a cache entry whose MAC proves the same.
        match artifact.map(|artifact| unsafe { Component::deserialize(engine, artifact) }) {
            Some(Ok(component)) => Ok(component),
            // An engine fallen back to on-demand allocation may disagree.
            _ => Component::from_binary(engine, bytes),
        }
    };
    if data_bytes > IMAGE_THRESHOLD {
        if let Some(engine) = &engines.warm_images {
            match cached(engine) {
                Ok((warm, _)) => {
                    return Ok(Compiled::Image {
                        warm: Some(warm),
                        cold: None,
                    });
                }
                // The pool's slots bound what one instance may hold (core
                // instances, tables and their entries, memories): a
                // component past them runs on demand, as all did before.
                Err(error) => tracing::warn!(
                    plugin = name,
                    "plugin `{name}` does not fit the warm image pool's slots ({error:#}): \
                     its tasks are instantiated on demand"
                ),
            }
        }
        return Ok(Compiled::Image {
            warm: None,
            cold: Some(cached(&engines.images)?.0),
        });
    }
    let (warm, artifact) = cached(&engines.engine)?;
    let cold = also_for(&engines.cold, artifact.as_ref())?;
    Ok(Compiled::Pooled { warm, cold })
}

/// The bytes of the component file at `path`: a regular file (following
/// links) of at most [`MAX_COMPONENT_BYTES`], read as
/// [`crate::config::read_bounded`] reads. Blocking: call it off the async
/// threads.
pub fn read_component(path: &Path) -> Result<Vec<u8>> {
    crate::config::read_bounded(path, MAX_COMPONENT_BYTES, "a component")
}
