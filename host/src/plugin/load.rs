//! Component file -> [`Plugin`], refusing anything that is not one of ours.

use super::{Factory, Plugin};
use crate::app::{AppContext, TaskData};
use crate::bindings::{GuestError, PluginPre};
use crate::runner;
use crate::task::{CancelSignal, TaskIdent, WorkerId};
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

/// The world a plugin must implement, as people write it.
pub const WORLD: &str = "taskhost:plugin/plugin@0.1.0";

/// How long a plugin may take to list its factories or check arguments:
/// these calls do no real work, so a plugin that takes longer is broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads plugins for one engine, with the imports every task gets: WASI p2
/// (capabilities decided per task, see [`TaskData`]) and the `app` handle.
pub struct PluginLoader {
    engine: Engine,
    linker: Linker<TaskData>,
    app: Arc<AppContext>,
}

impl PluginLoader {
    pub fn new(engine: &Engine, app: Arc<AppContext>) -> Result<PluginLoader> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow!("cannot add WASI to the linker: {e:#}"))?;
        crate::bindings::Plugin::add_to_linker::<TaskData, HasSelf<TaskData>>(&mut linker, |d| d)
            .map_err(|e| anyhow!("cannot add the app interface to the linker: {e:#}"))?;
        Ok(PluginLoader {
            engine: engine.clone(),
            linker,
            app,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, compiles and links the component at `path` as plugin `name`,
    /// then asks it for its factories.
    pub async fn load(&self, name: &str, path: &Path) -> Result<Plugin> {
        let file = path.display();
        let bytes =
            std::fs::read(path).with_context(|| format!("plugin `{name}`: cannot read {file}"))?;
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

        // Compiling is CPU-bound and can take a while: keep it off the
        // async threads.
        let engine = self.engine.clone();
        let component =
            tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
                .await
                .context("compiler thread failed")?
                .map_err(|e| anyhow!("plugin `{name}`: {file} does not compile: {e:#}"))?;

        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            anyhow!(
                "plugin `{name}`: {file} needs an import taskhost does not provide \
                 (plugins may import `taskhost:plugin/app` and WASI 0.2): {e:#}"
            )
        })?;
        let pre = PluginPre::new(instance_pre).map_err(|e| {
            anyhow!("plugin `{name}`: {file} does not implement the world `{WORLD}`: {e:#}")
        })?;

        let mut plugin = Plugin {
            name: name.to_string(),
            path: path.to_path_buf(),
            version,
            factories: Vec::new(),
            pre,
        };
        let listed = self
            .probe(&plugin, |instance, store| {
                Box::pin(async move {
                    instance
                        .taskhost_plugin_factories()
                        .call_list_factories(store)
                        .await
                })
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
        Ok(plugin)
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
            Box::pin(async move {
                instance
                    .taskhost_plugin_factories()
                    .call_check(store, &factory, &args)
                    .await
            })
        })
        .await
    }

    /// Runs `call` in a fresh, throw-away instance of `plugin`, bounded by
    /// [`PROBE_TIMEOUT`].
    async fn probe<R>(
        &self,
        plugin: &Plugin,
        call: impl for<'a> FnOnce(
            &'a crate::bindings::Plugin,
            &'a mut wasmtime::Store<TaskData>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<R> {
        let ident = Arc::new(TaskIdent {
            id: 0,
            name: Some(format!("{}:probe", plugin.name)),
            worker: WorkerId::Main,
            plugin: plugin.name.as_str().into(),
            plugin_version: plugin.version.as_str().into(),
            factory: String::new(),
        });
        let data = TaskData::new(ident, self.app.clone(), Arc::new(CancelSignal::default()));
        let mut store = runner::new_store(&self.engine, data);
        let work = async {
            let instance = match plugin.pre().instantiate_async(&mut store).await {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
