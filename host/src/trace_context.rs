//! W3C trace context (`traceparent`, <https://www.w3.org/TR/trace-context/>):
//! how a task knows which trace it belongs to and which span started it,
//! so its span, its outbound calls' spans and its child tasks' spans join
//! the trace of the webhook request (or API call, or parent task) that
//! started it. The vocabulary only; `crate::telemetry` exports the spans.

/// A `traceparent`: a trace, the span in it that is the parent of what
/// comes next, and whether the trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace's id (16 bytes, never all zero).
    pub trace_id: [u8; 16],
    /// The parent span's id (8 bytes, never all zero).
    pub span_id: [u8; 8],
    /// Whether spans of this trace are recorded (the `sampled` flag).
    pub sampled: bool,
}

fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TraceParent {
    /// Reads a `traceparent` header: `00-<32 hex>-<16 hex>-<2 hex>`. A
    /// later version's header is read by its first four fields, as the
    /// spec asks; anything malformed (or all-zero ids) is none.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let header = header.trim();
        let mut fields = header.split('-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        if version.len() != 2 || version == "ff" || !version.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        if version == "00" && fields.next().is_some() {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flag = [0u8; 1];
        hex_into(trace, &mut trace_id)?;
        hex_into(span, &mut span_id)?;
        hex_into(flags, &mut flag)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flag[0] & 1 == 1,
        })
    }

    /// The header that names this span as the parent.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The trace id as 32 hex digits.
    pub fn trace_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// A task's place in its trace: its own span, and the span it started
/// under (none: it began the trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTrace {
    /// The task's own span; `trace_id` is the trace's.
    pub span: TraceParent,
    /// The span that started the task (a webhook request's caller, the
    /// parent task's span).
    pub parent_span_id: Option<[u8; 8]>,
}

/// 64 random bits: splitmix64 over a per-thread state seeded once from
/// the OS. A getrandom call per id (three per task) cost a system call
/// each on the workers' hot path; ids need to be unique and unguessable
/// enough to tell traces apart, not secret.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            if getrandom::fill(&mut seed).is_err() {
                // No randomness: the time and the thread still differ.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                seed = nanos.to_be_bytes();
            }
            u64::from_be_bytes(seed)
        });
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A fresh span id (random, never all zero).
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = random_u64();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A fresh trace id (random, never all zero).
pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&new_span_id());
    id[8..].copy_from_slice(&new_span_id());
    id
}

impl TaskTrace {
    /// A task's trace: under `parent` (which decided sampling), or a new
    /// trace sampled with probability `sample` (by its id, so every host
    /// decides a trace alike).
    pub fn start(parent: Option<TraceParent>, sample: f64) -> TaskTrace {
        let span_id = new_span_id();
        match parent {
            Some(parent) => TaskTrace {
                span: TraceParent { span_id, ..parent },
                parent_span_id: Some(parent.span_id),
            },
            None => {
                let trace_id = new_trace_id();
                let draw = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
                let sampled = sample >= 1.0 || (draw as f64) < sample * (u64::MAX as f64);
                TaskTrace {
                    span: TraceParent {
                        trace_id,
                        span_id,
                        sampled,
                    },
                    parent_span_id: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_headers_parse_and_print_as_the_spec_has_them() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(header).unwrap();
        assert!(parsed.sampled);
        assert_eq!(parsed.header(), header);
        assert_eq!(parsed.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version with more fields is read by its first four.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_task_joins_its_parents_trace_or_starts_one_sampled_by_ratio() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let child = TaskTrace::start(Some(parent), 1.0);
        assert_eq!(child.span.trace_id, parent.trace_id);
        assert_eq!(child.parent_span_id, Some(parent.span_id));
        assert_ne!(child.span.span_id, parent.span_id);
        // The parent decided: not sampled, whatever the ratio.
        assert!(!child.span.sampled);
        assert!(TaskTrace::start(None, 1.0).span.sampled);
        assert!(!TaskTrace::start(None, 0.0).span.sampled);
        let sampled = (0..2000)
            .filter(|_| TaskTrace::start(None, 0.25).span.sampled)
            .count();
        assert!((300..700).contains(&sampled), "{sampled} of 2000");
    }
}
