//! Write taskhost plugins as plain Rust functions.
//!
//! A plugin is a set of *task factories*. Each factory is an ordinary function
//! whose first parameter is the [`App`] handle (what Sanic injects as `app`)
//! and whose other parameters are the task's arguments, decoded from the JSON
//! `args` of `app.toml` or of `add_task` by name:
//!
//! ```no_run
//! use taskhost_guest_sdk::{plugin, App, Result};
//!
//! plugin! {
//!     /// Sleeps a little, then says so.
//!     fn slow_work(app: &App) -> Result<()> {
//!         app.sleep(100)?;
//!         app.info("slow work done");
//!         Ok(())
//!     }
//!
//!     /// Sleeps `num` times.
//!     fn even_slower(app: &App, num: u32) -> Result<u32> {
//!         for _ in 0..num {
//!             app.sleep(100)?;
//!         }
//!         Ok(num)
//!     }
//! }
//! ```
//!
//! The first line of each doc comment becomes the factory's description.
//! Argument types are anything serde can decode; a missing `Option<T>`
//! argument is `None`. A factory returns `Result<T>` for any serializable `T`;
//! the host records `T` as the task's result (JSON text).
//!
//! Host calls that can block ([`App::sleep`]) fail with a cancelled [`Error`]
//! when the task is being cancelled: let it travel up with `?` so cleanup
//! code on the way runs, like Python's `CancelledError`.

#[doc(hidden)]
pub mod __private;
mod app;
mod connection;
mod error;
mod http;
mod kv;
mod task;
mod variables;

pub use app::{App, Level, NewTask, Placed, Restart, Retry, TaskRef};
pub use connection::{Connection, Message, Request};
pub use error::{Error, ErrorKind, Result};
pub use http::{Http, Response};
pub use kv::Bucket;
pub use task::{CancelStage, TaskInfo, TaskState};

/// Declares a plugin's task factories and exports them to the host.
///
/// Use it once per plugin crate, around the factory functions themselves.
/// Each function must have the shape
/// `fn NAME(app: &App, ARG: TYPE, ...) -> Result<T>`; its name is the factory
/// name and its arguments are decoded from the task's JSON arguments by name
/// (unknown fields are rejected, so a typo in app.toml is caught).
#[macro_export]
macro_rules! plugin {
    ($(
        $(#[$($attr:tt)*])*
        $vis:vis fn $name:ident ( $app:ident : &$app_ty:ty $(, $arg:ident : $ty:ty)* $(,)? ) -> $ret:ty $body:block
    )*) => {
        $(
            $(#[$($attr)*])*
            $vis fn $name($app: &$app_ty $(, $arg: $ty)*) -> $ret $body
        )*

        #[doc(hidden)]
        struct __TaskhostPlugin;

        impl $crate::__private::Guest for __TaskhostPlugin {
            fn list_factories() -> ::std::vec::Vec<$crate::__private::FactoryInfo> {
                ::std::vec![$(
                    $crate::__private::factory_info(
                        ::core::stringify!($name),
                        &[$($crate::__doc_line!($($attr)*)),*],
                    )
                ),*]
            }

            fn check(
                factory: ::std::string::String,
                args: ::std::string::String,
            ) -> ::core::result::Result<(), $crate::__private::WitError> {
                match factory.as_str() {
                    $(::core::stringify!($name) => {
                        #[derive($crate::__private::serde::Deserialize)]
                        #[serde(crate = "taskhost_guest_sdk::__private::serde", deny_unknown_fields)]
                        #[allow(dead_code)]
                        struct Args { $($arg: $ty),* }
                        $crate::__private::decode_args::<Args>(::core::stringify!($name), &args)
                            .map(|_| ())
                    })*
                    other => ::core::result::Result::Err($crate::__private::unknown_factory(other)),
                }
            }

            fn run(
                factory: ::std::string::String,
                args: ::std::string::String,
            ) -> ::core::result::Result<::std::string::String, $crate::__private::WitError> {
                match factory.as_str() {
                    $(::core::stringify!($name) => {
                        #[derive($crate::__private::serde::Deserialize)]
                        #[serde(crate = "taskhost_guest_sdk::__private::serde", deny_unknown_fields)]
                        struct Args { $($arg: $ty),* }
                        #[allow(unused_variables)]
                        let Args { $($arg),* } =
                            $crate::__private::decode_args::<Args>(::core::stringify!($name), &args)?;
                        $crate::__private::encode_result($name(&$crate::App::new() $(, $arg)*))
                    })*
                    other => ::core::result::Result::Err($crate::__private::unknown_factory(other)),
                }
            }
        }

        $crate::__private::export!(__TaskhostPlugin with_types_in $crate::__private::bindings);
    };
}

/// Turns one attribute's tokens into its doc text, or "" for other attributes.
#[doc(hidden)]
#[macro_export]
macro_rules! __doc_line {
    (doc = $doc:literal) => {
        $doc
    };
    ($($other:tt)*) => {
        ""
    };
}
