//! `restart = "on-failure"`, or `restart = { when = "always", intensity = 5,
//! period = "1m", initial = "1s", max = "1m" }`: a supervised task, started
//! again when it ends, the way an Erlang/OTP supervisor restarts a child.
//!
//! Two bounds keep a broken task from spinning:
//! - **backoff**, as Kubernetes' crash-loop backoff: the wait before a
//!   restart doubles from `initial` to `max`, and starts over from
//!   `initial` once a run has lasted `max` or longer (it was healthy);
//! - **intensity**, as OTP: at most `intensity` restarts within `period`.
//!   One more and the task ends `failed`, saying so, instead of
//!   restarting.
//!
//! [`RestartSpec`] is the one serde type of it, in app.toml, the control
//! API's `POST /v1/tasks` and (as WIT `restart-policy`) a guest's
//! `task-options`; [`RestartPolicy`] is what it means, checked.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most restarts `intensity` may allow within a `period`.
pub const MAX_INTENSITY: u32 = 10_000;

/// Longest `period`, `initial` or `max`: a day.
pub(super) const MAX_RESTART_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Defaults: a task that keeps failing at once is restarted after 1 s,
/// 2 s, 4 s, 8 s and 16 s, and its sixth failure, about 31 s after its
/// first, is past the default intensity (5 within 1 min): it ends failed.
/// A task that runs a minute or more between failures restarts for ever,
/// 1 s after each.
pub const DEFAULT_INTENSITY: u32 = 5;
const DEFAULT_PERIOD: Duration = Duration::from_secs(60);
const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_MAX: Duration = Duration::from_secs(60);

/// When an ended task is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartWhen {
    /// Whenever it ends on its own, done or failed.
    Always,
    /// When it fails (after its `retry` attempts, if any).
    OnFailure,
}

impl RestartWhen {
    /// Its name in app.toml and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartWhen::Always => "always",
            RestartWhen::OnFailure => "on-failure",
        }
    }
}

impl std::str::FromStr for RestartWhen {
    type Err = String;

    fn from_str(text: &str) -> Result<RestartWhen, String> {
        match text {
            "always" => Ok(RestartWhen::Always),
            "on-failure" => Ok(RestartWhen::OnFailure),
            other => Err(format!(
                "unknown restart {other:?}: use \"always\" or \"on-failure\""
            )),
        }
    }
}

/// A restart policy as written: `"always"`, `"on-failure"`, or a table
/// with `when` and any of the bounds (durations as text: `"200ms"`,
/// `"1m"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartSpec {
    /// When it is restarted.
    pub when: RestartWhen,
    /// Most restarts within `period` (default 5; at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intensity: Option<u32>,
    /// The window `intensity` counts restarts in (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// The wait before the first restart (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// The longest wait (default 1m); a run this long resets the wait to
    /// `initial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// The table form, strict about its keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartTable {
    when: RestartWhen,
    intensity: Option<u32>,
    period: Option<String>,
    initial: Option<String>,
    max: Option<String>,
}

impl<'de> Deserialize<'de> for RestartSpec {
    /// A string or a table, with serde's own error for each (an untagged
    /// enum would say only that neither matched).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RestartSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "\"always\", \"on-failure\", or a table such as { when = \"on-failure\", \
                     intensity = 5, period = \"1m\", initial = \"1s\", max = \"1m\" }",
                )
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RestartSpec, E> {
                Ok(RestartSpec::new(text.parse().map_err(E::custom)?))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RestartSpec, A::Error> {
                let table =
                    RestartTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RestartSpec {
                    when: table.when,
                    intensity: table.intensity,
                    period: table.period,
                    initial: table.initial,
                    max: table.max,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A checked [`RestartSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// When it is restarted.
    pub when: RestartWhen,
    /// Most restarts within `period`: 1 to [`MAX_INTENSITY`].
    pub intensity: u32,
    /// The window restarts are counted in.
    pub period: Duration,
    /// The wait before the first restart (more than 0).
    pub initial: Duration,
    /// The longest wait, and how long a run must last for the wait to
    /// start over.
    pub max: Duration,
}

fn duration(what: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    let value = match text {
        None => default,
        Some(text) => humantime::parse_duration(text).with_context(|| {
            format!("`{what}` = {text:?} is not a duration such as \"200ms\" or \"1m\"")
        })?,
    };
    if value.is_zero() {
        bail!("`{what}` must be more than 0");
    }
    if value > MAX_RESTART_WAIT {
        bail!("`{what}` ({value:?}) must be at most a day");
    }
    Ok(value)
}

impl RestartSpec {
    /// `when` with every bound at its default.
    pub fn new(when: RestartWhen) -> RestartSpec {
        RestartSpec {
            when,
            intensity: None,
            period: None,
            initial: None,
            max: None,
        }
    }

    /// Checks it; errors name the field.
    pub fn policy(&self) -> Result<RestartPolicy> {
        let intensity = self.intensity.unwrap_or(DEFAULT_INTENSITY);
        if intensity == 0 {
            bail!(
                "`intensity` must be at least 1 (restarts allowed within `period`); a task \
                 that must not be restarted needs no `restart`"
            );
        }
        if intensity > MAX_INTENSITY {
            bail!("`intensity` must be at most {MAX_INTENSITY}, got {intensity}");
        }
        let period = duration("period", self.period.as_deref(), DEFAULT_PERIOD)?;
        let initial = duration("initial", self.initial.as_deref(), DEFAULT_INITIAL)?;
        let max = duration("max", self.max.as_deref(), DEFAULT_MAX)?;
        if max < initial {
            bail!("`max` ({max:?}) must not be less than `initial` ({initial:?})");
        }
        if period <= initial {
            bail!(
                "`period` ({period:?}) must be longer than `initial` ({initial:?}): no two \
                 restarts would fall within it, so `intensity` could never stop the task"
            );
        }
        Ok(RestartPolicy {
            when: self.when,
            intensity,
            period,
            initial,
            max,
        })
    }
}

impl RestartPolicy {
    /// The spec that reads back as this policy.
    pub fn spec(&self) -> RestartSpec {
        let text = |d: Duration| Some(humantime::format_duration(d).to_string());
        RestartSpec {
            when: self.when,
            intensity: Some(self.intensity),
            period: text(self.period),
            initial: text(self.initial),
            max: text(self.max),
        }
    }

    /// The wait before restart `streak` (1 for the first after a healthy
    /// run): `initial` doubled for each restart before it, up to `max`.
    pub fn delay(&self, streak: u32) -> Duration {
        let doublings = streak.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// How `intensity` and `period` read in an error: `3 within 1m`.
    pub fn bound(&self) -> String {
        format!(
            "{} within {}",
            self.intensity,
            humantime::format_duration(self.period)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Task {
        restart: RestartSpec,
    }

    fn spec(text: &str) -> Result<RestartPolicy> {
        toml::from_str::<Task>(text)?.restart.policy()
    }

    #[test]
    fn a_word_or_a_table_reads_as_a_policy() {
        let policy = spec("restart = \"on-failure\"").unwrap();
        assert_eq!(policy.when, RestartWhen::OnFailure);
        assert_eq!(policy.intensity, DEFAULT_INTENSITY);
        let policy = spec(
            "restart = { when = \"always\", intensity = 3, period = \"10s\", initial = \
             \"100ms\", max = \"350ms\" }",
        )
        .unwrap();
        assert_eq!(policy.when, RestartWhen::Always);
        assert_eq!(policy.spec().policy().unwrap(), policy);
        let waits: Vec<u128> = (1..=4).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        let json: RestartSpec = serde_json::from_str("\"always\"").unwrap();
        assert_eq!(json, RestartSpec::new(RestartWhen::Always));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let error = |text: &str| format!("{:#}", spec(text).unwrap_err());
        assert!(error("restart = \"sometimes\"").contains("\"always\" or \"on-failure\""));
        assert!(
            error("restart = { when = \"always\", intensity = 0 }").contains("`intensity` must")
        );
        assert!(error("restart = { when = \"always\", period = \"0s\" }").contains("`period`"));
        assert!(
            error("restart = { when = \"always\", initial = \"2s\", max = \"1s\" }")
                .contains("`max`")
        );
        assert!(error("restart = { when = \"always\", every = \"1s\" }").contains("every"));
        assert!(
            error("restart = { when = \"always\", period = \"1s\", initial = \"2s\" }")
                .contains("`period` (1s) must be longer than `initial` (2s)")
        );
        assert!(error("restart = 3").contains("\"on-failure\""));
    }
}
