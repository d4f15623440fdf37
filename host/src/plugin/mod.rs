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
use crate::lifecycle::LifecycleEvent;
use crate::store::TaskData;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokio::sync::broadcast;

pub use crate::config::MAX_COMPONENT_BYTES;
pub use load::{LoadError, PluginLoader, read_component};

/// One factory a plugin offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Factory {
    pub name: String,
    pub description: String,
}

/// A loaded plugin, ready to start tasks from.
pub struct Plugin {
    pub name: String,
    /// The component file it was loaded from.
    pub path: PathBuf,
    /// `sha256:` + the first 12 hex digits of the file's hash: tells two
    /// builds apart in logs and listings.
    pub version: String,
    pub factories: Vec<Factory>,
    /// Instantiates on the warm engine.
    pre: FactoriesPre<TaskData>,
    /// Instantiates on the cold engine.
    cold: FactoriesPre<TaskData>,
    /// Set once a newer build replaced this one: where to announce that its
    /// last task ended (see [`Plugin::retire`]).
    retired: OnceLock<broadcast::Sender<LifecycleEvent>>,
}

impl Plugin {
    pub fn factory(&self, name: &str) -> Option<&Factory> {
        self.factories.iter().find(|f| f.name == name)
    }

    /// The pre-instantiated component of the warm engine, or the cold.
    pub(crate) fn pre_for(&self, warm: bool) -> &FactoriesPre<TaskData> {
        if warm { &self.pre } else { &self.cold }
    }

    /// Marks this build as replaced: once nothing holds it any more (its
    /// last task ended), `plugin_dropped` is logged and sent on `stream`.
    pub(crate) fn retire(&self, stream: broadcast::Sender<LifecycleEvent>) {
        let _ = self.retired.set(stream);
    }

    /// The `taskhost:plugin` WIT version the component was built against.
    pub fn wit_version(&self) -> &'static str {
        self.pre.wit_version()
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
                plugin: self.name.clone(),
                version: self.version.clone(),
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
