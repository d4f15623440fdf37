//! A guest's stdout and stderr, turned into log lines attributed to its task.
//!
//! Plain `println!` in a plugin should not produce anonymous text in the
//! middle of the host's log: each complete line becomes one log line (info
//! for stdout, warn for stderr) with the task's fields.

use crate::bindings::Level;
use crate::logging::LogGate;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// A line longer than this is emitted in pieces, so a guest cannot make the
/// host buffer without bound by never writing a newline.
const MAX_LINE: usize = 16 * 1024;

/// How many of the last lines are kept to explain a crash (a Rust panic
/// message is a few lines long).
const TAIL_LINES: usize = 4;

/// One of a task's output streams. Clones share the pending partial line.
#[derive(Clone)]
pub(crate) struct TaskOutput {
    lines: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    log: Arc<LogGate>,
    level: Level,
    pending: Vec<u8>,
    tail: VecDeque<String>,
}

impl TaskOutput {
    pub(crate) fn stdout(log: Arc<LogGate>) -> TaskOutput {
        Self::new(log, Level::Info)
    }

    pub(crate) fn stderr(log: Arc<LogGate>) -> TaskOutput {
        Self::new(log, Level::Warn)
    }

    fn new(log: Arc<LogGate>, level: Level) -> TaskOutput {
        TaskOutput {
            lines: Arc::new(Mutex::new(LineBuffer {
                log,
                level,
                pending: Vec::new(),
                tail: VecDeque::new(),
            })),
        }
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, LineBuffer> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_bytes(&self, bytes: &[u8]) {
        self.buffer().push(bytes);
    }

    /// The last few lines written, including an unfinished one.
    pub(crate) fn tail(&self) -> Vec<String> {
        let buffer = self.buffer();
        let mut lines: Vec<String> = buffer.tail.iter().cloned().collect();
        if !buffer.pending.is_empty() {
            lines.push(String::from_utf8_lossy(&buffer.pending).into_owned());
        }
        lines
    }
}

impl LineBuffer {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&bytes[..newline]);
            self.emit();
            bytes = &bytes[newline + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.pending);
        let line = text.strip_suffix('\r').unwrap_or(&text).to_string();
        self.log.line(self.level, &line);
        self.pending.clear();
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

impl Drop for LineBuffer {
    /// The task ended mid-line: what it wrote still deserves a log line.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for TaskOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TaskOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for TaskOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TaskOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TaskOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
