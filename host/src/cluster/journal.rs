//! Journals of a cluster's resuming durable tasks (`durable = "resume"`)
//! on JetStream, so a task handed to another host resumes there from the
//! steps its first host recorded.
//!
//! - The stream `{name}-journal` holds each task's journal on subject
//!   `{name}.journal.{seq}`: one message per commit (the steps the
//!   journal wrote together, `crate::journal`'s group), in order.
//! - An append is published with `Nats-Expected-Last-Subject-Sequence`:
//!   the journal's last message as this host last saw it. So two copies
//!   of one task (a paused host come back, and the host that took its
//!   task over) cannot both extend the journal: the second append fails.
//!   Before that, `DurableQueue` refuses an append from a copy whose
//!   lease lapsed.
//! - A journal is read with an ordered consumer (one flow-controlled
//!   delivery, not a request per message), and purged with its task's
//!   record.

use crate::storage::JournalStep;
use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One step as the cluster keeps it: the one serde type of the steps in a
/// journal message (a JSON array of them).
#[derive(Debug, Serialize, Deserialize)]
struct StoredStep {
    index: u32,
    call: String,
    /// The answer's bytes, base64 (URL-safe, unpadded).
    outcome: String,
    at_ms: u64,
    micros: u64,
}

impl StoredStep {
    fn of(step: &JournalStep) -> StoredStep {
        use base64::Engine;
        StoredStep {
            index: step.index,
            call: step.call.clone(),
            outcome: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&step.outcome),
            at_ms: step.at_ms,
            micros: step.micros,
        }
    }

    fn step(self) -> Result<JournalStep> {
        use base64::Engine;
        let outcome = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.outcome)
            .with_context(|| format!("step {}'s answer does not read back", self.index))?;
        Ok(JournalStep {
            index: self.index,
            call: self.call,
            outcome,
            at_ms: self.at_ms,
            micros: self.micros,
        })
    }
}

/// How long a journal's read waits for its next message before it gives
/// up (the messages are there: only a stalled server is waited for).
const READ_WAIT: Duration = Duration::from_secs(10);

/// The cluster's journals, as this host sees them. Cloning shares them:
/// an append runs on a task of its own, so a caller that stops waiting
/// does not stop it halfway.
#[derive(Clone)]
pub(super) struct Journals(Arc<Shared>);

impl std::ops::Deref for Journals {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub(super) struct Shared {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    /// `{name}.journal`.
    prefix: String,
    /// The stream sequence of each journal's last message, as this host
    /// read or wrote it (0: none): what its next append expects.
    tails: Mutex<HashMap<u64, u64>>,
}

impl Journals {
    pub(super) async fn open(client: &async_nats::Client, cluster: &str) -> Result<Journals> {
        let jetstream = jetstream::new(client.clone());
        let name = format!("{cluster}-journal");
        let prefix = format!("{cluster}.journal");
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                description: Some("taskhost: journals of durable tasks that resume".into()),
                subjects: vec![format!("{prefix}.*")],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot open the JetStream stream {name} of journals"))?;
        Ok(Journals(Arc::new(Shared {
            jetstream,
            stream,
            prefix,
            tails: Mutex::default(),
        })))
    }

    /// [`Shared::append`], started now on a task of its own.
    pub(super) fn start_append(
        &self,
        seq: u64,
        steps: Vec<JournalStep>,
    ) -> tokio::task::JoinHandle<Result<()>> {
        let journals = self.clone();
        tokio::spawn(async move { journals.append(seq, &steps).await })
    }
}

impl Shared {
    fn subject(&self, seq: u64) -> String {
        format!("{}.{seq}", self.prefix)
    }

    fn tails(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.tails.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `steps` to task `seq`'s journal as one message, if nobody
    /// appended since this host last read or wrote it.
    pub(super) async fn append(&self, seq: u64, steps: &[JournalStep]) -> Result<()> {
        let stored: Vec<StoredStep> = steps.iter().map(StoredStep::of).collect();
        let payload = serde_json::to_vec(&stored)?;
        let known = self.tails().get(&seq).copied();
        let tail = match known {
            Some(tail) => tail,
            None => self.last(seq).await?,
        };
        let first = steps.first().map_or(0, |step| step.index);
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .expected_last_subject_sequence(tail);
        let ack = self
            .jetstream
            .send_publish(self.subject(seq), publish)
            .await
            .with_context(|| {
                format!(
                    "cannot append steps {first}.. to durable task {seq}'s journal (a commit \
                     is one NATS message: over the server's max_payload, make smaller host \
                     calls or raise it)"
                )
            })?
            .await;
        match ack {
            Ok(ack) => {
                self.tails().insert(seq, ack.sequence);
                Ok(())
            }
            Err(error) => {
                // Another copy appended (or the journal was emptied): read
                // afresh next time, and fail this append.
                self.tails().remove(&seq);
                Err(anyhow::Error::new(error).context(format!(
                    "JetStream refused steps {first}.. of durable task {seq}'s journal: another \
                     copy of the task appended to it since this host read it"
                )))
            }
        }
    }

    /// The stream sequence of task `seq`'s last journal message; 0 when
    /// it has none.
    async fn last(&self, seq: u64) -> Result<u64> {
        use jetstream::stream::LastRawMessageErrorKind;
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(seq))
            .await
        {
            Ok(message) => Ok(message.sequence),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(error) => Err(anyhow::Error::new(error).context(format!(
                "cannot read the end of durable task {seq}'s journal"
            ))),
        }
    }

    /// Task `seq`'s journal, in order.
    pub(super) async fn steps(&self, seq: u64) -> Result<Vec<JournalStep>> {
        let what = || format!("cannot read durable task {seq}'s journal");
        let last = self.last(seq).await?;
        let mut steps = Vec::new();
        if last > 0 {
            let reader = self
                .stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: self.subject(seq),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .with_context(what)?;
            let mut messages = reader.messages().await.with_context(what)?;
            loop {
                let message = tokio::time::timeout(READ_WAIT, messages.next())
                    .await
                    .with_context(|| format!("{}: no message for {READ_WAIT:?}", what()))?;
                let Some(message) = message else {
                    bail!("{}: the read ended early", what());
                };
                let message = message.with_context(what)?;
                let stored: Vec<StoredStep> = serde_json::from_slice(&message.payload)
                    .with_context(|| format!("{}: a message does not read back", what()))?;
                for step in stored {
                    steps.push(step.step().with_context(what)?);
                }
                let at = message
                    .info()
                    .map(|info| info.stream_sequence)
                    .map_err(|error| anyhow::anyhow!("{}: {error}", what()))?;
                if at >= last {
                    break;
                }
            }
        }
        self.tails().insert(seq, last);
        Ok(steps)
    }

    /// Empties task `seq`'s journal.
    pub(super) async fn clear(&self, seq: u64) -> Result<()> {
        self.stream
            .purge()
            .filter(self.subject(seq))
            .await
            .with_context(|| format!("cannot empty durable task {seq}'s journal"))?;
        self.tails().insert(seq, 0);
        Ok(())
    }

    /// Drops task `seq`'s journal with its record.
    pub(super) async fn drop(&self, seq: u64) -> Result<()> {
        self.clear(seq).await?;
        self.tails().remove(&seq);
        Ok(())
    }
}
