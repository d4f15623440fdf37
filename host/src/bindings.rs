//! The one place that runs `bindgen!` for the `taskhost:plugin` world.
//!
//! Every import is async (a blocking call suspends only its task) and
//! trappable (the host can end a task from inside a call).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "taskhost:plugin/plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::exports::taskhost::plugin::factories::FactoryInfo;
pub use self::taskhost::plugin::types::{Error as GuestError, Level};
