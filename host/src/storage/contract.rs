//! What every storage backend must do, as one suite each backend runs: the
//! SQLite file in this crate's unit tests, the cluster's JetStream backends
//! in the cluster's integration tests, and any backend to come. Each check
//! panics with what the backend did instead, naming the call.
//!
//! A suite starts from an empty store (a fresh file, a fresh NATS server)
//! and uses its own bucket and schedule names, so the three suites may run
//! against one store.
//!
//! Only what a caller may rely on whatever the backend is checked here:
//! versions are compared for equality, never for their numbers; sequence
//! numbers only for being distinct.

use super::{
    BucketId, KeyPage, KvError, KvLimits, KvStore, NewTask, ScheduleMark, ScheduleStore, Submitted,
    Swap, TaskStore,
};
use crate::config::LimitUnit;
use crate::task::{CancelStage, Outcome, WorkerId};

/// The limits [`kv`] expects its store to hold: small, so the checks of
/// the bounds write little.
pub const KV_LIMITS: KvLimits = KvLimits {
    key_bytes: 64,
    value_bytes: 1024,
    keys_per_bucket: 8,
    bytes_per_plugin: 4096,
};

fn bucket(owner: &str, name: &str) -> BucketId {
    BucketId::private(owner, name).expect("a valid bucket name")
}

/// Runs every key-value check against `store`, which must enforce
/// [`KV_LIMITS`].
pub async fn kv(store: &dyn KvStore) {
    kv_values(store).await;
    kv_versions(store).await;
    kv_counters(store).await;
    kv_batches(store).await;
    kv_pages(store).await;
    kv_limits(store).await;
    kv_isolation(store).await;
}

async fn kv_values(store: &dyn KvStore) {
    let b = bucket("contract", "values");
    assert_eq!(
        store.get(&b, "k").await.unwrap(),
        None,
        "get of a key never set"
    );
    store.set(&b, "k", b"one").await.unwrap();
    assert_eq!(
        store.get(&b, "k").await.unwrap().as_deref(),
        Some(&b"one"[..]),
        "get after set"
    );
    store.set(&b, "k", b"two").await.unwrap();
    assert_eq!(
        store.get(&b, "k").await.unwrap().as_deref(),
        Some(&b"two"[..]),
        "get after a second set"
    );
    store.set(&b, "empty", b"").await.unwrap();
    assert_eq!(
        store.get(&b, "empty").await.unwrap().as_deref(),
        Some(&b""[..]),
        "an empty value is a value"
    );
    let binary: Vec<u8> = (0..=255).collect();
    store.set(&b, "binary", &binary).await.unwrap();
    assert_eq!(
        store.get(&b, "binary").await.unwrap(),
        Some(binary),
        "every byte value round-trips"
    );
    let odd = "a key/with spaces, dots. and ünïcode";
    store.set(&b, odd, b"x").await.unwrap();
    assert_eq!(
        store.get(&b, odd).await.unwrap().as_deref(),
        Some(&b"x"[..]),
        "an odd key round-trips"
    );
    assert!(
        store.delete(&b, "k").await.unwrap(),
        "delete of a present key says it was there"
    );
    assert!(
        !store.delete(&b, "k").await.unwrap(),
        "delete of an absent key says it was not"
    );
    assert_eq!(store.get(&b, "k").await.unwrap(), None, "get after delete");
    assert!(
        matches!(store.set(&b, "", b"x").await, Err(KvError::EmptyKey)),
        "set of an empty key is refused as empty"
    );
}

async fn kv_versions(store: &dyn KvStore) {
    let b = bucket("contract", "versions");
    assert_eq!(
        store.get_versioned(&b, "k").await.unwrap(),
        None,
        "get_versioned of an absent key"
    );
    assert_eq!(
        store.swap(&b, "k", None, b"first").await.unwrap(),
        Swap::Done,
        "swap expecting absence, of an absent key"
    );
    let read = store
        .get_versioned(&b, "k")
        .await
        .unwrap()
        .expect("the swapped-in value");
    assert_eq!(read.value, b"first", "get_versioned after swap");
    match store.swap(&b, "k", None, b"again").await.unwrap() {
        Swap::Changed(Some(version)) => {
            assert_eq!(
                version, read.version,
                "a refused swap names the version now"
            )
        }
        other => panic!("swap expecting absence of a present key: {other:?}"),
    }
    assert_eq!(
        store
            .swap(&b, "k", Some(read.version), b"second")
            .await
            .unwrap(),
        Swap::Done,
        "swap at the version read"
    );
    let now = store
        .get_versioned(&b, "k")
        .await
        .unwrap()
        .expect("the second value");
    assert_eq!(now.value, b"second");
    assert_ne!(now.version, read.version, "a write changes the version");
    assert!(
        matches!(store.swap(&b, "k", Some(read.version), b"stale").await.unwrap(), Swap::Changed(Some(v)) if v == now.version),
        "swap at a stale version is refused with the version now"
    );
    store.set(&b, "k", b"third").await.unwrap();
    let third = store.get_versioned(&b, "k").await.unwrap().unwrap();
    assert_ne!(third.version, now.version, "set changes the version");
    store.delete(&b, "k").await.unwrap();
    assert_eq!(
        store
            .swap(&b, "k", Some(third.version), b"gone")
            .await
            .unwrap(),
        Swap::Changed(None),
        "swap of a deleted key says it is absent"
    );
    assert_eq!(
        store.get(&b, "k").await.unwrap(),
        None,
        "a refused swap writes nothing"
    );
}

async fn kv_counters(store: &dyn KvStore) {
    let b = bucket("contract", "counters");
    assert_eq!(
        store.increment(&b, "n", 5).await.unwrap(),
        5,
        "increment of an absent key starts at 0"
    );
    assert_eq!(
        store.increment(&b, "n", -7).await.unwrap(),
        -2,
        "increment by a negative delta"
    );
    assert_eq!(
        store.get(&b, "n").await.unwrap().as_deref(),
        Some(&b"-2"[..]),
        "a counter is stored as decimal text"
    );
    store.set(&b, "text", b"not a number").await.unwrap();
    assert!(
        matches!(
            store.increment(&b, "text", 1).await,
            Err(KvError::NotAnInteger { .. })
        ),
        "increment of text is refused"
    );
    store
        .set(&b, "big", i64::MAX.to_string().as_bytes())
        .await
        .unwrap();
    assert!(
        matches!(
            store.increment(&b, "big", 1).await,
            Err(KvError::Overflow { .. })
        ),
        "increment past i64::MAX is refused"
    );
    assert_eq!(
        store.get(&b, "big").await.unwrap().as_deref(),
        Some(i64::MAX.to_string().as_bytes()),
        "a refused increment writes nothing"
    );
}

async fn kv_batches(store: &dyn KvStore) {
    let b = bucket("contract", "batches");
    let entries: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("k{i}"), format!("v{i}").into_bytes()))
        .collect();
    store.set_many(&b, &entries).await.unwrap();
    let keys: Vec<String> = ["k0", "missing", "k2"].map(String::from).to_vec();
    assert_eq!(
        store.get_many(&b, &keys).await.unwrap(),
        vec![Some(b"v0".to_vec()), None, Some(b"v2".to_vec())],
        "get_many answers in the order asked, absent keys as none"
    );
    // One entry over the bound: none of the batch is written.
    let over = vec![
        ("fits".to_string(), b"x".to_vec()),
        ("too-big".to_string(), vec![0; KV_LIMITS.value_bytes + 1]),
    ];
    assert!(
        matches!(store.set_many(&b, &over).await, Err(KvError::Limit(_))),
        "set_many with a value over kv_value_bytes is refused"
    );
    assert_eq!(
        store.get(&b, "fits").await.unwrap(),
        None,
        "a refused set_many writes nothing"
    );
    let doomed: Vec<String> = ["k0", "k1"].map(String::from).to_vec();
    store.delete_many(&b, &doomed).await.unwrap();
    assert_eq!(
        store.get_many(&b, &keys).await.unwrap(),
        vec![None, None, Some(b"v2".to_vec())],
        "delete_many removes exactly its keys"
    );
    // Deleting keys that are absent is no error.
    store.delete_many(&b, &doomed).await.unwrap();
}

async fn kv_pages(store: &dyn KvStore) {
    let b = bucket("contract", "pages");
    for key in ["c", "a", "e", "b", "d"] {
        store.set(&b, key, key.as_bytes()).await.unwrap();
    }
    let first = store.list_keys(&b, None, 2).await.unwrap();
    assert_eq!(first.keys, ["a", "b"], "a first page, in byte order");
    let next = first
        .next
        .clone()
        .expect("a page before the last has a next");
    let second = store.list_keys(&b, Some(&next), 2).await.unwrap();
    assert_eq!(second.keys, ["c", "d"], "the page after `next`");
    let third = store
        .list_keys(&b, second.next.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(third.keys, ["e"], "the last page");
    assert_eq!(third.next, None, "the last page has no next");
    assert_eq!(
        store
            .list_keys(&bucket("contract", "never-written"), None, 10)
            .await
            .unwrap(),
        KeyPage::default(),
        "a bucket never written lists nothing"
    );
    let stats = store.buckets().await.unwrap();
    let pages = stats
        .iter()
        .find(|s| s.bucket == b)
        .expect("buckets lists a bucket that holds keys");
    assert_eq!(pages.keys, 5, "buckets counts a bucket's keys");
    assert!(
        pages.bytes >= 10,
        "buckets counts at least the keys' and values' bytes"
    );
}

async fn kv_limits(store: &dyn KvStore) {
    let b = bucket("limits", "keys");
    let long_key = "k".repeat(KV_LIMITS.key_bytes + 1);
    match store.set(&b, &long_key, b"x").await {
        Err(KvError::Limit(limit)) => {
            assert_eq!(limit.setting, Some("kv_key_bytes"), "{limit}");
            assert_eq!(limit.unit, LimitUnit::Bytes);
        }
        other => panic!("set of a key over kv_key_bytes: {other:?}"),
    }
    match store
        .set(&b, "big", &vec![0; KV_LIMITS.value_bytes + 1])
        .await
    {
        Err(KvError::Limit(limit)) => assert_eq!(limit.setting, Some("kv_value_bytes"), "{limit}"),
        other => panic!("set of a value over kv_value_bytes: {other:?}"),
    }
    for i in 0..KV_LIMITS.keys_per_bucket {
        store.set(&b, &format!("k{i}"), b"x").await.unwrap();
    }
    match store.set(&b, "one-more", b"x").await {
        Err(KvError::Limit(limit)) => {
            assert_eq!(limit.setting, Some("kv_keys_per_bucket"), "{limit}")
        }
        other => panic!("set of a key past kv_keys_per_bucket: {other:?}"),
    }
    // Replacing a key adds none: it still fits.
    store.set(&b, "k0", b"y").await.unwrap();
    assert_eq!(
        store.get(&b, "one-more").await.unwrap(),
        None,
        "a refused write writes nothing"
    );
    // Bytes: what every backend holds is one bucket's keys and values
    // within `kv_bytes_per_plugin`. (SQLite counts all of a plugin's own
    // buckets together, JetStream each bucket as it stores it, headers
    // included: docs/cluster.md says so; the SQLite unit tests check the sum.)
    let full = bucket("bytes", "full");
    let value = vec![7u8; KV_LIMITS.value_bytes];
    let mut written = 0u64;
    let mut refused = None;
    for n in 0..KV_LIMITS.keys_per_bucket {
        match store.set(&full, &format!("v{n}"), &value).await {
            Ok(()) => written += value.len() as u64,
            Err(KvError::Limit(limit)) => {
                refused = Some(limit);
                break;
            }
            Err(other) => panic!("set while filling a plugin's bytes: {other}"),
        }
    }
    let limit = refused.expect("a bucket stops at kv_bytes_per_plugin");
    assert_eq!(limit.setting, Some("kv_bytes_per_plugin"), "{limit}");
    assert!(
        written <= KV_LIMITS.bytes_per_plugin,
        "{written} bytes were written past kv_bytes_per_plugin = {}",
        KV_LIMITS.bytes_per_plugin
    );
}

async fn kv_isolation(store: &dyn KvStore) {
    let mine = bucket("alpha", "state");
    let theirs = bucket("beta", "state");
    let shared = BucketId::shared("state").unwrap();
    store.set(&mine, "k", b"alpha").await.unwrap();
    store.set(&theirs, "k", b"beta").await.unwrap();
    store.set(&shared, "k", b"shared").await.unwrap();
    assert_eq!(
        store.get(&mine, "k").await.unwrap().as_deref(),
        Some(&b"alpha"[..]),
        "a plugin's bucket is its own"
    );
    assert_eq!(
        store.get(&theirs, "k").await.unwrap().as_deref(),
        Some(&b"beta"[..]),
        "another plugin's bucket of one name"
    );
    assert_eq!(
        store.get(&shared, "k").await.unwrap().as_deref(),
        Some(&b"shared"[..]),
        "a shared bucket of one name"
    );
    store.delete(&mine, "k").await.unwrap();
    assert!(
        store.get(&theirs, "k").await.unwrap().is_some(),
        "a delete stays in its bucket"
    );
}

fn new_task(name: Option<&str>, key: Option<&str>) -> NewTask {
    NewTask {
        name: name.map(str::to_string),
        worker: WorkerId::Index(0),
        plugin: "contract".into(),
        plugin_version: "1".into(),
        factory: "work".into(),
        args: r#"{"n":1}"#.into(),
        retry: None,
        idempotency_key: key.map(str::to_string),
        queued: None,
        started: true,
        traceparent: None,
        resume: false,
    }
}

fn record(submitted: Submitted) -> super::TaskRecord {
    match submitted {
        Submitted::New(record) | Submitted::Existing(record) => record,
    }
}

/// Runs every durable-task check against `store`, which must hold no task
/// records yet.
pub async fn tasks(store: &dyn TaskStore) {
    let first = match store.submit(new_task(Some("first"), None)).await.unwrap() {
        Submitted::New(record) => record,
        other => panic!("submit of a new task: {other:?}"),
    };
    assert_eq!(first.name, "first");
    assert_eq!(first.attempt, 1, "a new record is attempt 1");
    assert_eq!(first.outcome, None);
    assert_eq!(first.args, r#"{"n":1}"#, "args are kept as submitted");
    // A queued task keeps where it waits, and has no attempt started yet.
    let queued = crate::storage::Queued {
        queue: "jobs".into(),
        key: Some("acme".into()),
        priority: -3,
        run_at_ms: Some(1_796_477_400_000),
    };
    let waiting = record(
        store
            .submit(NewTask {
                queued: Some(queued.clone()),
                started: false,
                ..new_task(Some("waiting"), None)
            })
            .await
            .unwrap(),
    );
    assert_eq!(waiting.queued.as_ref(), Some(&queued), "its place is kept");
    assert_eq!(
        waiting.attempt, 0,
        "a queued record's first attempt is at its turn"
    );
    assert_eq!(first.queued, None);
    store.forget(waiting.seq).await.unwrap();
    // One its queue starts at its submission has its first attempt in
    // its record.
    let at_once = record(
        store
            .submit(NewTask {
                queued: Some(queued.clone()),
                started: true,
                ..new_task(Some("at-once"), None)
            })
            .await
            .unwrap(),
    );
    assert_eq!(at_once.attempt, 1, "started at its submission");
    assert_eq!(at_once.queued.as_ref(), Some(&queued));
    store.forget(at_once.seq).await.unwrap();
    let unnamed = record(store.submit(new_task(None, None)).await.unwrap());
    assert_ne!(unnamed.seq, first.seq, "every record has its own number");
    assert_eq!(
        unnamed.name,
        format!("durable-{}", unnamed.seq),
        "an unnamed task is named by its number"
    );
    // Idempotency: the second submission with a key is the first one.
    // (This one also carries a trace, which its record keeps.)
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let keyed = match store
        .submit(NewTask {
            traceparent: Some(trace.into()),
            ..new_task(Some("keyed"), Some("key-1"))
        })
        .await
        .unwrap()
    {
        Submitted::New(record) => record,
        other => panic!("submit with a new key: {other:?}"),
    };
    assert_eq!(keyed.traceparent.as_deref(), Some(trace));
    assert_eq!(first.traceparent, None);
    match store
        .submit(new_task(Some("keyed-again"), Some("key-1")))
        .await
        .unwrap()
    {
        Submitted::Existing(existing) => {
            assert_eq!(existing.seq, keyed.seq, "the key names the first record")
        }
        other => panic!("a second submit with one key: {other:?}"),
    }
    assert_eq!(keyed.effective_key(), "key-1");
    // Attempts and cancels are recorded.
    store.attempt_started(first.seq, 2).await.unwrap();
    store.cancel_requested(unnamed.seq).await.unwrap();
    let lists = !store.redelivers();
    let unfinished = store.unfinished().await.unwrap();
    let seqs: Vec<u64> = unfinished.iter().map(|r| r.seq).collect();
    if lists {
        assert_eq!(
            seqs,
            [first.seq, unnamed.seq, keyed.seq],
            "unfinished, oldest first"
        );
        assert_eq!(unfinished[0].attempt, 2, "attempt_started is kept");
        assert!(unfinished[1].cancel_requested, "cancel_requested is kept");
        assert!(!unfinished[0].cancel_requested);
        assert_eq!(
            unfinished[2], keyed,
            "what submit answers is the record as stored"
        );
    } else {
        assert!(
            seqs.is_empty(),
            "a backend that redelivers lists nothing to recover: {seqs:?}"
        );
    }
    // A stop nobody recorded is no end unless the task was done.
    let stopped = Outcome::Cancelled {
        stage: CancelStage::Cooperative,
    };
    assert!(
        !store.ended(first.seq, &stopped, true).await.unwrap(),
        "a stop without a recorded cancel leaves the task to run again"
    );
    assert!(
        store.recently_ended(10).await.unwrap().is_empty(),
        "nothing has ended after an unrecorded stop"
    );
    // It runs again, as a new attempt, and ends.
    store.attempt_started(first.seq, 3).await.unwrap();
    let done = Outcome::Done {
        result: "42".into(),
    };
    assert!(
        store.ended(first.seq, &done, false).await.unwrap(),
        "an outcome ends the task"
    );
    assert!(
        store.ended(unnamed.seq, &stopped, true).await.unwrap(),
        "a stop after a recorded cancel ends the task"
    );
    if lists {
        let left: Vec<u64> = store
            .unfinished()
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, [keyed.seq], "ended tasks are no longer unfinished");
    }
    let ended = store.recently_ended(10).await.unwrap();
    let ended_seqs: Vec<u64> = ended.iter().map(|r| r.seq).collect();
    assert_eq!(
        ended_seqs,
        [first.seq, unnamed.seq],
        "recently ended, oldest first"
    );
    assert_eq!(ended[0].outcome, Some(done), "the outcome is kept");
    assert_eq!(ended[0].attempt, 3, "the last attempt_started is kept");
    assert!(ended[1].cancel_requested, "cancel_requested is kept");
    assert!(ended[0].ended_ms.is_some(), "the end's time is kept");
    assert_eq!(
        store
            .recently_ended(1)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [unnamed.seq],
        "recently_ended(1) is the latest"
    );
    // A record forgotten (its task never ran) is gone, key and all.
    store.forget(keyed.seq).await.unwrap();
    if lists {
        assert!(
            store.unfinished().await.unwrap().is_empty(),
            "forget drops the record"
        );
    }
    match store
        .submit(new_task(Some("keyed"), Some("key-1")))
        .await
        .unwrap()
    {
        Submitted::New(record) => {
            assert_ne!(record.seq, keyed.seq);
            store.forget(record.seq).await.unwrap();
        }
        other => panic!("a key whose record was forgotten is free again: {other:?}"),
    }
    assert_eq!(
        store.purge_ended().await.unwrap(),
        2,
        "purge drops the ended records"
    );
    assert!(
        store.recently_ended(10).await.unwrap().is_empty(),
        "nothing ended is left"
    );
}

/// Runs the journal checks against `store` if it keeps journals: steps
/// read back as appended, in order, across appends; emptied for a retry;
/// dropped with their record.
pub async fn journals(store: &dyn TaskStore) {
    if !store.keeps_journals() {
        return;
    }
    let step = |index: u32, call: &str, outcome: &[u8]| super::JournalStep {
        index,
        call: call.into(),
        outcome: outcome.to_vec(),
        at_ms: 1_796_477_400_000 + u64::from(index),
        micros: 7,
    };
    let task = record(
        store
            .submit(NewTask {
                resume: true,
                ..new_task(Some("journaled"), None)
            })
            .await
            .unwrap(),
    );
    assert!(task.resume, "a resuming task's record says so");
    assert!(
        store.steps(task.seq).await.unwrap().is_empty(),
        "a new journal"
    );
    // Any bytes, a group of steps at once.
    let first = vec![
        step(0, "seed", &[0, 255, 10, 13]),
        step(1, "sleep 5", b"17"),
    ];
    store.append_steps(task.seq, first.clone()).await.unwrap();
    store
        .append_steps(task.seq, vec![step(2, "kv get b k", b"")])
        .await
        .unwrap();
    let mut all = first;
    all.push(step(2, "kv get b k", b""));
    assert_eq!(
        store.steps(task.seq).await.unwrap(),
        all,
        "steps as appended"
    );
    store.clear_steps(task.seq).await.unwrap();
    assert!(
        store.steps(task.seq).await.unwrap().is_empty(),
        "emptied for a retry"
    );
    store
        .append_steps(task.seq, vec![step(0, "sleep 1", b"1")])
        .await
        .unwrap();
    assert_eq!(
        store.steps(task.seq).await.unwrap().len(),
        1,
        "appended afresh"
    );
    store.forget(task.seq).await.unwrap();
    assert!(
        store.steps(task.seq).await.unwrap().is_empty(),
        "a journal goes with its record"
    );
}

/// Runs every schedule check against `store`.
pub async fn schedules(store: &dyn ScheduleStore) {
    assert_eq!(
        store.schedule_mark("contract-tick").await.unwrap(),
        None,
        "a schedule never marked"
    );
    let mark = ScheduleMark {
        seen_until_ms: 1_700_000_000_000,
        paused: false,
    };
    store
        .set_schedule_mark("contract-tick", mark)
        .await
        .unwrap();
    assert_eq!(
        store.schedule_mark("contract-tick").await.unwrap(),
        Some(mark)
    );
    let paused = ScheduleMark {
        seen_until_ms: 1_700_000_060_000,
        paused: true,
    };
    store
        .set_schedule_mark("contract-tick", paused)
        .await
        .unwrap();
    assert_eq!(
        store.schedule_mark("contract-tick").await.unwrap(),
        Some(paused),
        "a mark is replaced"
    );
    store
        .add_schedule("contract-added", r#"{"every":"1m"}"#)
        .await
        .unwrap();
    store
        .add_schedule("contract-added", r#"{"every":"2m"}"#)
        .await
        .unwrap();
    let added = store.added_schedules().await.unwrap();
    let ours: Vec<&(String, String)> = added
        .iter()
        .filter(|(name, _)| name.starts_with("contract-"))
        .collect();
    assert_eq!(
        ours,
        [&(
            "contract-added".to_string(),
            r#"{"every":"2m"}"#.to_string()
        )],
        "add_schedule of one name replaces it"
    );
    store
        .set_schedule_mark("contract-added", mark)
        .await
        .unwrap();
    assert!(
        store.remove_schedule("contract-added").await.unwrap(),
        "remove says it was there"
    );
    assert!(
        !store.remove_schedule("contract-added").await.unwrap(),
        "a second remove says it was not"
    );
    assert_eq!(
        store.schedule_mark("contract-added").await.unwrap(),
        None,
        "remove forgets the mark too"
    );
    assert!(
        !store
            .added_schedules()
            .await
            .unwrap()
            .iter()
            .any(|(name, _)| name == "contract-added"),
        "a removed schedule is not listed"
    );
}
