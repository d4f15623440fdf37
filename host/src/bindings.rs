//! The one place that runs `bindgen!` for the `taskhost:plugin` world: the
//! current version (`wit/plugin.wit`, 0.5.0) and every older one the host
//! still runs ([`v0_4`], [`v0_3`], [`v0_2`], [`v0_1`]), with [`FactoriesPre`] and [`Factories`] calling a
//! plugin's exports whichever version it was built against.
//!
//! Every import is async (a blocking call suspends only its task) and
//! trappable (the host can end a task from inside a call). The
//! `wasi:keyvalue` resources stay opaque here (`pub enum Bucket {}`): the
//! keyvalue interface keeps what a handle stands for in the store's table.

// What `bindgen!` generates carries the WIT's docs where the WIT has them;
// the rest (methods, `add_to_linker`, some fields) cannot be given one, and
// a lint attribute on the macro call is ignored. They are public only
// through the hidden `bench` module; this file's own items are pub(crate).
#![allow(missing_docs)]

use wasmtime::AsContextMut;
use wasmtime::component::InstancePre;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "taskhost:plugin/plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

/// An older version, from its pinned copy in `wit/compat/`, whose
/// `types`, `wasi:keyvalue` and `wasi:config` are the current ones: a
/// version after it changed only `app` (and `connections` by version).
macro_rules! only_app_older {
    ($(#[$doc:meta])* $module:ident, $path:literal) => {
        $(#[$doc])*
        pub(crate) mod $module {
            wasmtime::component::bindgen!({
                path: $path,
                world: "taskhost:plugin/plugin",
                imports: { default: async | trappable },
                exports: { default: async },
                with: {
                    "taskhost:plugin/types": crate::bindings::taskhost::plugin::types,
                    "wasi:keyvalue": crate::bindings::wasi::keyvalue,
                    "wasi:config": crate::bindings::wasi::config,
                },
            });
        }
    };
}

only_app_older!(
    /// `taskhost:plugin@0.4.0` (0.5.0 added `task-options.restart`).
    v0_4,
    "../wit/compat/0.4.0"
);
only_app_older!(
    /// `taskhost:plugin@0.3.0` (0.4.0 added joins and `task-options.child`).
    v0_3,
    "../wit/compat/0.3.0"
);

/// `taskhost:plugin@0.2.0`, from the pinned copy in `wit/compat/0.2.0`:
/// its own `types` ([`v0_2_types`]); `wasi:keyvalue` and `wasi:config` are
/// the current ones, unchanged.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/0.2.0",
        world: "taskhost:plugin/plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "taskhost:plugin/types": crate::bindings::v0_2_types,
            "wasi:keyvalue": crate::bindings::wasi::keyvalue,
            "wasi:config": crate::bindings::wasi::config,
        },
    });
}

/// `taskhost:plugin@0.1.0`, from the pinned copy in `wit/compat/0.1.0`.
/// Its `types` are 0.2.0's ([`v0_2_types`]), so one `app` implementation
/// serves both, converting only a task's listing.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/compat/0.1.0",
        world: "taskhost:plugin/plugin",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "taskhost:plugin/types": crate::bindings::v0_2_types },
    });
}

/// The `types` of `taskhost:plugin@0.1.0` and 0.2.0, for the plugins
/// built against them: the current types, except a task's listing
/// (`task-state`, `task-info`), written out here in its 0.2.0 shape so the
/// current one may grow (bindgen's `with:` maps whole interfaces, and a
/// component's types are checked by shape, names and order included).
/// A current task-info comes in through `From`.
#[allow(unreachable_pub)] // public only because bindgen's `with:` re-exports it
pub mod v0_2_types {
    // Public as bindgen's `with:` re-exports it; what the types interface
    // links (an empty `Host`) is the current one's.
    pub use super::taskhost::plugin::types::{
        CancelStage, Error, FactoryInfo, Host, HostWithStore, Level, add_to_linker,
    };
    use wasmtime::component::{ComponentType, Lift, Lower};

    /// `task-state` as 0.2.0 has it.
    #[derive(ComponentType, Lift, Lower, Clone, Copy, Debug, PartialEq, Eq)]
    #[component(enum)]
    #[repr(u8)]
    pub enum TaskState {
        #[component(name = "pending")]
        Pending,
        #[component(name = "running")]
        Running,
        #[component(name = "done")]
        Done,
        #[component(name = "failed")]
        Failed,
        #[component(name = "cancelled")]
        Cancelled,
    }

    /// `task-info` as 0.2.0 has it.
    #[derive(ComponentType, Lift, Lower, Clone, Debug, PartialEq, Eq)]
    #[component(record)]
    pub struct TaskInfo {
        #[component(name = "id")]
        pub id: u64,
        #[component(name = "name")]
        pub name: Option<String>,
        #[component(name = "plugin")]
        pub plugin: String,
        #[component(name = "plugin-version")]
        pub plugin_version: String,
        #[component(name = "factory")]
        pub factory: String,
        #[component(name = "worker")]
        pub worker: Option<u32>,
        #[component(name = "state")]
        pub state: TaskState,
        #[component(name = "created-at-ms")]
        pub created_at_ms: u64,
        #[component(name = "started-at-ms")]
        pub started_at_ms: Option<u64>,
        #[component(name = "ended-at-ms")]
        pub ended_at_ms: Option<u64>,
        #[component(name = "result")]
        pub result: Option<String>,
        #[component(name = "error")]
        pub error: Option<String>,
        #[component(name = "cancel-stage")]
        pub cancel_stage: Option<CancelStage>,
    }

    impl From<super::taskhost::plugin::types::TaskInfo> for TaskInfo {
        fn from(info: super::taskhost::plugin::types::TaskInfo) -> TaskInfo {
            use super::taskhost::plugin::types::TaskState as Now;
            TaskInfo {
                id: info.id,
                name: info.name,
                plugin: info.plugin,
                plugin_version: info.plugin_version,
                factory: info.factory,
                worker: info.worker,
                state: match info.state {
                    // 0.2.0 has no `queued`: registered, not yet running.
                    Now::Queued | Now::Pending => TaskState::Pending,
                    Now::Running => TaskState::Running,
                    Now::Done => TaskState::Done,
                    Now::Failed => TaskState::Failed,
                    Now::Cancelled => TaskState::Cancelled,
                },
                created_at_ms: info.created_at_ms,
                started_at_ms: info.started_at_ms,
                ended_at_ms: info.ended_at_ms,
                result: info.result,
                error: info.error,
                cancel_stage: info.cancel_stage,
            }
        }
    }
}

use self::exports::taskhost::plugin::factories::FactoryInfo;

/// A plugin linked and ready to instantiate, by the WIT version its
/// `factories` export has.
pub(crate) enum FactoriesPre<T: 'static> {
    Current(PluginPre<T>),
    V0_4(v0_4::PluginPre<T>),
    V0_3(v0_3::PluginPre<T>),
    V0_2(v0_2::PluginPre<T>),
    V0_1(v0_1::PluginPre<T>),
}

impl<T: Send + 'static> FactoriesPre<T> {
    /// Finds the `factories` export, of the current version or an older
    /// one; the error is the current version's (what to build against).
    pub(crate) fn new(pre: InstancePre<T>) -> wasmtime::Result<FactoriesPre<T>> {
        match PluginPre::new(pre.clone()) {
            Ok(current) => Ok(FactoriesPre::Current(current)),
            Err(error) => {
                if let Ok(old) = v0_4::PluginPre::new(pre.clone()) {
                    Ok(FactoriesPre::V0_4(old))
                } else if let Ok(old) = v0_3::PluginPre::new(pre.clone()) {
                    Ok(FactoriesPre::V0_3(old))
                } else if let Ok(old) = v0_2::PluginPre::new(pre.clone()) {
                    Ok(FactoriesPre::V0_2(old))
                } else if let Ok(old) = v0_1::PluginPre::new(pre) {
                    Ok(FactoriesPre::V0_1(old))
                } else {
                    Err(error)
                }
            }
        }
    }

    /// The `taskhost:plugin` version the plugin was built against.
    pub(crate) fn wit_version(&self) -> &'static str {
        match self {
            FactoriesPre::Current(_) => "0.5.0",
            FactoriesPre::V0_4(_) => "0.4.0",
            FactoriesPre::V0_3(_) => "0.3.0",
            FactoriesPre::V0_2(_) => "0.2.0",
            FactoriesPre::V0_1(_) => "0.1.0",
        }
    }

    pub(crate) async fn instantiate_async(
        &self,
        store: impl AsContextMut<Data = T>,
    ) -> wasmtime::Result<Factories> {
        Ok(match self {
            FactoriesPre::Current(pre) => Factories::Current(pre.instantiate_async(store).await?),
            FactoriesPre::V0_4(pre) => Factories::V0_4(pre.instantiate_async(store).await?),
            FactoriesPre::V0_3(pre) => Factories::V0_3(pre.instantiate_async(store).await?),
            FactoriesPre::V0_2(pre) => Factories::V0_2(pre.instantiate_async(store).await?),
            FactoriesPre::V0_1(pre) => Factories::V0_1(pre.instantiate_async(store).await?),
        })
    }
}

/// One instance's `factories` export, of either version.
pub(crate) enum Factories {
    Current(Plugin),
    V0_4(v0_4::Plugin),
    V0_3(v0_3::Plugin),
    V0_2(v0_2::Plugin),
    V0_1(v0_1::Plugin),
}

impl Factories {
    pub(crate) async fn call_list_factories<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
    ) -> wasmtime::Result<Vec<FactoryInfo>> {
        match self {
            Factories::Current(p) => {
                p.taskhost_plugin_factories()
                    .call_list_factories(store)
                    .await
            }
            Factories::V0_4(p) => {
                p.taskhost_plugin_factories()
                    .call_list_factories(store)
                    .await
            }
            Factories::V0_3(p) => {
                p.taskhost_plugin_factories()
                    .call_list_factories(store)
                    .await
            }
            Factories::V0_2(p) => {
                p.taskhost_plugin_factories()
                    .call_list_factories(store)
                    .await
            }
            Factories::V0_1(p) => {
                p.taskhost_plugin_factories()
                    .call_list_factories(store)
                    .await
            }
        }
    }

    pub(crate) async fn call_check<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        factory: &str,
        args: &str,
    ) -> wasmtime::Result<Result<(), GuestError>> {
        match self {
            Factories::Current(p) => {
                p.taskhost_plugin_factories()
                    .call_check(store, factory, args)
                    .await
            }
            Factories::V0_4(p) => {
                p.taskhost_plugin_factories()
                    .call_check(store, factory, args)
                    .await
            }
            Factories::V0_3(p) => {
                p.taskhost_plugin_factories()
                    .call_check(store, factory, args)
                    .await
            }
            Factories::V0_2(p) => {
                p.taskhost_plugin_factories()
                    .call_check(store, factory, args)
                    .await
            }
            Factories::V0_1(p) => {
                p.taskhost_plugin_factories()
                    .call_check(store, factory, args)
                    .await
            }
        }
    }

    pub(crate) async fn call_run<S: AsContextMut<Data: Send>>(
        &self,
        store: S,
        factory: &str,
        args: &str,
    ) -> wasmtime::Result<Result<String, GuestError>> {
        match self {
            Factories::Current(p) => {
                p.taskhost_plugin_factories()
                    .call_run(store, factory, args)
                    .await
            }
            Factories::V0_4(p) => {
                p.taskhost_plugin_factories()
                    .call_run(store, factory, args)
                    .await
            }
            Factories::V0_3(p) => {
                p.taskhost_plugin_factories()
                    .call_run(store, factory, args)
                    .await
            }
            Factories::V0_2(p) => {
                p.taskhost_plugin_factories()
                    .call_run(store, factory, args)
                    .await
            }
            Factories::V0_1(p) => {
                p.taskhost_plugin_factories()
                    .call_run(store, factory, args)
                    .await
            }
        }
    }
}

pub(crate) use self::taskhost::plugin::types::{Error as GuestError, Level};

/// A guest error as one line of text, for logs and API errors.
pub(crate) fn describe(error: &GuestError) -> String {
    match error {
        GuestError::Cancelled => "returned `cancelled` without being cancelled".into(),
        GuestError::UnknownFactory(name) => format!("unknown factory `{name}`"),
        GuestError::InvalidArgs(message) | GuestError::Failed(message) => message.clone(),
        GuestError::NotFound(name) => format!("no task named `{name}`"),
        GuestError::DuplicateName(name) => format!("a task named `{name}` already exists"),
        GuestError::UnknownPlugin(name) => format!("no plugin named `{name}`"),
        GuestError::Limit(message) => message.clone(),
    }
}
