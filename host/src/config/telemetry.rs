//! `[telemetry]`: where the host sends OpenTelemetry traces (OTLP over
//! HTTP, protobuf), how many it samples, and how it batches them.

use anyhow::{Result, bail};
use serde::Deserialize;
use std::time::Duration;

/// `[telemetry]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP endpoint's base (`http://collector:4318`); spans go
    /// to `<otlp>/v1/traces`.
    pub otlp: String,
    /// The share of new traces recorded, 0 to 1; a trace that came with a
    /// `traceparent` follows its `sampled` flag.
    pub sample: f64,
    /// Spans sent in one request at most.
    pub batch_spans: usize,
    /// How long a span may wait for its batch to fill.
    pub batch_delay: Duration,
    /// Spans waiting to be sent at most; past it new spans are dropped
    /// (counted in `taskhost_trace_spans_dropped_total`), never waited for.
    pub queue_spans: usize,
    /// `service.name` of the spans; default: the app's name.
    pub service_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    otlp: String,
    sample: Option<f64>,
    batch_spans: Option<usize>,
    batch_ms: Option<u64>,
    queue_spans: Option<usize>,
    service_name: Option<String>,
}

impl RawTelemetry {
    pub(super) fn checked(self, file: &str) -> Result<TelemetryConfig> {
        let table = format!("{file}: [telemetry]");
        let otlp = self.otlp.trim_end_matches('/').to_string();
        let Some(rest) = otlp.strip_prefix("http://") else {
            bail!(
                "{table} otlp = {:?}: write the OTLP/HTTP endpoint as http://HOST:PORT (the \
                 collector's HTTP port, 4318 by default; https is not offered yet)",
                self.otlp
            );
        };
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            bail!("{table} otlp = {:?} names no host", self.otlp);
        }
        let sample = self.sample.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample) {
            bail!(
                "{table} sample must be between 0 and 1 (the share of traces kept), got {sample}"
            );
        }
        let batch_spans = self.batch_spans.unwrap_or(512);
        let queue_spans = self.queue_spans.unwrap_or(8192);
        let batch_ms = self.batch_ms.unwrap_or(1000);
        for (key, value) in [
            ("batch_spans", batch_spans as u64),
            ("queue_spans", queue_spans as u64),
            ("batch_ms", batch_ms),
        ] {
            if value == 0 {
                bail!("{table} {key} must be at least 1");
            }
        }
        if queue_spans < batch_spans {
            bail!(
                "{table} queue_spans ({queue_spans}) must hold at least one batch (batch_spans = \
                 {batch_spans})"
            );
        }
        Ok(TelemetryConfig {
            otlp,
            sample,
            batch_spans,
            batch_delay: Duration::from_millis(batch_ms),
            queue_spans,
            service_name: self.service_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml: &str) -> Result<TelemetryConfig> {
        let raw: RawTelemetry = toml::from_str(toml)?;
        raw.checked("app.toml")
    }

    #[test]
    fn defaults_and_refusals_name_the_field() {
        let config = raw(r#"otlp = "http://127.0.0.1:4318/""#).unwrap();
        assert_eq!(config.otlp, "http://127.0.0.1:4318");
        assert_eq!(
            (config.sample, config.batch_spans, config.queue_spans),
            (1.0, 512, 8192)
        );
        for (toml, says) in [
            (r#"otlp = "https://c:4318""#, "http://HOST:PORT"),
            (r#"otlp = "http://""#, "http://HOST:PORT"),
            (r#"otlp = "http:// x""#, "names no host"),
            (
                "otlp = \"http://c\"\nsample = 1.5",
                "sample must be between 0 and 1",
            ),
            (
                "otlp = \"http://c\"\nbatch_spans = 0",
                "batch_spans must be at least 1",
            ),
            (
                "otlp = \"http://c\"\nbatch_spans = 100\nqueue_spans = 10",
                "queue_spans (10)",
            ),
        ] {
            let error = format!("{:#}", raw(toml).unwrap_err());
            assert!(error.contains(says), "{toml}: {error}");
            assert!(error.contains("[telemetry]"), "{error}");
        }
        assert!(raw("otlp = \"http://c\"\nsampel = 1").is_err());
    }
}
