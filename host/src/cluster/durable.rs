//! Durable tasks in a cluster: the queue of `crate::storage::tasks` on
//! JetStream, so a task outlives the host that ran it.
//!
//! - The work-queue stream `{name}-durable` holds one message per durable
//!   task that has not ended, on `{name}.durable.{host}` of the host that
//!   runs it. A message leaves the stream only when its task's end is
//!   recorded (the ack).
//! - The KV bucket `{name}-durable` holds each task's record under
//!   `t.{seq}` (`seq`: the message's stream sequence, unique in the
//!   cluster) and each idempotency key under `k.{key in base64}`.
//! - Each host has a pull consumer, `runner-{host}`, on its own subject. A
//!   host submits a task by publishing it there and starting it at once;
//!   its consumer hands the message back, and the host holds it
//!   (unacknowledged) while the task runs, saying so every third of
//!   `ack_wait` (a progress ack).
//! - A host that dies stops saying so: JetStream makes the message
//!   deliverable again after `ack_wait`, and once the host has also
//!   expired from the cluster (its heartbeat), the others fetch from its
//!   consumer. The one that gets the message claims the record
//!   (compare-and-swap: host and attempt) and runs the task again.
//! - A host that comes back (restarted, or paused past `ack_wait`) finds
//!   the record claimed by another: its copy is stopped and its end not
//!   recorded. A cancel is recorded in the record before it is signalled,
//!   so a task cancelled while its host was dying ends `cancelled` where it
//!   is delivered next instead of running again.
//! - After `max_deliveries` deliveries the task is recorded as failed (a
//!   dead letter) and acknowledged.

use super::members::Members;
use crate::config::{ClusterConfig, RetrySpec};
use crate::storage::tasks::{outcome_columns, outcome_from_columns};
use crate::storage::{
    JournalStep, NewTask, Submitted, TaskRecord, TaskStore, TaskStoreFuture, Unavailable,
};
use crate::task::{Outcome, WorkerId};
use crate::worker::TaskEnv;
use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, AckKind, consumer::pull, kv, stream};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// A durable task as the cluster keeps it: the one serde type of a record
/// in `{name}-durable` and of a queued message's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredTask {
    seq: u64,
    name: String,
    /// The host that runs (or last ran) it.
    host: String,
    worker: WorkerId,
    plugin: String,
    plugin_version: String,
    factory: String,
    args: String,
    #[serde(default)]
    retry: Option<RetrySpec>,
    #[serde(default)]
    idempotency_key: Option<String>,
    attempt: u32,
    /// `pending` until it ended; then `done`, `failed` or `cancelled`.
    state: String,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    cancel_requested: bool,
    /// How many times another run was started after its host went away.
    #[serde(default)]
    handovers: u32,
    /// Until when (Unix ms) `host` holds the task: set when it claims the
    /// task and renewed every third of `ack_wait` while it runs it. No
    /// other host claims the task before then, and the holder's own copy
    /// stops acting earlier (its lease is counted from before the write).
    #[serde(default)]
    lease_until_ms: u64,
    created_ms: u64,
    #[serde(default)]
    ended_ms: Option<u64>,
    /// Where it waits before it starts, if it was submitted to a queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queued: Option<crate::storage::Queued>,
    /// The trace its runs join (a W3C `traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    /// It resumes from its journal (`super::journal`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    resume: bool,
}

const PENDING: &str = "pending";

impl StoredTask {
    fn record(&self) -> TaskRecord {
        TaskRecord {
            seq: self.seq,
            name: self.name.clone(),
            worker: self.worker,
            plugin: self.plugin.clone(),
            plugin_version: self.plugin_version.clone(),
            factory: self.factory.clone(),
            args: self.args.clone(),
            retry: self.retry.clone(),
            idempotency_key: self.idempotency_key.clone(),
            attempt: self.attempt,
            outcome: outcome_from_columns(
                &self.state,
                self.result.clone(),
                self.error.clone(),
                self.stage.clone(),
            ),
            cancel_requested: self.cancel_requested,
            created_ms: self.created_ms,
            ended_ms: self.ended_ms,
            queued: self.queued.clone(),
            traceparent: self.traceparent.clone(),
            resume: self.resume,
        }
    }

    fn is_pending(&self) -> bool {
        self.state == PENDING
    }

    fn end(&mut self, outcome: &Outcome) {
        let (state, result, error, stage) = outcome_columns(outcome);
        self.state = state.to_string();
        self.result = result.map(str::to_string);
        self.error = error.map(str::to_string);
        self.stage = stage.map(str::to_string);
        self.ended_ms = Some(now_ms());
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn task_key(seq: u64) -> String {
    format!("t.{seq}")
}

fn idempotency_key(key: &str) -> String {
    format!("k.{}", URL_SAFE_NO_PAD.encode(key))
}

fn unavailable() -> anyhow::Error {
    anyhow::Error::new(Unavailable(
        "NATS is unreachable, so the cluster cannot record a durable task now; try again once \
         `taskhost health` says ok"
            .into(),
    ))
}

/// The cluster's durable queue, as this host sees it.
pub struct DurableQueue {
    client: async_nats::Client,
    stream: stream::Stream,
    records: kv::Store,
    /// The stream behind `records`, to purge a record without leaving a
    /// marker behind for every task ever run.
    records_stream: stream::Stream,
    /// Its name, the second token of its keys' subjects.
    records_bucket: String,
    /// `{name}.durable`.
    prefix: String,
    host: String,
    ack_wait: Duration,
    max_deliveries: u32,
    /// The attempt this process runs of each task it runs.
    mine: Mutex<HashMap<u64, u32>>,
    /// The messages of those tasks, delivered and not acknowledged yet.
    held: Mutex<HashMap<u64, Arc<jetstream::Message>>>,
    /// Ends that could not be recorded (NATS was away), recorded once it
    /// is back: outcome, and whether the task had been stopped.
    unrecorded: Mutex<HashMap<u64, (Outcome, bool)>>,
    /// The leases of the tasks this process runs (see
    /// [`crate::task::Lease`]).
    leases: Mutex<HashMap<u64, Arc<crate::task::Lease>>>,
    /// The journals of the tasks that resume.
    journals: super::journal::Journals,
    /// The builds they began on.
    builds: super::builds::Builds,
}

impl DurableQueue {
    pub(super) async fn open(
        client: &async_nats::Client,
        config: &ClusterConfig,
    ) -> Result<DurableQueue> {
        let jetstream = jetstream::new(client.clone());
        let name = format!("{}-durable", config.name);
        let prefix = format!("{}.durable", config.name);
        let stream = jetstream
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                description: Some("taskhost: durable tasks that have not ended".into()),
                subjects: vec![format!("{prefix}.*")],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!("cannot open the JetStream stream {name} of durable tasks (is JetStream on: nats-server -js?)")
            })?;
        let records = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: name.clone(),
                description: "taskhost: durable tasks' records".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot open the JetStream KV bucket {name}"))?;
        let records_stream = jetstream
            .get_stream(format!("KV_{name}"))
            .await
            .with_context(|| format!("cannot open the stream of KV bucket {name}"))?;
        let queue = DurableQueue {
            client: client.clone(),
            stream,
            records,
            records_stream,
            records_bucket: name.clone(),
            prefix,
            host: config.host.clone(),
            ack_wait: config.ack_wait,
            max_deliveries: config.max_deliveries,
            mine: Mutex::default(),
            held: Mutex::default(),
            unrecorded: Mutex::default(),
            leases: Mutex::default(),
            journals: super::journal::Journals::open(client, &config.name).await?,
            builds: super::builds::Builds::open(client, &config.name, &config.host).await?,
        };
        queue.consumer(&config.host).await?;
        Ok(queue)
    }

    /// The consumer of `host`'s tasks, made if need be (for this host).
    async fn consumer(&self, host: &str) -> Result<jetstream::consumer::PullConsumer> {
        let name = format!("runner-{host}");
        self.stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("taskhost: the durable tasks of host {host}")),
                    filter_subject: format!("{}.{host}", self.prefix),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot open the JetStream consumer {name}"))
    }

    fn online(&self) -> Result<()> {
        if super::online(&self.client) {
            Ok(())
        } else {
            Err(unavailable())
        }
    }

    async fn read(&self, seq: u64) -> Result<Option<(StoredTask, u64)>> {
        let Some(entry) = self
            .records
            .entry(task_key(seq))
            .await
            .with_context(|| format!("cannot read durable task {seq}'s record"))?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let task: StoredTask = serde_json::from_slice(&entry.value)
            .with_context(|| format!("durable task {seq}'s record does not read back"))?;
        Ok(Some((task, entry.revision)))
    }

    /// Changes the record of `seq` with `change` (compare-and-swap, tried
    /// again when another host wrote in between). `change` says whether to
    /// write; returns the record as written, or none if it did not write
    /// (or there is no record).
    async fn modify(
        &self,
        seq: u64,
        mut change: impl FnMut(&mut StoredTask) -> Result<bool>,
    ) -> Result<Option<StoredTask>> {
        self.online()?;
        for _ in 0..16 {
            let Some((mut task, revision)) = self.read(seq).await? else {
                return Ok(None);
            };
            if !change(&mut task)? {
                return Ok(None);
            }
            let value = serde_json::to_vec(&task)?;
            match self
                .records
                .update(task_key(seq), value.into(), revision)
                .await
            {
                Ok(_) => return Ok(Some(task)),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot write durable task {seq}"));
                }
            }
        }
        bail!("durable task {seq}'s record kept changing under this host's write")
    }

    fn attempt_of(&self, seq: u64) -> Option<u32> {
        self.mine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&seq)
            .copied()
    }

    fn set_attempt(&self, seq: u64, attempt: Option<u32>) {
        let mut mine = self.mine.lock().unwrap_or_else(|e| e.into_inner());
        match attempt {
            Some(attempt) => mine.insert(seq, attempt),
            None => mine.remove(&seq),
        };
    }

    fn hold(&self, seq: u64, message: Arc<jetstream::Message>) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, message);
    }

    fn release(&self, seq: u64) -> Option<Arc<jetstream::Message>> {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq)
    }

    /// This process's lease of `seq`, held (or renewed) for `ack_wait`
    /// from `from`: when it wrote the record that names it the runner,
    /// counted from before the write, so the lease ends before the one
    /// the other hosts read in the record.
    fn hold_lease(&self, seq: u64, from: Instant) -> Arc<crate::task::Lease> {
        let valid = self.local_lease();
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let lease = leases
            .entry(seq)
            .or_insert_with(|| Arc::new(crate::task::Lease::new(from, valid)));
        lease.renew(from, valid);
        lease.clone()
    }

    /// How long this process's copy holds after a write that gave the
    /// record `ack_wait` more: a tenth less, for the hosts' wall clocks
    /// (which the others compare the record's time with) to differ by.
    fn local_lease(&self) -> Duration {
        self.ack_wait - self.ack_wait / 10
    }

    /// Ends this process's lease of `seq`: at once (revoked, its copy is
    /// fenced) when another host holds the task, or quietly once its copy
    /// has ended here.
    fn drop_lease(&self, seq: u64, revoke: bool) {
        let lease = self
            .leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        if revoke && let Some(lease) = lease {
            lease.revoke();
        }
    }

    fn lease_of(&self, seq: u64) -> Option<Arc<crate::task::Lease>> {
        self.leases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&seq)
            .cloned()
    }

    /// Renews this process's lease of `seq` if the record still names it
    /// as the runner of the attempt it runs: a write, so a renewal and
    /// another host's claim cannot both win from the same record. Whether
    /// it was renewed.
    async fn renew_lease(&self, seq: u64) -> bool {
        let Some(lease) = self.lease_of(seq) else {
            return false;
        };
        let mine = self.attempt_of(seq);
        let host = self.host.clone();
        let valid_ms = u64::try_from(self.ack_wait.as_millis()).unwrap_or(u64::MAX);
        let begun = Instant::now();
        let renewed = self
            .modify(seq, |task| {
                if !task.is_pending() || task.host != host || mine != Some(task.attempt) {
                    return Ok(false);
                }
                task.lease_until_ms = now_ms().saturating_add(valid_ms);
                Ok(true)
            })
            .await;
        match renewed {
            Ok(Some(_)) => {
                lease.renew(begun, self.local_lease());
                true
            }
            _ => false,
        }
    }

    /// Whether this copy of task `seq` may write its journal: NATS is
    /// reachable and its lease holds.
    fn may_write_journal(&self, seq: u64) -> Result<()> {
        self.online()?;
        if !self.lease_of(seq).is_some_and(|lease| lease.holds()) {
            bail!(
                "this host's lease of durable task {seq} lapsed (the host was paused, or cut \
                 off from NATS, past `ack_wait`): another host may run the task now, so this \
                 copy's journal takes no more steps"
            );
        }
        Ok(())
    }

    /// The key a submission's idempotency key is kept under: app.toml's
    /// durable startup tasks (`app.toml/WORKER/NAME`) run on every host,
    /// so theirs are this host's own; any other key is the cluster's.
    fn scoped_key(&self, key: &str) -> String {
        if key.starts_with("app.toml/") {
            format!("{}/{key}", self.host)
        } else {
            key.to_string()
        }
    }

    async fn submit_task(&self, task: &NewTask) -> Result<Submitted> {
        self.online()?;
        let key = task.idempotency_key.as_deref().map(|k| self.scoped_key(k));
        if let Some(key) = &key
            && let Some(seq) = self.keyed(key).await?
            && let Some((existing, _)) = self.read(seq).await?
        {
            return self.existing(existing);
        }
        let mut stored = StoredTask {
            seq: 0,
            name: task.name.clone().unwrap_or_default(),
            host: self.host.clone(),
            worker: task.worker,
            plugin: task.plugin.clone(),
            plugin_version: task.plugin_version.clone(),
            factory: task.factory.clone(),
            args: task.args.clone(),
            retry: task.retry.clone(),
            idempotency_key: task.idempotency_key.clone(),
            // A queued task's first attempt is counted at its turn, or
            // here if its turn came as it entered ([`NewTask::started`]).
            attempt: u32::from(task.started),
            state: PENDING.into(),
            result: None,
            error: None,
            stage: None,
            cancel_requested: false,
            handovers: 0,
            lease_until_ms: 0,
            created_ms: now_ms(),
            ended_ms: None,
            queued: task.queued.clone(),
            traceparent: task.traceparent.clone(),
            resume: task.resume,
        };
        let jetstream = jetstream::new(self.client.clone());
        // The key is the message id, so that JetStream takes one of two
        // submissions racing on two hosts. It remembers ids for its
        // duplicate window, past a `forget` of the record (a factory that
        // refused its arguments): a submission after that is sent again
        // under an id of that forgotten generation, which racing
        // submissions share in turn.
        let mut message_id = key.clone();
        let mut generations = 0;
        let seq = loop {
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(serde_json::to_vec(&stored)?.into())
                .header(super::HOST_HEADER, self.host.as_str());
            if let Some(id) = &message_id {
                publish = publish.message_id(id);
            }
            let ack = jetstream
                .send_publish(format!("{}.{}", self.prefix, self.host), publish)
                .await
                .context("cannot queue the durable task")?
                .await
                .context("JetStream did not take the durable task")?;
            let seq = ack.sequence;
            if !ack.duplicate {
                break seq;
            }
            // Submitted with the same key a moment ago (on any host): that
            // one's record is written right after its publish. Or that
            // submission's record was forgotten since (its message is gone
            // from the queue and its key from the records): then this one
            // is sent again as the next generation.
            let mut forgotten = false;
            for _ in 0..50 {
                if let Some((existing, _)) = self.read(seq).await? {
                    return self.existing(existing);
                }
                // Another host sent the next generation first.
                if let Some(key) = &key
                    && let Some(other) = self.keyed(key).await?
                    && let Some((existing, _)) = self.read(other).await?
                {
                    return self.existing(existing);
                }
                if key.is_some() && self.keyed_message_gone(seq).await? {
                    forgotten = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            generations += 1;
            if !forgotten || generations > 8 {
                bail!(
                    "durable task {seq} was submitted with the same key, but its record never came"
                );
            }
            message_id = key.as_ref().map(|key| format!("{key}@{seq}"));
        };
        stored.seq = seq;
        if stored.name.is_empty() {
            stored.name = format!("durable-{seq}");
        }
        self.set_attempt(seq, Some(1));
        // The submitting host runs it at once: held from before the write.
        let begun = Instant::now();
        stored.lease_until_ms =
            now_ms().saturating_add(u64::try_from(self.ack_wait.as_millis()).unwrap_or(u64::MAX));
        self.records
            .put(task_key(seq), serde_json::to_vec(&stored)?.into())
            .await
            .with_context(|| format!("cannot record durable task {seq}"))?;
        self.hold_lease(seq, begun);
        if let Some(key) = &key {
            self.records
                .put(idempotency_key(key), seq.to_string().into())
                .await
                .with_context(|| format!("cannot record durable task {seq}'s key"))?;
        }
        Ok(Submitted::New(stored.record()))
    }

    /// The answer to a submission whose key names `task`: the task, unless
    /// it has not ended and runs on another host (this host must not run
    /// it too).
    fn existing(&self, task: StoredTask) -> Result<Submitted> {
        if task.is_pending() && task.host != self.host {
            return Err(anyhow::Error::new(crate::storage::RunsElsewhere(format!(
                "the idempotency key names durable task {} (seq {}), which has not ended and \
                 runs on host {} (attempt {}); ask that host, or `taskhost task {} --cluster`",
                task.name, task.seq, task.host, task.attempt, task.name
            ))));
        }
        Ok(Submitted::Existing(task.record()))
    }

    /// Removes the record under `key` entirely (a KV purge would leave a
    /// marker per task for ever).
    async fn purge_record(&self, key: &str) -> Result<()> {
        self.records_stream
            .purge()
            .filter(format!("$KV.{}.{key}", self.records_bucket))
            .await
            .with_context(|| format!("cannot purge {key} from {}", self.records_bucket))?;
        Ok(())
    }

    /// Whether message `seq` is gone from the queue, and no record or key
    /// names it: what `forget` leaves of a submission.
    async fn keyed_message_gone(&self, seq: u64) -> Result<bool> {
        use jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_raw_message(seq).await {
            Ok(_) => Ok(false),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {
                Ok(self.read(seq).await?.is_none())
            }
            Err(error) => Err(anyhow::Error::new(error)
                .context(format!("cannot read durable task {seq}'s message"))),
        }
    }

    async fn keyed(&self, key: &str) -> Result<Option<u64>> {
        let value = self
            .records
            .get(idempotency_key(key))
            .await
            .context("cannot look the idempotency key up")?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    async fn forget_task(&self, seq: u64) -> Result<()> {
        self.drop_lease(seq, false);
        self.online()?;
        self.set_attempt(seq, None);
        if let Some(message) = self.release(seq) {
            let _ = message.ack_with(AckKind::Term).await;
        }
        if let Some((task, _)) = self.read(seq).await? {
            if let Some(key) = &task.idempotency_key {
                self.purge_record(&idempotency_key(&self.scoped_key(key)))
                    .await?;
            }
            if task.resume {
                self.journals.drop(seq).await?;
            }
        }
        self.purge_record(&task_key(seq)).await?;
        // Not delivered yet, it is still in the stream.
        let _ = self.stream.delete_message(seq).await;
        Ok(())
    }

    async fn started(&self, seq: u64, attempt: u32) -> Result<()> {
        let host = self.host.clone();
        let ack_wait_ms = u64::try_from(self.ack_wait.as_millis()).unwrap_or(u64::MAX);
        let begun = Instant::now();
        // Not a retry of a run of this process: another run, after its
        // host (this one, restarted, or another) went away.
        let handover = self.attempt_of(seq).is_none();
        let written = self
            .modify(seq, |task| {
                if !task.is_pending() {
                    bail!("durable task {seq} has ended already");
                }
                if task.host != host && task.attempt >= attempt {
                    bail!(
                        "durable task {seq} runs on host {} (attempt {}) now",
                        task.host,
                        task.attempt
                    );
                }
                // A host that holds the task's lease is running it: never
                // taken from it (a host back from a pause once took a task
                // from the healthy host that had taken it over).
                let now = now_ms();
                if task.host != host && task.lease_until_ms > now {
                    bail!(
                        "durable task {seq} is held by host {} (attempt {}) for {} ms more",
                        task.host,
                        task.attempt,
                        task.lease_until_ms - now
                    );
                }
                task.host = host.clone();
                task.attempt = attempt;
                task.lease_until_ms = now.saturating_add(ack_wait_ms);
                if handover {
                    task.handovers += 1;
                }
                Ok(true)
            })
            .await?;
        if written.is_none() {
            bail!("durable task {seq} has no record");
        }
        self.set_attempt(seq, Some(attempt));
        self.hold_lease(seq, begun);
        Ok(())
    }

    /// Records the end of `seq`, or, when NATS cannot take it now, keeps
    /// it to record once NATS is back (the task stays held till then).
    async fn ended_task(&self, seq: u64, outcome: &Outcome, stopped: bool) -> Result<bool> {
        match self.record_end(seq, outcome, stopped).await {
            Ok(recorded) => Ok(recorded),
            Err(error) => {
                tracing::warn!(
                    "durable task {seq} ended, but its end cannot be recorded in the cluster now \
                     ({error:#}); it is recorded once NATS is back"
                );
                self.unrecorded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq, (outcome.clone(), stopped));
                Ok(false)
            }
        }
    }

    /// Records the ends kept while NATS was away.
    async fn record_kept_ends(&self) {
        let kept: Vec<(u64, (Outcome, bool))> = self
            .unrecorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (seq, (outcome, stopped)) in kept {
            if let Err(error) = self.record_end(seq, &outcome, stopped).await {
                tracing::debug!("durable task {seq}: its end still cannot be recorded: {error:#}");
                self.unrecorded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq, (outcome, stopped));
            }
        }
    }

    async fn record_end(&self, seq: u64, outcome: &Outcome, stopped: bool) -> Result<bool> {
        let attempt = self.attempt_of(seq);
        let host = self.host.clone();
        let mut superseded = false;
        let written = self
            .modify(seq, |task| {
                if !task.is_pending() {
                    return Ok(false);
                }
                match attempt {
                    Some(attempt) if task.host != host || task.attempt != attempt => {
                        superseded = true;
                        return Ok(false);
                    }
                    // Not run here: only a recorded cancel ends it.
                    None if !task.cancel_requested => return Ok(false),
                    _ => {}
                }
                let done = matches!(outcome, Outcome::Done { .. });
                if stopped && !task.cancel_requested && !done {
                    return Ok(false);
                }
                task.end(outcome);
                Ok(true)
            })
            .await?;
        self.set_attempt(seq, None);
        self.drop_lease(seq, false);
        let message = self.release(seq);
        match (&written, message) {
            (Some(_), Some(message)) => {
                if let Err(error) = message.ack().await {
                    tracing::warn!(
                        "durable task {seq}: its end is recorded but the queue did not take the \
                         ack ({error}); the next delivery finds it ended"
                    );
                }
            }
            // Stopped without ending (this host stopping): handed back at
            // once, for another host to run once this one has left.
            (None, Some(message)) if !superseded => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            _ => {}
        }
        Ok(written.is_some())
    }

    async fn ended_here(&self, limit: usize) -> Result<Vec<StoredTask>> {
        self.online()?;
        let mut keys = self
            .records
            .keys()
            .await
            .context("cannot list the durable tasks' records")?;
        let mut ended = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.context("cannot list the durable tasks' records")?;
            let Some(seq) = key.strip_prefix("t.").and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((task, _)) = self.read(seq).await?
                && task.host == self.host
                && !task.is_pending()
            {
                ended.push(task);
            }
        }
        ended.sort_by_key(|t| (t.ended_ms, t.seq));
        let skip = ended.len().saturating_sub(limit);
        Ok(ended.split_off(skip))
    }

    async fn purge_ended_here(&self) -> Result<u64> {
        let ended = self.ended_here(usize::MAX).await?;
        for task in &ended {
            if let Some(key) = &task.idempotency_key {
                self.purge_record(&idempotency_key(&self.scoped_key(key)))
                    .await?;
            }
            if task.resume {
                self.journals.drop(task.seq).await?;
            }
            self.purge_record(&task_key(task.seq)).await?;
        }
        Ok(ended.len() as u64)
    }

    /// How many messages the stream holds: durable tasks not ended.
    pub async fn queued(&self) -> Result<u64> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await?.state.messages)
    }
}

impl TaskStore for DurableQueue {
    fn submit(&self, task: NewTask) -> TaskStoreFuture<'_, Submitted> {
        Box::pin(async move { self.submit_task(&task).await })
    }

    fn forget(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        Box::pin(self.forget_task(seq))
    }

    fn attempt_started(&self, seq: u64, attempt: u32) -> TaskStoreFuture<'_, ()> {
        Box::pin(self.started(seq, attempt))
    }

    fn cancel_requested(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        Box::pin(async move {
            self.modify(seq, |task| {
                if !task.is_pending() || task.cancel_requested {
                    return Ok(false);
                }
                task.cancel_requested = true;
                Ok(true)
            })
            .await?;
            Ok(())
        })
    }

    fn ended<'a>(
        &'a self,
        seq: u64,
        outcome: &'a Outcome,
        stopped: bool,
    ) -> TaskStoreFuture<'a, bool> {
        Box::pin(self.ended_task(seq, outcome, stopped))
    }

    /// None at start: in a cluster an unfinished task comes back through
    /// the queue (to this host or another), not from a list read at start.
    fn unfinished(&self) -> TaskStoreFuture<'_, Vec<TaskRecord>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn redelivers(&self) -> bool {
        true
    }

    /// The tasks this host ran that ended; reads every record (one KV get
    /// each), so it is for the start, not for a hot path.
    fn recently_ended(&self, limit: usize) -> TaskStoreFuture<'_, Vec<TaskRecord>> {
        Box::pin(async move {
            Ok(self
                .ended_here(limit)
                .await?
                .iter()
                .map(StoredTask::record)
                .collect())
        })
    }

    fn purge_ended(&self) -> TaskStoreFuture<'_, u64> {
        Box::pin(self.purge_ended_here())
    }

    fn keeps_journals(&self) -> bool {
        true
    }

    /// Refused from a copy whose lease lapsed: another host may run the
    /// task now, and its journal is that host's.
    fn append_steps(&self, seq: u64, steps: Vec<JournalStep>) -> TaskStoreFuture<'_, ()> {
        if let Err(refused) = self.may_write_journal(seq) {
            return Box::pin(async { Err(refused) });
        }
        // Started now: appends reach JetStream in the order they are
        // made, and one whose caller stops waiting is still made whole.
        let appended = self.journals.start_append(seq, steps);
        Box::pin(async move {
            appended
                .await
                .map_err(|error| anyhow!("durable task {seq}'s journal append stopped: {error}"))?
        })
    }

    fn clear_steps(&self, seq: u64) -> TaskStoreFuture<'_, ()> {
        Box::pin(async move {
            self.may_write_journal(seq)?;
            self.journals.clear(seq).await
        })
    }

    fn steps(&self, seq: u64) -> TaskStoreFuture<'_, Vec<JournalStep>> {
        Box::pin(async move {
            self.online()?;
            self.journals.steps(seq).await
        })
    }

    fn keep_build(
        &self,
        plugin: &str,
        version: &str,
        component: Vec<u8>,
    ) -> TaskStoreFuture<'_, ()> {
        let (plugin, version) = (plugin.to_string(), version.to_string());
        Box::pin(async move {
            self.online()?;
            self.builds.keep(&plugin, &version, &component).await
        })
    }

    fn kept_build(&self, version: &str) -> TaskStoreFuture<'_, Option<Vec<u8>>> {
        let version = version.to_string();
        Box::pin(async move {
            self.online()?;
            self.builds.kept(&version).await
        })
    }

    fn lease(&self, seq: u64) -> Option<Arc<crate::task::Lease>> {
        Some(
            self.lease_of(seq)
                .unwrap_or_else(|| self.hold_lease(seq, Instant::now())),
        )
    }
}

/// How long a fetch from this host's own consumer waits for a message.
const FETCH_WAIT: Duration = Duration::from_secs(1);

/// How many messages one fetch takes at most.
const FETCH_BATCH: usize = 16;

/// How often the list of hosts' consumers is read again.
const CONSUMERS_EVERY: Duration = Duration::from_secs(5);

/// Takes this host's durable tasks (and those of hosts gone from the
/// cluster) from the queue, and says "still running" for those it runs,
/// until the host stops. Two loops: a fetch that stalls must not stop the
/// progress acks.
pub(super) fn run(
    queue: Arc<DurableQueue>,
    env: Arc<TaskEnv>,
    members: Arc<Members>,
) -> Vec<JoinHandle<()>> {
    let fetch = tokio::spawn({
        let (queue, env) = (queue.clone(), env.clone());
        async move {
            let mut runner = Runner {
                queue,
                env,
                members,
                consumers: HashMap::new(),
                hosts: Vec::new(),
                hosts_read: None,
            };
            runner.run().await;
        }
    });
    let progress = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(queue.ack_wait / 3);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if super::online(&queue.client) {
                progress(&queue, &env).await;
            }
        }
    });
    vec![fetch, progress]
}

/// How long one fetch may take beyond its own wait before it is given up
/// (a lost end-of-batch must not stall the queue).
const FETCH_SLACK: Duration = Duration::from_secs(5);

struct Runner {
    queue: Arc<DurableQueue>,
    env: Arc<TaskEnv>,
    members: Arc<Members>,
    consumers: HashMap<String, jetstream::consumer::PullConsumer>,
    /// The hosts with a consumer, as last read.
    hosts: Vec<String>,
    hosts_read: Option<Instant>,
}

impl Runner {
    async fn run(&mut self) {
        let me = self.queue.host.clone();
        loop {
            if self.env.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if !super::online(&self.queue.client) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            self.queue.record_kept_ends().await;
            if let Err(error) = self.take_from(&me, FETCH_WAIT).await {
                tracing::debug!("durable queue: {error:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            for host in self.gone_hosts().await {
                if let Err(error) = self.take_from(&host, Duration::ZERO).await {
                    tracing::debug!("durable queue of host {host}: {error:#}");
                }
            }
        }
    }

    /// The hosts whose consumer exists but who are gone from the cluster
    /// (known to be gone: this host has heard the cluster long enough).
    async fn gone_hosts(&mut self) -> Vec<String> {
        if !self.members.settled() {
            return Vec::new();
        }
        if self
            .hosts_read
            .is_none_or(|at| at.elapsed() >= CONSUMERS_EVERY)
        {
            self.hosts_read = Some(Instant::now());
            let mut names = self.queue.stream.consumer_names();
            let mut hosts = Vec::new();
            while let Some(Ok(name)) = names.next().await {
                if let Some(host) = name.strip_prefix("runner-") {
                    hosts.push(host.to_string());
                }
            }
            self.hosts = hosts;
        }
        let present: Vec<String> = self.members.present().into_iter().map(|b| b.host).collect();
        self.hosts
            .iter()
            .filter(|h| **h != self.queue.host && !present.contains(h))
            .cloned()
            .collect()
    }

    /// Fetches what `host`'s consumer has for this host now, waiting up to
    /// `wait` for the first message.
    async fn take_from(&mut self, host: &str, wait: Duration) -> Result<()> {
        let consumer = match self.consumers.get(host) {
            Some(consumer) => consumer.clone(),
            None => {
                let consumer = self.queue.consumer(host).await?;
                self.consumers.insert(host.to_string(), consumer.clone());
                consumer
            }
        };
        let mut messages = if wait.is_zero() {
            consumer
                .fetch()
                .max_messages(FETCH_BATCH)
                .messages()
                .await
                .map_err(|e| anyhow!("{e}"))?
        } else {
            consumer
                .batch()
                .max_messages(FETCH_BATCH)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| anyhow!("{e}"))?
        };
        // Only the wait for the next message is bounded (a lost end of
        // batch must not stall the queue); a message taken is handled to
        // its end.
        loop {
            let next = tokio::time::timeout(wait + FETCH_SLACK, messages.next())
                .await
                .map_err(|_| anyhow!("a fetch from the consumer of host {host} stalled"))?;
            let Some(message) = next else {
                return Ok(());
            };
            let message = message.map_err(|e| anyhow!("{e}"))?;
            self.take(host, Arc::new(message)).await;
        }
    }

    /// One delivered task: held if it runs here, acknowledged if it ended,
    /// or claimed and run (again) here.
    async fn take(&self, from: &str, message: Arc<jetstream::Message>) {
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(_) => return,
        };
        let queue = &self.queue;
        let task = match queue.read(seq).await {
            Ok(Some((task, _))) => task,
            Ok(None) if delivered < 20 => {
                // Its record is written right after its publish.
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
                return;
            }
            Ok(None) => {
                tracing::warn!("durable task {seq} has no record in the cluster: dropped");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(error) => {
                tracing::warn!("durable task {seq}: {error:#}; it comes back later");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        };
        if !task.is_pending() {
            let _ = message.ack().await;
            return;
        }
        // This process runs (or just ran) this attempt: submitted here a
        // moment ago, not listed yet, or ended while NATS was away with its
        // end still to record. Held, never handed over.
        let running_here = task.host == queue.host && queue.attempt_of(seq) == Some(task.attempt);
        if running_here {
            queue.hold(seq, message.clone());
            // It may have ended between the read and the hold, its end
            // finding nothing to acknowledge.
            if let Ok(Some((task, _))) = queue.read(seq).await
                && !task.is_pending()
                && let Some(message) = queue.release(seq)
            {
                let _ = message.ack().await;
            }
            return;
        }
        if task.cancel_requested {
            self.end_here(
                seq,
                &message,
                Outcome::Cancelled {
                    stage: crate::task::CancelStage::Cooperative,
                },
            )
            .await;
            tracing::info!(
                task = task.name,
                host = task.host,
                "durable task {} was cancelled while host {} ran it: recorded as cancelled, \
                 not run again",
                task.name,
                task.host
            );
            return;
        }
        // A stopping host claims nothing: handed back for another.
        if self.env.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return;
        }
        // Runs counted, not deliveries: a delivery handed back (no room, a
        // host stopping, a record not written yet) is not a run.
        if 1 + task.handovers >= queue.max_deliveries {
            let error = format!(
                "dead letter: run {} times (max_deliveries = {}) without ending; last run on \
                 host {} (attempt {})",
                1 + task.handovers,
                queue.max_deliveries,
                task.host,
                task.attempt
            );
            tracing::error!(task = task.name, "durable task {}: {error}", task.name);
            self.end_here(seq, &message, Outcome::Failed { error })
                .await;
            return;
        }
        let name = task.name.clone();
        let previous = task.host.clone();
        let attempt = task.attempt.saturating_add(1);
        match crate::worker::run_handed_over(&self.env, task.record()).await {
            Ok(_) => {
                tracing::info!(
                    task = name,
                    attempt,
                    "durable task {name} had not ended on host {previous}: running it here \
                     (attempt {attempt}, from the queue of host {from})"
                );
                // Held once the record names this host (a progress check
                // in between would take it for another host's), and
                // acknowledged here if it ended before it was held.
                queue.hold(seq, message.clone());
                if let Ok(Some((task, _))) = queue.read(seq).await
                    && !task.is_pending()
                    && task.host == queue.host
                    && let Some(message) = queue.release(seq)
                {
                    let _ = message.ack().await;
                }
            }
            Err(error) => {
                queue.set_attempt(seq, None);
                queue.drop_lease(seq, false);
                tracing::warn!(
                    task = name,
                    "durable task {name} cannot run here now ({error}); it goes back to the queue"
                );
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
            }
        }
    }

    /// Records `outcome` for a task that does not run here, then
    /// acknowledges it.
    async fn end_here(&self, seq: u64, message: &jetstream::Message, outcome: Outcome) {
        let written = self
            .queue
            .modify(seq, |task| {
                if !task.is_pending() {
                    return Ok(false);
                }
                task.end(&outcome);
                Ok(true)
            })
            .await;
        match written {
            Ok(_) => {
                let _ = message.ack().await;
            }
            Err(error) => {
                tracing::warn!("durable task {seq}: cannot record its end ({error:#})");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
}

/// Says "still running" for every task held here, and stops this
/// process's copy of a task another host took over (this host was away past
/// `ack_wait`), whether or not its message had reached this host.
async fn progress(queue: &DurableQueue, env: &TaskEnv) {
    let mut seqs: Vec<u64> = queue
        .mine
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .copied()
        .collect();
    seqs.extend(
        queue
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied(),
    );
    seqs.sort_unstable();
    seqs.dedup();
    for seq in seqs {
        let held = queue
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&seq)
            .cloned();
        let task = match queue.read(seq).await {
            Ok(Some((task, _))) => task,
            Ok(None) => continue,
            Err(_) => {
                if let Some(message) = held {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
                continue;
            }
        };
        let mine = queue.attempt_of(seq);
        // Claimed by another host since this one started it: whether that
        // one is still running it or has ended it, this copy stops.
        let superseded = task.host != queue.host || mine.is_some_and(|m| m != task.attempt);
        if superseded {
            queue.release(seq);
            queue.set_attempt(seq, None);
            // Fenced at once: nothing more from this copy, even before the
            // cancel reaches it.
            queue.drop_lease(seq, true);
            if let Some((_, handle)) = env.durable_task(seq)
                && !handle.is_ended()
            {
                tracing::warn!(
                    task = task.name,
                    "durable task {} runs on host {} now (attempt {}): this host was away \
                     past ack_wait, so its copy stops",
                    task.name,
                    task.host,
                    task.attempt
                );
                handle.cancel();
            }
        } else if !task.is_pending() {
            if let Some(message) = queue.release(seq) {
                let _ = message.ack().await;
            }
        } else {
            // Still this host's: the lease goes on (or, if the write
            // failed, runs out and fences the copy), and the queue hears
            // it is still running.
            queue.renew_lease(seq).await;
            if let Some(message) = held {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}
