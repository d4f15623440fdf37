//! A supervised task's restarts (`restart = ...`): whether a run that
//! ended is started again, after how long, and when to give up.
//!
//! The bounds are [`RestartPolicy`]'s: the wait doubles from `initial` to
//! `max` over a streak of restarts and starts over once a run lasted
//! `max` (Kubernetes' crash-loop backoff); more than `intensity` restarts
//! within `period` end the task `failed` (an OTP supervisor's intensity).
//! The window holds at most `intensity` instants, so a task's supervision
//! is bounded by its policy, not by how long it lives.

use crate::config::{RestartPolicy, RestartWhen};
use crate::task::Outcome;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What comes after a supervised task's run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// It is not restarted: it ends with the run's outcome.
    End,
    /// Restart `number` (1 for the first) starts after `delay`.
    Restart { number: u32, delay: Duration },
    /// It would be restarted more often than its intensity allows: it
    /// ends failed with `error`.
    GiveUp { error: String },
}

/// One task's restarts so far.
pub(crate) struct Supervisor {
    policy: RestartPolicy,
    /// When the restarts within the last `period` were decided, oldest
    /// first; at most `intensity` of them.
    recent: VecDeque<Instant>,
    /// Restarts since the last run that lasted `max`: what the wait
    /// doubles with.
    streak: u32,
    /// Restarts in all.
    restarts: u32,
}

impl Supervisor {
    pub(crate) fn new(policy: RestartPolicy) -> Supervisor {
        Supervisor {
            policy,
            recent: VecDeque::new(),
            streak: 0,
            restarts: 0,
        }
    }

    /// Decides after a run that ended with `outcome` at `now`, having run
    /// for `ran`. `restartable` is false for a run that was cancelled or
    /// failed in a way a restart would repeat (`Ended::retriable`).
    pub(crate) fn after(
        &mut self,
        outcome: &Outcome,
        restartable: bool,
        ran: Duration,
        now: Instant,
    ) -> Next {
        let wanted = restartable
            && match outcome {
                Outcome::Failed { .. } => true,
                Outcome::Done { .. } => self.policy.when == RestartWhen::Always,
                Outcome::Cancelled { .. } => false,
            };
        if !wanted {
            return Next::End;
        }
        while self
            .recent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= self.policy.period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.intensity as usize {
            let ended = match outcome {
                Outcome::Failed { error } => format!("failed: {error}"),
                _ => "ended done".to_string(),
            };
            return Next::GiveUp {
                error: format!(
                    "restarted {} within {} already, the most `restart.intensity` and \
                     `restart.period` allow ({}): not restarted again. Its last run {ended}",
                    times(self.recent.len()),
                    humantime::format_duration(self.policy.period),
                    self.policy.bound(),
                ),
            };
        }
        self.recent.push_back(now);
        if ran >= self.policy.max {
            self.streak = 0;
        }
        self.streak += 1;
        self.restarts += 1;
        Next::Restart {
            number: self.restarts,
            delay: self.policy.delay(self.streak),
        }
    }
}

fn times(n: usize) -> String {
    match n {
        1 => "once".to_string(),
        n => format!("{n} times"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RestartSpec;

    fn policy(when: &str, intensity: u32) -> RestartPolicy {
        RestartSpec {
            intensity: Some(intensity),
            period: Some("10s".into()),
            initial: Some("100ms".into()),
            max: Some("1s".into()),
            ..RestartSpec::new(when.parse().unwrap())
        }
        .policy()
        .unwrap()
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            error: "boom".into(),
        }
    }

    fn delay(next: Next) -> u128 {
        match next {
            Next::Restart { delay, .. } => delay.as_millis(),
            other => panic!("not a restart: {other:?}"),
        }
    }

    #[test]
    fn waits_double_and_start_over_after_a_healthy_run() {
        let mut supervisor = Supervisor::new(policy("on-failure", 100));
        let start = Instant::now();
        let short = Duration::from_millis(5);
        let waits: Vec<u128> = (0..5)
            .map(|i| {
                let at = start + Duration::from_secs(i);
                delay(supervisor.after(&failed(), true, short, at))
            })
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000]);
        let healthy = supervisor.after(&failed(), true, Duration::from_secs(1), start);
        assert_eq!(
            healthy,
            Next::Restart {
                number: 6,
                delay: Duration::from_millis(100)
            }
        );
    }

    #[test]
    fn past_its_intensity_a_task_gives_up_naming_the_bound() {
        let mut supervisor = Supervisor::new(policy("on-failure", 3));
        let start = Instant::now();
        let run = Duration::from_millis(1);
        for i in 0..3 {
            delay(supervisor.after(&failed(), true, run, start + Duration::from_secs(i)));
        }
        let Next::GiveUp { error } =
            supervisor.after(&failed(), true, run, start + Duration::from_secs(3))
        else {
            panic!("restarted past its intensity");
        };
        assert!(error.contains("3 times within 10s"), "{error}");
        assert!(error.contains("`restart.intensity`"), "{error}");
        assert!(error.contains("failed: boom"), "{error}");
        // Once the oldest restart is older than the period, one more fits.
        let mut supervisor = Supervisor::new(policy("on-failure", 3));
        for i in 0..3 {
            delay(supervisor.after(&failed(), true, run, start + Duration::from_secs(i)));
        }
        delay(supervisor.after(&failed(), true, run, start + Duration::from_secs(10)));
    }

    #[test]
    fn what_is_restarted_follows_when() {
        let done = Outcome::Done { result: "1".into() };
        let cancelled = Outcome::Cancelled {
            stage: crate::task::CancelStage::Cooperative,
        };
        let now = Instant::now();
        let run = Duration::from_millis(1);
        let mut on_failure = Supervisor::new(policy("on-failure", 5));
        assert_eq!(on_failure.after(&done, true, run, now), Next::End);
        assert_eq!(on_failure.after(&failed(), false, run, now), Next::End);
        let mut always = Supervisor::new(policy("always", 5));
        delay(always.after(&done, true, run, now));
        assert_eq!(always.after(&cancelled, false, run, now), Next::End);
        assert_eq!(always.after(&done, false, run, now), Next::End);
    }
}
