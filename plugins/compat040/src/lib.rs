//! A plugin as it was built against `taskhost:plugin@0.4.0`: bound straight
//! to the pinned copy of the 0.4.0 WIT, so the host's support for older
//! plugins is tested against a real 0.4.0 component. Its factories call
//! what a later WIT may change the shape of: the task listing (`get-task`,
//! `tasks`, `cancel-task`, with the `queued` state), `start-task`'s
//! options (with a placement in a queue and 0.4.0's `child`), 0.4.0's
//! joins and the connections interface.

wit_bindgen::generate!({
    path: "../../wit/compat/0.4.0",
    world: "taskhost:plugin/plugin",
    // The 0.4.0 world imports wasi:keyvalue and wasi:config too; a
    // component keeps only the imports it uses.
    generate_all,
});

use exports::taskhost::plugin::factories::Guest;
use taskhost::plugin::app;
use taskhost::plugin::types::{Error, FactoryInfo, Level, TaskState};

struct Compat;

const FACTORIES: [(&str, &str); 7] = [
    (
        "hello",
        "Says hello with the app's name and a [config] value",
    ),
    ("sleeper", "Sleeps until cancelled, then cleans up"),
    (
        "observe",
        "Returns the state of the task named in its args, as get-task and tasks see it",
    ),
    (
        "spawner",
        "Starts `hello` as task `child` with start-task's options (a retry policy, a queue)",
    ),
    (
        "stopper",
        "Cancels the task named in its args and returns its state",
    ),
    (
        "no_connection",
        "Calls connections.recv on a connection that does not exist",
    ),
    (
        "joiner",
        "Starts `hello` as a child and joins it by name, returning its result",
    ),
];

fn state(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "pending",
        TaskState::Queued => "queued",
        TaskState::Running => "running",
        TaskState::Done => "done",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

/// The task name an `observe` or `stopper` task's args hold: a JSON string.
fn named(args: &str) -> String {
    args.trim().trim_matches('"').to_string()
}

impl Guest for Compat {
    fn list_factories() -> Vec<FactoryInfo> {
        FACTORIES
            .iter()
            .map(|(name, description)| FactoryInfo {
                name: (*name).into(),
                description: (*description).into(),
            })
            .collect()
    }

    fn check(factory: String, _args: String) -> Result<(), Error> {
        match FACTORIES.iter().any(|(name, _)| *name == factory) {
            true => Ok(()),
            false => Err(Error::UnknownFactory(factory)),
        }
    }

    fn run(factory: String, args: String) -> Result<String, Error> {
        match factory.as_str() {
            "hello" => {
                let who = app::config("who").unwrap_or_else(|| "null".into());
                app::log(Level::Info, "hello from 0.4.0");
                Ok(format!(
                    "{{\"app\":\"{}\",\"who\":{who},\"attempt\":{}}}",
                    app::name(),
                    app::attempt()
                ))
            }
            "sleeper" => loop {
                app::log(Level::Info, "0.4.0 sleeping");
                if let Err(error) = app::sleep(60_000) {
                    app::log(Level::Info, "0.4.0 cleanup ran");
                    return Err(error);
                }
            },
            "observe" => {
                let name = named(&args);
                let got = app::get_task(&name)?;
                let listed = app::tasks()
                    .into_iter()
                    .find(|t| t.name.as_deref() == Some(name.as_str()))
                    .map(|t| state(t.state))
                    .unwrap_or("absent");
                Ok(format!(
                    "{{\"get\":\"{}\",\"listed\":\"{listed}\",\"factory\":\"{}\"}}",
                    state(got.state),
                    got.factory
                ))
            }
            "spawner" => {
                let options = app::TaskOptions {
                    name: Some("child".into()),
                    retry: Some(app::RetryPolicy {
                        attempts: 2,
                        initial_ms: 1,
                        max_ms: 10,
                        exponential: false,
                        jitter: false,
                    }),
                    durable: false,
                    idempotency_key: None,
                    placement: Some(app::Placement {
                        queue: "default".into(),
                        key: Some("compat".into()),
                        priority: Some(1),
                        start: None,
                    }),
                    child: false,
                };
                let id = app::start_task(None, "hello", "null", &options)?;
                Ok(format!("{{\"started\":{id}}}"))
            }
            "stopper" => {
                let info = app::cancel_task(&named(&args))?;
                Ok(format!("{{\"state\":\"{}\"}}", state(info.state)))
            }
            "no_connection" => match taskhost::plugin::connections::recv(u64::MAX) {
                Ok(_) => Ok("\"received\"".into()),
                Err(error) => Ok(format!("{:?}", format!("{error:?}"))),
            },
            "joiner" => {
                let options = app::TaskOptions {
                    name: Some("joined".into()),
                    retry: None,
                    durable: false,
                    idempotency_key: None,
                    placement: None,
                    child: true,
                };
                app::start_task(None, "hello", "null", &options)?;
                let info = app::join(&app::TaskRef::Name("joined".into()), Some(60_000))?
                    .ok_or_else(|| Error::Failed("the join timed out".into()))?;
                Ok(info.result.unwrap_or_else(|| "null".into()))
            }
            _ => Err(Error::UnknownFactory(factory)),
        }
    }
}

export!(Compat);
