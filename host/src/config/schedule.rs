//! `[[schedules]]`: tasks started on a timer (`every = "30s"`) or a cron
//! expression (`cron = "*/5 * * * *"`), named things operators see and
//! steer.
//!
//! [`ScheduleSpec`] is the one serde type of a schedule as written, in
//! app.toml and as the JSON a guest's `add-schedule` passes;
//! [`ScheduleConfig`] is what it means, checked.

use super::{RetryPolicy, RetrySpec};
use anyhow::{Context, Result, bail};
use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The shortest `every` (and the finest a tick can be placed).
pub(super) const MIN_EVERY: Duration = Duration::from_millis(10);

/// Most missed ticks `catch_up = "all"` runs at a start; the rest count
/// as missed.
pub const MAX_CATCH_UP: u64 = 100;

/// A schedule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique among the app's schedules; its tasks are named
    /// `NAME@TIME` (the tick's time, UTC, to the millisecond).
    pub name: String,
    /// In app.toml, required; from a guest, its own plugin by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The factory each run starts.
    pub factory: String,
    /// The period, as humantime text (`"30s"`, `"5m"`, at least 10 ms); ticks
    /// fall on its multiples since the Unix epoch. Exactly one of `every` and
    /// `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// A cron expression of 5 fields, or 6 with seconds first (croner's
    /// syntax). Exactly one of `every` and `cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// An IANA zone (`Europe/Berlin`) the cron fields are read in;
    /// default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The arguments of each run's task, any JSON (null when absent).
    #[serde(default)]
    pub args: serde_json::Value,
    /// Where a tick's task runs; default `any`.
    #[serde(default)]
    pub scope: ScheduleScope,
    /// What a tick does while the previous run goes on; default `skip`.
    #[serde(default)]
    pub overlap: Overlap,
    /// Start each run up to this much later, at random (humantime text, shorter
    /// than `every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// What a start does about the ticks missed while the host was down;
    /// default `none`.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Each run's task retried after a failure, as a task's `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Each run's task is durable: recorded in storage and run to its end
    /// across a crash.
    #[serde(default)]
    pub durable: bool,
    /// Each run's task waits in this queue (`[[queues]]`) until the queue
    /// lets it start (durably, for a durable schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Each run's task's key in its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Each run's task's priority in its queue (-100 to 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

/// Where a tick's task runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleScope {
    /// One task per tick, on one worker (round robin).
    #[default]
    Any,
    /// One task per tick on every worker.
    Worker,
}

/// What a tick does while the schedule's previous run is still going.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Nothing: the tick counts as missed.
    #[default]
    Skip,
    /// Runs once the previous run has ended (ticks that pile up meanwhile
    /// make one run, the others count as missed).
    Queue,
    /// Starts anyway.
    Allow,
}

/// What a start does about the ticks that fell while the host was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Nothing: they count as missed.
    #[default]
    None,
    /// One run at once for all of them.
    One,
    /// One run per missed tick (at most 100; the rest count as missed).
    All,
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub enum When {
    /// At every multiple of the period since the Unix epoch, so ticks fall
    /// at the same times whenever the host started.
    Every(Duration),
    /// At the next time a cron expression matches.
    Cron {
        /// The parsed expression.
        cron: Box<croner::Cron>,
        /// The expression as written, for listings.
        text: String,
        /// The zone its fields are read in (`timezone`, default UTC).
        zone: chrono_tz::Tz,
    },
}

impl When {
    /// The first tick strictly after `after`; none if the expression never
    /// fires again.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match self {
            When::Every(period) => {
                let since = after.duration_since(UNIX_EPOCH).ok()?.as_nanos();
                let period = period.as_nanos();
                let next = (since / period + 1) * period;
                Some(UNIX_EPOCH + Duration::from_nanos(u64::try_from(next).ok()?))
            }
            When::Cron { cron, zone, .. } => {
                // From the whole second: croner keeps the sub-second part
                // of its start, which put ticks at .515 s past the second,
                // different on each host of a cluster.
                let after: DateTime<Utc> = after.into();
                let after = after.with_nanosecond(0).unwrap_or(after);
                let next = cron
                    .find_next_occurrence(&after.with_timezone(zone), false)
                    .ok()?;
                Some(next.with_timezone(&Utc).into())
            }
        }
    }

    /// The next `count` ticks after `after`.
    pub fn upcoming(&self, after: SystemTime, count: usize) -> Vec<SystemTime> {
        let mut ticks = Vec::with_capacity(count);
        let mut from = after;
        while ticks.len() < count {
            let Some(next) = self.next_after(from) else {
                break;
            };
            ticks.push(next);
            from = next;
        }
        ticks
    }

    /// How many ticks fall in (`from`, `to`], and the last of them. A
    /// cron expression is walked tick by tick, so its count stops at `cap`.
    pub fn ticks_between(
        &self,
        from: SystemTime,
        to: SystemTime,
        cap: u64,
    ) -> (u64, Option<SystemTime>) {
        if to <= from {
            return (0, None);
        }
        match self {
            When::Every(period) => {
                let nanos =
                    |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
                let period = period.as_nanos();
                let (first, last) = (nanos(from) / period, nanos(to) / period);
                let count = u64::try_from(last - first).unwrap_or(u64::MAX);
                let at = u64::try_from(last * period)
                    .ok()
                    .map(|n| UNIX_EPOCH + Duration::from_nanos(n));
                (count, at.filter(|_| count > 0))
            }
            When::Cron { .. } => {
                let (mut count, mut last, mut at) = (0, None, from);
                while count < cap {
                    match self.next_after(at) {
                        Some(next) if next <= to => {
                            count += 1;
                            last = Some(next);
                            at = next;
                        }
                        _ => break,
                    }
                }
                (count, last)
            }
        }
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Every(period) => write!(f, "every {}", humantime::format_duration(*period)),
            When::Cron { text, zone, .. } => write!(f, "cron \"{text}\" ({zone})"),
        }
    }
}

/// A checked [`ScheduleSpec`].
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Unique among the app's schedules; its tasks are named `NAME@TICK`.
    pub name: String,
    /// The plugin each run starts from: `plugin` as written, or the guest's
    /// own.
    pub plugin: String,
    /// The factory each run starts.
    pub factory: String,
    /// The arguments as JSON text.
    pub args: String,
    /// When it ticks: `every` or `cron`.
    pub when: When,
    /// Where a tick's task runs.
    pub scope: ScheduleScope,
    /// What a tick does while the previous run goes on.
    pub overlap: Overlap,
    /// The most a tick's run starts late, at random (`jitter`); none: on the
    /// tick. Triggers and catch-ups do not wait.
    pub jitter: Option<Duration>,
    /// What a start does about ticks missed while the host was down.
    pub catch_up: CatchUp,
    /// How each run's task is tried again after failing; none: it is not.
    pub retry: Option<RetryPolicy>,
    /// Each run's task is durable (`durable = true`).
    pub durable: bool,
    /// The queue each run's task waits in, with its key and priority.
    pub queue: Option<super::Placement>,
    /// As written: how a schedule a guest added is stored.
    pub spec: ScheduleSpec,
}

fn duration(what: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("`{what}` = {text:?} is not a duration such as \"30s\" or \"5m\""))
}

impl ScheduleSpec {
    /// Checks it; errors name the field. `plugin` stands in for a missing
    /// `plugin` (a guest's own).
    pub fn checked(&self, default_plugin: Option<&str>) -> Result<ScheduleConfig> {
        check_schedule_name(&self.name)?;
        let plugin = match (&self.plugin, default_plugin) {
            (Some(plugin), _) => plugin.clone(),
            (None, Some(plugin)) => plugin.to_string(),
            (None, None) => bail!("`plugin` is required"),
        };
        if self.factory.is_empty() {
            bail!("`factory` must not be empty");
        }
        let when = match (&self.every, &self.cron) {
            (Some(every), None) => {
                if self.timezone.is_some() {
                    bail!("`timezone` is for `cron`; `every` ticks by the clock, in no zone");
                }
                let period = duration("every", every)?;
                if period < MIN_EVERY {
                    bail!("`every` = {every:?} is shorter than the shortest period, 10ms");
                }
                When::Every(period)
            }
            (None, Some(text)) => {
                let cron = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Optional)
                    .year(croner::parser::Year::Disallowed)
                    .build()
                    .parse(text)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "`cron` = {text:?} is not a cron expression of 5 fields (minute \
                             hour day month weekday) or 6 (seconds first): {e}"
                        )
                    })?;
                let zone = match &self.timezone {
                    None => chrono_tz::UTC,
                    Some(name) => name.parse().map_err(|_| {
                        anyhow::anyhow!(
                            "`timezone` = {name:?} is not an IANA time zone such as \
                             \"Europe/Berlin\" or \"UTC\""
                        )
                    })?,
                };
                When::Cron {
                    cron: Box::new(cron),
                    text: text.clone(),
                    zone,
                }
            }
            (Some(_), Some(_)) => bail!("give `every` or `cron`, not both"),
            (None, None) => {
                bail!("give `every` (such as \"30s\") or `cron` (such as \"*/5 * * * *\")")
            }
        };
        let jitter = self
            .jitter
            .as_deref()
            .map(|text| duration("jitter", text))
            .transpose()?;
        if let (Some(jitter), When::Every(period)) = (jitter, &when)
            && jitter >= *period
        {
            bail!("`jitter` ({jitter:?}) must be shorter than `every` ({period:?})");
        }
        let retry = self
            .retry
            .as_ref()
            .map(RetrySpec::policy)
            .transpose()
            .context("`retry`")?;
        let queue = super::QueueOptions {
            queue: self.queue.as_deref(),
            key: self.key.as_deref(),
            priority: self.priority,
            delay: None,
            run_at: None,
        }
        .placement()
        .map_err(anyhow::Error::msg)?;
        Ok(ScheduleConfig {
            name: self.name.clone(),
            plugin,
            factory: self.factory.clone(),
            args: self.args.to_string(),
            when,
            scope: self.scope,
            overlap: self.overlap,
            jitter,
            catch_up: self.catch_up,
            retry,
            durable: self.durable,
            queue,
            spec: self.clone(),
        })
    }
}

/// A schedule's name: it is part of its tasks' names and of API paths.
fn check_schedule_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        bail!(
            "`name` = {name:?}: a schedule name is 1 to 64 ASCII letters, digits, `-`, `_` \
             and `.` (not first)"
        );
    }
    Ok(())
}

/// A tick's time as task names and listings show it: RFC 3339, UTC, to
/// the millisecond.
pub fn tick_label(at: SystemTime) -> String {
    DateTime::<Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<ScheduleConfig> {
        toml::from_str::<ScheduleSpec>(text)?.checked(Some("p"))
    }

    fn at(text: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
            .into()
    }

    #[test]
    fn every_ticks_on_multiples_of_its_period() {
        let when = spec("name = \"s\"\nfactory = \"f\"\nevery = \"200ms\"")
            .unwrap()
            .when;
        let ticks: Vec<String> = when
            .upcoming(at("2026-12-01T10:00:00.150Z"), 3)
            .into_iter()
            .map(tick_label)
            .collect();
        assert_eq!(
            ticks,
            [
                "2026-12-01T10:00:00.200Z",
                "2026-12-01T10:00:00.400Z",
                "2026-12-01T10:00:00.600Z"
            ]
        );
        let (count, last) = when.ticks_between(
            at("2026-12-01T10:00:00Z"),
            at("2026-12-01T10:00:01.100Z"),
            100,
        );
        assert_eq!(
            (count, last.map(tick_label)),
            (5, Some("2026-12-01T10:00:01.000Z".into()))
        );
        let (count, _) =
            when.ticks_between(at("2026-12-01T10:00:00Z"), at("2026-12-01T11:00:00Z"), 100);
        assert_eq!(count, 18_000);
    }

    #[test]
    fn cron_follows_its_time_zone_across_a_clock_change() {
        // Weekdays 09:30 in Berlin; summer time starts on Sunday 29 March.
        let when = spec(
            "name = \"s\"\nfactory = \"f\"\ncron = \"30 9 * * MON-FRI\"\n\
             timezone = \"Europe/Berlin\"",
        )
        .unwrap()
        .when;
        let ticks: Vec<String> = when
            .upcoming(at("2026-03-27T00:00:00Z"), 3)
            .into_iter()
            .map(tick_label)
            .collect();
        assert_eq!(
            ticks,
            [
                "2026-03-27T08:30:00.000Z",
                "2026-03-30T07:30:00.000Z",
                "2026-03-31T07:30:00.000Z"
            ]
        );
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let error = |text: &str| format!("{:#}", spec(text).unwrap_err());
        let base = "name = \"s\"\nfactory = \"f\"\n";
        assert!(error(base).contains("`every`"));
        assert!(error(&format!("{base}every = \"1s\"\ncron = \"* * * * *\"")).contains("not both"));
        assert!(error(&format!("{base}every = \"1ms\"")).contains("10ms"));
        assert!(error(&format!("{base}cron = \"61 * * * *\"")).contains("`cron`"));
        assert!(error(&format!("{base}cron = \"* * * * * * *\"")).contains("`cron`"));
        assert!(
            error(&format!(
                "{base}cron = \"* * * * *\"\ntimezone = \"Mars/Base\""
            ))
            .contains("`timezone`")
        );
        assert!(error(&format!("{base}every = \"1s\"\njitter = \"2s\"")).contains("`jitter`"));
        assert!(error(&format!("{base}every = \"1s\"\noverlap = \"maybe\"")).contains("overlap"));
    }

    #[test]
    fn a_cron_tick_falls_on_the_whole_second_whenever_it_is_asked() {
        let spec: ScheduleSpec = toml::from_str(
            r#"
            name = "beat"
            plugin = "p"
            factory = "f"
            cron = "* * * * * *"
            "#,
        )
        .unwrap();
        let config = spec.checked(None).unwrap();
        let asked = UNIX_EPOCH + Duration::from_millis(1_700_000_000_515);
        let next = config.when.next_after(asked).unwrap();
        assert_eq!(next, UNIX_EPOCH + Duration::from_secs(1_700_000_001));
    }
}
