//! `retry = { attempts = 5, backoff = "exponential", initial = "200ms",
//! max = "1m", jitter = true }`: how a failed task is tried again.
//!
//! [`RetrySpec`] is the one serde type of it, in app.toml and in the
//! control API's `POST /v1/tasks`; [`RetryPolicy`] is what it means, checked.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Most attempts a task may be given.
pub(super) const MAX_ATTEMPTS: u32 = 100;

/// Longest wait between attempts: a day. Longer is a schedule's job.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A retry policy as written (durations as text: `"200ms"`, `"1m"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (1 = no retry).
    pub attempts: u32,
    /// How the wait grows: `exponential` (the default) or `fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// The wait after the first failure (default 200ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// The longest wait (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Waits spread over [wait/2, wait] (default true), so tasks that
    /// failed together do not come back together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<bool>,
}

/// How the wait grows between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// Doubles after each failure, up to `max`.
    Exponential,
    /// Always `initial`.
    Fixed,
}

/// A checked [`RetrySpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included: 1 to 100.
    pub attempts: u32,
    /// How the wait grows between attempts.
    pub backoff: Backoff,
    /// The wait after the first failure (default 200 ms, more than 0).
    pub initial: Duration,
    /// The longest wait an exponential backoff reaches (default 1 min, at most
    /// a day).
    pub max: Duration,
    /// Whether each wait is drawn from [wait/2, wait] (default true).
    pub jitter: bool,
}

fn duration(what: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    match text {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text).with_context(|| {
            format!("`{what}` = {text:?} is not a duration such as \"200ms\" or \"1m\"")
        }),
    }
}

impl RetrySpec {
    /// Checks it; errors name the field.
    pub fn policy(&self) -> Result<RetryPolicy> {
        if !(1..=MAX_ATTEMPTS).contains(&self.attempts) {
            bail!(
                "`attempts` must be between 1 and {MAX_ATTEMPTS} (the first attempt included), \
                 got {}",
                self.attempts
            );
        }
        let initial = duration(
            "initial",
            self.initial.as_deref(),
            Duration::from_millis(200),
        )?;
        let max = duration("max", self.max.as_deref(), Duration::from_secs(60))?;
        if initial.is_zero() {
            bail!("`initial` must be more than 0");
        }
        if max < initial {
            bail!("`max` ({max:?}) must not be less than `initial` ({initial:?})");
        }
        if max > MAX_WAIT {
            bail!("`max` ({max:?}) must be at most a day");
        }
        Ok(RetryPolicy {
            attempts: self.attempts,
            backoff: self.backoff.unwrap_or(Backoff::Exponential),
            initial,
            max,
            jitter: self.jitter.unwrap_or(true),
        })
    }
}

impl RetryPolicy {
    /// The spec that reads back as this policy (how a durable task's
    /// policy is stored).
    pub fn spec(&self) -> RetrySpec {
        let text = |d: Duration| humantime::format_duration(d).to_string();
        RetrySpec {
            attempts: self.attempts,
            backoff: Some(self.backoff),
            initial: Some(text(self.initial)),
            max: Some(text(self.max)),
            jitter: Some(self.jitter),
        }
    }

    /// The wait after attempt `failed` (1 for the first) failed, before
    /// any jitter.
    pub fn base_delay(&self, failed: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed => self.initial,
            Backoff::Exponential => {
                let doublings = failed.saturating_sub(1).min(32);
                self.initial
                    .saturating_mul(1u32 << doublings.min(31))
                    .min(self.max)
            }
        }
    }

    /// The wait after attempt `failed`, jittered by `random` (any u64).
    pub fn delay(&self, failed: u32, random: u64) -> Duration {
        let base = self.base_delay(failed);
        if !self.jitter {
            return base;
        }
        // Uniform in [base/2, base].
        let half = base / 2;
        let spread = (base - half).as_nanos().min(u64::MAX as u128) as u64;
        half + Duration::from_nanos(if spread == 0 {
            0
        } else {
            random % (spread + 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<RetryPolicy> {
        toml::from_str::<RetrySpec>(text)?.policy()
    }

    #[test]
    fn waits_double_up_to_max_and_jitter_stays_within_half() {
        let policy =
            spec("attempts = 5\ninitial = \"100ms\"\nmax = \"350ms\"\njitter = false").unwrap();
        let waits: Vec<u128> = (1..=4).map(|n| policy.delay(n, 0).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        let jittered = RetryPolicy {
            jitter: true,
            ..policy
        };
        for random in [0, 1, u64::MAX / 3, u64::MAX] {
            let wait = jittered.delay(2, random);
            assert!(
                (Duration::from_millis(100)..=Duration::from_millis(200)).contains(&wait),
                "{wait:?}"
            );
        }
    }

    #[test]
    fn a_policy_reads_back_from_its_spec() {
        let policy = spec(
            "attempts = 4\nbackoff = \"fixed\"\ninitial = \"1s 250ms\"\nmax = \"3m\"\njitter = false",
        )
        .unwrap();
        assert_eq!(policy.spec().policy().unwrap(), policy);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let error = |text: &str| spec(text).unwrap_err().to_string();
        assert!(error("attempts = 0").contains("`attempts`"));
        assert!(error("attempts = 2\ninitial = \"soon\"").contains("`initial`"));
        assert!(error("attempts = 2\ninitial = \"2s\"\nmax = \"1s\"").contains("`max`"));
        assert!(error("attempts = 2\nbackoff = \"linear\"").contains("backoff"));
    }
}
