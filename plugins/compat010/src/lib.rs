//! A plugin as it was built before `taskhost:plugin@0.2.0`: bound straight
//! to the pinned copy of the 0.1.0 WIT, so the host's support for older
//! plugins is tested against a real 0.1.0 component.

wit_bindgen::generate!({
    path: "../../wit/compat/0.1.0",
    world: "taskhost:plugin/plugin",
});

use exports::taskhost::plugin::factories::Guest;
use taskhost::plugin::app;
use taskhost::plugin::types::{Error, FactoryInfo, Level, TaskState};

struct Compat;

impl Guest for Compat {
    fn list_factories() -> Vec<FactoryInfo> {
        vec![
            FactoryInfo {
                name: "hello".into(),
                description: "Says hello with the app's name and a [config] value".into(),
            },
            FactoryInfo {
                name: "sleeper".into(),
                description: "Sleeps until cancelled, then cleans up".into(),
            },
            FactoryInfo {
                name: "observe".into(),
                description: "Returns the state of the task named in its args, as get-task and \
                              tasks see it"
                    .into(),
            },
        ]
    }

    fn check(factory: String, _args: String) -> Result<(), Error> {
        match factory.as_str() {
            "hello" | "sleeper" | "observe" => Ok(()),
            _ => Err(Error::UnknownFactory(factory)),
        }
    }

    fn run(factory: String, args: String) -> Result<String, Error> {
        match factory.as_str() {
            "hello" => {
                let who = app::config("who").unwrap_or_else(|| "null".into());
                app::log(Level::Info, "hello from 0.1.0");
                Ok(format!(
                    "{{\"app\":\"{}\",\"who\":{who},\"worker\":{}}}",
                    app::name(),
                    app::worker().map_or("null".to_string(), |w| w.to_string())
                ))
            }
            "sleeper" => loop {
                app::log(Level::Info, "0.1.0 sleeping");
                if let Err(error) = app::sleep(60_000) {
                    app::log(Level::Info, "0.1.0 cleanup ran");
                    return Err(error);
                }
            },
            "observe" => {
                let name = args.trim().trim_matches('"').to_string();
                let state = |state: TaskState| match state {
                    TaskState::Pending => "pending",
                    TaskState::Running => "running",
                    TaskState::Done => "done",
                    TaskState::Failed => "failed",
                    TaskState::Cancelled => "cancelled",
                };
                let got = app::get_task(&name)?;
                let listed = app::tasks()
                    .into_iter()
                    .find(|t| t.name.as_deref() == Some(name.as_str()))
                    .map(|t| state(t.state))
                    .unwrap_or("absent");
                Ok(format!(
                    "{{\"get\":\"{}\",\"listed\":\"{listed}\",\"plugin_version\":\"{}\"}}",
                    state(got.state),
                    got.plugin_version
                ))
            }
            _ => Err(Error::UnknownFactory(factory)),
        }
    }
}

export!(Compat);
