//! Plugins: component files turned into something tasks can be started
//! from cheaply.
//!
//! A [`Plugin`] is compiled and linked once (`InstancePre`), so starting a
//! task is an instantiation, not a compile. `load` refuses, with a message
//! naming the plugin and the file, anything that is not a component of our
//! world. `build` turns a plugin crate into a component file.

pub mod build;
mod load;

use crate::bindings::FactoriesPre;
use crate::engine::HostEngine;
use crate::lifecycle::LifecycleEvent;
use crate::store::TaskData;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

pub use crate::config::MAX_COMPONENT_BYTES;
pub use load::{LoadError, Loaded, PluginLoader, read_component};

/// One factory a plugin offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Factory {
    /// What `factory` names in app.toml, a submission or a schedule.
    pub name: String,
    /// One line on what its tasks do, as the plugin lists it (the SDK
    /// takes the first line of the function's doc comment).
    pub description: String,
}

/// Where a plugin's tasks are instantiated (see [`crate::engine`]).
pub(crate) enum Instances {
    /// A small memory image: the warm pool while it has a free slot, else
    /// the cold pool.
    Pooled {
        warm: FactoriesPre<TaskData>,
        cold: FactoriesPre<TaskData>,
    },
    /// A large memory image (an interpreter's snapshot), mapped
    /// copy-on-write: the warm image pool while it has a free slot (none
    /// when the host has no such pool), else on demand.
    Image {
        warm: Option<FactoriesPre<TaskData>>,
        cold: LazyPre,
    },
}

/// A pre-instantiated component made when first needed: a large-image
/// plugin's on-demand copy, which a host with a warm image pool makes only
/// once a task overflows the pool (each copy of a Python component's code
/// holds about 35 MB resident).
pub(crate) struct LazyPre {
    made: OnceLock<FactoriesPre<TaskData>>,
    /// Makes it; held while making, so that one caller makes it and the
    /// others wait. A failure is not kept: the next caller tries again (a
    /// refused mapping may be passing).
    #[allow(clippy::type_complexity)]
    make: std::sync::Mutex<Option<Box<dyn Fn() -> anyhow::Result<FactoriesPre<TaskData>> + Send>>>,
}

impl LazyPre {
    pub(crate) fn ready(pre: FactoriesPre<TaskData>) -> LazyPre {
        LazyPre {
            made: OnceLock::from(pre),
            make: std::sync::Mutex::new(None),
        }
    }

    pub(crate) fn later(
        make: impl Fn() -> anyhow::Result<FactoriesPre<TaskData>> + Send + 'static,
    ) -> LazyPre {
        LazyPre {
            made: OnceLock::new(),
            make: std::sync::Mutex::new(Some(Box::new(make))),
        }
    }

    /// The component, made now if it was not yet (blocking: a copy of the
    /// compiled code, about 50 ms for a Python component, once); why not,
    /// if making it failed.
    fn get(&self) -> std::result::Result<&FactoriesPre<TaskData>, String> {
        if let Some(pre) = self.made.get() {
            return Ok(pre);
        }
        let make = self.make.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pre) = self.made.get() {
            return Ok(pre);
        }
        let Some(make) = make.as_ref() else {
            return Err("no engine to instantiate it on (a bug: please report it)".to_string());
        };
        let pre = make().map_err(|e| format!("{e:#}"))?;
        Ok(self.made.get_or_init(|| pre))
    }
}

/// A loaded plugin, ready to start tasks from.
pub struct Plugin {
    /// Shared with the identity of each of its tasks (no copy per task).
    pub name: Arc<str>,
    /// The component file it was loaded from.
    pub path: PathBuf,
    /// `sha256:` + the first 12 hex digits of the file's hash: tells two
    /// builds apart in logs and listings. Shared as `name` is.
    pub version: Arc<str>,
    /// What it offers, in the order its `list-factories` gave them.
    pub factories: Vec<Factory>,
    /// Bytes of data segments in its core modules: what decides whether
    /// its tasks map their memory copy-on-write.
    pub data_bytes: u64,
    /// Where its tasks are instantiated.
    instances: Instances,
    /// Set once a newer build replaced this one: where to announce that its
    /// last task ended (see [`Plugin::retire`]).
    retired: OnceLock<broadcast::Sender<LifecycleEvent>>,
    /// Set (and `replaced` told) once a build with other content replaced
    /// this one: the tasks that move to a newer build (`on_load =
    /// "restart"`) wait for it. A load of the same content sets only
    /// `retired`: its tasks would move to the code they run.
    superseded: std::sync::atomic::AtomicBool,
    replaced: tokio::sync::Notify,
}

impl Plugin {
    /// Its factory `name`, if it has one.
    pub fn factory(&self, name: &str) -> Option<&Factory> {
        self.factories.iter().find(|f| f.name == name)
    }

    /// Whether its tasks run on the image engine (and so take no slot of
    /// the warm pool).
    pub fn has_large_image(&self) -> bool {
        matches!(self.instances, Instances::Image { .. })
    }

    /// The engine a task of this plugin is instantiated on, and the
    /// pre-instantiated component for it: the warm pool's (or, for a
    /// large-image plugin, the warm image pool's) when `warm` (a slot of
    /// that pool is held), else the cold pool's (or the on-demand image
    /// engine's).
    /// Fails only if a large-image plugin's on-demand copy could not be
    /// made.
    pub(crate) fn instantiation<'a>(
        &'a self,
        engines: &'a HostEngine,
        warm: bool,
    ) -> std::result::Result<(&'a wasmtime::Engine, &'a FactoriesPre<TaskData>), String> {
        Ok(match &self.instances {
            Instances::Pooled { warm: pre, .. } if warm => (&engines.engine, pre),
            Instances::Pooled { cold, .. } => (&engines.cold, cold),
            Instances::Image {
                warm: Some(pre), ..
            } if warm => (
                engines
                    .warm_images
                    .as_ref()
                    .expect("a warm image component comes with its engine"),
                pre,
            ),
            Instances::Image { cold, .. } => (&engines.images, cold.get()?),
        })
    }

    /// Marks this build as replaced: once nothing holds it any more (its
    /// last task ended), `plugin_dropped` is logged and sent on `stream`.
    /// `superseded`: the build replacing it has other content (its
    /// version differs).
    pub(crate) fn retire(&self, stream: broadcast::Sender<LifecycleEvent>, superseded: bool) {
        let _ = self.retired.set(stream);
        if superseded {
            self.superseded
                .store(true, std::sync::atomic::Ordering::Release);
            self.replaced.notify_waiters();
        }
    }

    /// Whether a build with other content replaced this one.
    pub(crate) fn is_replaced(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once a build with other content replaced this one.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: being replaced is a state, a new call sees it.
    pub(crate) async fn replaced(&self) {
        loop {
            let notified = self.replaced.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so a replacement
            // between the two still wakes it.
            notified.as_mut().enable();
            if self.is_replaced() {
                return;
            }
            notified.await;
        }
    }

    /// The `taskhost:plugin` WIT version the component was built against.
    pub fn wit_version(&self) -> &'static str {
        match &self.instances {
            Instances::Pooled { warm, .. } => warm.wit_version(),
            Instances::Image {
                warm: Some(pre), ..
            } => pre.wit_version(),
            Instances::Image { cold, .. } => {
                cold.get().map_or("unknown", FactoriesPre::wit_version)
            }
        }
    }

    /// "a, b, c": for error messages that list what exists.
    pub fn factory_names(&self) -> String {
        let names: Vec<_> = self.factories.iter().map(|f| f.name.as_str()).collect();
        names.join(", ")
    }
}

impl Drop for Plugin {
    /// A replaced build goes when the last task started from it has ended,
    /// wherever that happens: this is the one place that sees it.
    fn drop(&mut self) {
        if let Some(stream) = self.retired.get() {
            let event = LifecycleEvent::PluginDropped {
                plugin: self.name.to_string(),
                version: self.version.to_string(),
            };
            crate::logging::lifecycle(&event);
            let _ = stream.send(event);
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("factories", &self.factories)
            .finish_non_exhaustive()
    }
}
