//! The compile cache: compiled components on disk, so a restart or an
//! unchanged hot-load compiles nothing.
//!
//! wasmtime runs deserialized code unchecked: one flipped byte in an entry
//! can crash the host, or run native code nobody compiled. So every entry
//! carries an HMAC-SHA256 of its bytes under a key that only this user can
//! read, and is verified before wasmtime sees it. An entry that fails (a
//! disk error, a torn write, tampering) is a miss: the component is
//! compiled again and the entry rewritten, never a crash or a refusal.
//!
//! A directory that other users can write is refused, with the reason: they
//! could replace entries and the key, and so choose the code the host runs.
//!
//! An entry is named by a SHA-256 of the component's bytes and of every
//! engine setting that shapes compiled code (wasmtime's
//! `precompile_compatibility_hash`, which includes its version, and the
//! format our vendored copy of it adds), so a changed component,
//! configuration or wasmtime never loads stale code.
//!
//! Each new component, configuration or taskhost version adds an entry
//! (a compiled Python plugin is tens of MB) and nothing else would ever
//! remove the old ones, so the cache is bounded: after each write, the
//! entries least recently used (written or loaded: a load refreshes an
//! entry's modification time) are removed until the rest fit under its
//! limit (`--compile-cache-max-mb`).

use crate::private_files::{
    create_private_dir, create_work_file, hex, open_nofollow, write_atomically,
};
use anyhow::{Context, Result, anyhow, bail};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::hash::Hash;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use wasmtime::Engine;
use wasmtime::component::Component;

/// First bytes of every entry: the format and its version.
const MAGIC: &[u8; 8] = b"thcache1";

/// What our vendored wasmtime adds to a compiled module's serialized form
/// (vendor/README.md: `Module::lazy_table_segments`), hashed into every
/// entry's name. wasmtime checks only its version (48.0.8, unchanged) when
/// it deserializes, so without this an entry written by a build before the
/// change would be read by one after it, field by field out of step.
const VENDORED_FORMAT: &str =
    "wasmtime-environ 48.0.8 with lazy_table_segments, VMFuncRefs outside the VMContext";

/// Length of the MAC that follows the magic.
const MAC_LEN: usize = 32;

/// The key's file in the cache directory.
const KEY_FILE: &str = "key";

/// Entries are `<64 hex digits>.cwasm`.
const ENTRY_SUFFIX: &str = ".cwasm";

/// Work files are written under this prefix, then renamed into place.
const WORK_PREFIX: &str = ".work.";

/// A work file older than this belongs to a host that died mid-write (a
/// write takes milliseconds): it is removed when a cache is opened.
const STALE_WORK: Duration = Duration::from_secs(600);

/// Larger entries are not read: a compiled component is a few times its
/// component's size, and components are bounded by
/// [`crate::config::MAX_COMPONENT_BYTES`].
const MAX_ENTRY_BYTES: u64 = 4 * crate::config::MAX_COMPONENT_BYTES;

/// The cache's default limit on the bytes of its entries: a few dozen
/// compiled Python or JavaScript plugins (30-60 MB each), hundreds of Rust
/// ones.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

type HmacSha256 = Hmac<Sha256>;

/// An open compile cache and what it did since it was opened.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    max_bytes: u64,
    /// Entries this host loaded or wrote: if the limit makes it remove
    /// one of these, the limit is below what this host runs, and says so.
    used: Mutex<HashSet<PathBuf>>,
    hits: AtomicUsize,
    misses: AtomicUsize,
    rejected: AtomicUsize,
    unwritten: AtomicUsize,
    evicted: AtomicUsize,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// Opens (creating it, private to this user) the cache at `dir`,
    /// removes work files that crashed hosts left behind, and the least
    /// recently used entries past `max_bytes` (a limit lowered since the
    /// last run takes effect at once). Fails if the directory or its key
    /// could be written or read by another user.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<CompileCache> {
        create_private_dir(dir)
            .with_context(|| format!("cannot create the compile cache {}", dir.display()))?;
        check_private_dir(dir)?;
        let key = load_or_create_key(dir)?;
        let cache = CompileCache {
            dir: dir.to_path_buf(),
            key,
            max_bytes,
            used: Mutex::new(HashSet::new()),
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
            evicted: AtomicUsize::new(0),
        };
        cache.remove_stale_work();
        cache.evict(None);
        Ok(cache)
    }

    /// The directory it was opened at (for `taskhost`: `--compile-cache`,
    /// `$TASKHOST_COMPILE_CACHE`, or `compiled` in the user's cache home).
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Components loaded from a verified entry.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Components compiled: no entry, or one that was rejected.
    pub fn misses(&self) -> usize {
        self.misses.load(Ordering::Relaxed)
    }

    /// Entries that failed verification (or deserialization) and were
    /// replaced by a fresh compile.
    pub fn rejected(&self) -> usize {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Compiles that could not be stored (a full disk, say).
    pub fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::Relaxed)
    }

    /// Entries removed to keep the cache under its limit.
    pub fn evicted(&self) -> usize {
        self.evicted.load(Ordering::Relaxed)
    }

    /// The limit on the bytes of its entries.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The bytes its entries hold now.
    pub fn stored_bytes(&self) -> u64 {
        self.entries().iter().map(|entry| entry.bytes).sum()
    }

    /// The path of the entry for `component` compiled by `engine`.
    pub fn entry_path(&self, engine: &Engine, component: &[u8]) -> PathBuf {
        let mut hasher = HashInto(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        VENDORED_FORMAT.hash(&mut hasher);
        let mut digest = hasher.0;
        digest.update(component);
        self.dir
            .join(format!("{}{ENTRY_SUFFIX}", hex(&digest.finalize())))
    }

    /// `component` compiled for `engine`, and its serialized form (for
    /// other engines of the same configuration; `None` if it could not be
    /// serialized): from a verified entry when there is one, else compiled
    /// and stored. Fails only if it does not compile. Blocking (file I/O
    /// and compiling): call it off the async threads.
    pub fn compiled(
        &self,
        engine: &Engine,
        component: &[u8],
    ) -> wasmtime::Result<(Component, Option<Vec<u8>>)> {
        let path = self.entry_path(engine, component);
        match self.read_verified(&path) {
            Ok(Some(artifact)) => {
                // SAFETY: the bytes are what `Component::serialize` wrote
                // for this engine configuration, as the MAC under this
                // user's private key proves; wasmtime still checks their
                // version and configuration.
                match unsafe { Component::deserialize(engine, &artifact) } {
                    Ok(loaded) => {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        self.mark_used(&path);
                        return Ok((loaded, Some(artifact)));
                    }
                    Err(error) => self.reject(&path, &format!("{error:#}")),
                }
            }
            Ok(None) => {}
            Err(reason) => self.reject(&path, &reason),
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let compiled = Component::from_binary(engine, component)?;
        let artifact = match compiled.serialize() {
            Ok(artifact) => artifact,
            Err(error) => {
                self.unwritten.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("compile cache: cannot serialize a compiled component: {error:#}");
                return Ok((compiled, None));
            }
        };
        match self.write(&path, &artifact) {
            Ok(()) => {
                self.mark_used(&path);
                self.evict(Some(&path));
            }
            Err(error) => {
                self.unwritten.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "compile cache: cannot store {}: {error:#}; the component was compiled and \
                     runs, it will be compiled again next time",
                    path.display()
                );
            }
        }
        Ok((compiled, Some(artifact)))
    }

    /// Records that this host uses the entry at `path` and makes it the
    /// most recently used: its modification time is what eviction orders
    /// entries by. A failure only makes it older than it is.
    fn mark_used(&self, path: &Path) {
        if let Ok(file) = open_nofollow(path) {
            let _ = file.set_modified(SystemTime::now());
        }
        self.used
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(path.to_path_buf());
    }

    /// The entries in the directory, with their sizes and last uses.
    fn entries(&self) -> Vec<Entry> {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        listing
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(ENTRY_SUFFIX))
            .filter_map(|entry| {
                let meta = entry.metadata().ok().filter(|m| m.is_file())?;
                Some(Entry {
                    path: entry.path(),
                    bytes: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect()
    }

    /// Removes the least recently used entries until the rest fit under
    /// the limit, never `keep` (the entry just written: the host runs it).
    /// Another host sharing the directory may remove an entry this one is
    /// about to read: that read is a miss, and compiles.
    fn evict(&self, keep: Option<&Path>) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
        if total <= self.max_bytes {
            return;
        }
        // Oldest first; the name breaks ties, so every host agrees.
        entries.sort_by(|a, b| (a.used, &a.path).cmp(&(b.used, &b.path)));
        let limit_mb = self.max_bytes >> 20;
        for entry in entries {
            if total <= self.max_bytes {
                break;
            }
            if Some(entry.path.as_path()) == keep {
                continue;
            }
            match std::fs::remove_file(&entry.path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(
                        "compile cache: cannot remove {} to stay under its limit: {error}",
                        entry.path.display()
                    );
                    continue;
                }
            }
            total -= entry.bytes;
            self.evicted.fetch_add(1, Ordering::Relaxed);
            let ours = self
                .used
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .contains(&entry.path);
            if ours {
                tracing::warn!(
                    "compile cache: removed {} ({} KiB), a component this host loaded, to stay \
                     under {limit_mb} MiB: the next start compiles it again; raise \
                     --compile-cache-max-mb",
                    entry.path.display(),
                    entry.bytes >> 10
                );
            } else {
                tracing::info!(
                    "compile cache: removed the least recently used entry {} ({} KiB) to stay \
                     under {limit_mb} MiB (--compile-cache-max-mb)",
                    entry.path.display(),
                    entry.bytes >> 10
                );
            }
        }
        if total > self.max_bytes {
            tracing::warn!(
                "compile cache {}: its entries hold {} MiB, more than its limit of {limit_mb} \
                 MiB{}; raise --compile-cache-max-mb",
                self.dir.display(),
                total >> 20,
                if keep.is_some() {
                    " (the entry just written is kept: this host runs it)"
                } else {
                    ""
                }
            );
        }
    }

    fn reject(&self, path: &Path, reason: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "compile cache entry {} rejected ({reason}); compiling again",
            path.display()
        );
    }

    /// The artifact stored at `path` (the entry with its header taken
    /// off), if there is an entry; `Err` with the reason if there is one
    /// but it fails verification.
    fn read_verified(&self, path: &Path) -> Result<Option<Vec<u8>>, String> {
        let mut file = match open_nofollow(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("cannot open it: {error}")),
        };
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat it: {e}"))?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        if meta.len() > MAX_ENTRY_BYTES {
            return Err(format!("{} bytes, more than any entry", meta.len()));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        Read::by_ref(&mut file)
            .take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Err("not a taskhost cache entry".into());
        };
        if rest.len() < MAC_LEN {
            return Err("truncated".into());
        }
        let (tag, artifact) = rest.split_at(MAC_LEN);
        self.mac(path, artifact)
            .verify_slice(tag)
            .map_err(|_| "its checksum does not match: corrupt or tampered".to_string())?;
        bytes.drain(..MAGIC.len() + MAC_LEN);
        Ok(Some(bytes))
    }

    /// The MAC of an entry binds its contents to its name, so a valid
    /// entry cannot be passed off as another component's.
    fn mac(&self, path: &Path, artifact: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name);
        mac.update(artifact);
        mac
    }

    /// Writes an entry atomically, so a reader never sees half of one.
    fn write(&self, path: &Path, artifact: &[u8]) -> Result<()> {
        let tag = self.mac(path, artifact).finalize().into_bytes();
        write_atomically(path, WORK_PREFIX, &[MAGIC, &tag, artifact])
    }

    /// Removes work files of writes that never finished (a host killed
    /// mid-write, a full disk before this version cleaned up after itself).
    fn remove_stale_work(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // `.wip-atomic-write-mod`: wasmtime's own cache, used before.
            if !(name.starts_with(WORK_PREFIX) || name.ends_with(".wip-atomic-write-mod")) {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_none_or(|age| age >= STALE_WORK);
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// An entry as eviction sees it.
struct Entry {
    path: PathBuf,
    bytes: u64,
    /// Its modification time: when it was last written or loaded.
    used: SystemTime,
}

/// Feeds what a `Hash` impl writes into a SHA-256.
struct HashInto(Sha256);

impl std::hash::Hasher for HashInto {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// Refuses a cache directory that another user could write to.
#[cfg(unix)]
fn check_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the compile cache {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("the compile cache {} is not a directory", dir.display());
    }
    let me = rustix::process::geteuid().as_raw();
    let fix = "choose another directory (--compile-cache DIR or TASKHOST_COMPILE_CACHE), \
               or run without one (--no-compile-cache)";
    if meta.uid() != me {
        bail!(
            "refusing the compile cache {}: it belongs to uid {}, not to this user (uid {me}), \
             who could put native code there for this host to run; {fix}",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "refusing the compile cache {}: its group or other users can write to it \
             (mode {mode:04o}), and so could put native code there for this host to run; \
             `chmod go-w {}`, or {fix}",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// The directory's key: read if present (it must be private), else made.
/// Two hosts creating it at once agree: the second one reads the first's.
fn load_or_create_key(dir: &Path) -> Result<[u8; 32]> {
    let path = dir.join(KEY_FILE);
    for _ in 0..2 {
        match read_key(&path) {
            Ok(Some(key)) => return Ok(key),
            Ok(None) => {}
            Err(error) => return Err(error),
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow!("no randomness for the cache key: {e}"))?;
        let (work, mut file) = create_work_file(dir, WORK_PREFIX)?;
        let written = file
            .write_all(&key)
            .and_then(|()| file.sync_data())
            // A link fails if the key exists: never replace another's key.
            .and_then(|()| std::fs::hard_link(&work, &path));
        let _ = std::fs::remove_file(&work);
        match written {
            Ok(()) => return Ok(key),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot create the cache key {}", path.display()));
            }
        }
    }
    bail!("cannot settle the cache key {}", path.display())
}

fn read_key(path: &Path) -> Result<Option<[u8; 32]>> {
    let mut file = match open_nofollow(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot open the cache key {}", path.display()));
        }
    };
    let meta = file.metadata()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o7777;
        if !meta.is_file() || meta.uid() != rustix::process::geteuid().as_raw() || mode & 0o077 != 0
        {
            bail!(
                "refusing the compile cache key {}: it must be a regular file of this user's, \
                 readable by nobody else (it is mode {mode:04o}, uid {}); remove it and a new \
                 one is made",
                path.display(),
                meta.uid()
            );
        }
    }
    let mut key = [0u8; 32];
    let mut extra = [0u8; 1];
    if meta.len() != 32
        || file.read_exact(&mut key).is_err()
        || file.read(&mut extra).ok() != Some(0)
    {
        bail!(
            "the compile cache key {} is damaged (not 32 bytes); remove it and a new one is made",
            path.display()
        );
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::default()
    }

    const COMPONENT: &str = "(component)";

    #[test]
    fn a_stored_entry_is_a_hit_and_a_damaged_one_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = wat::parse_str(COMPONENT).unwrap();
        let engine = engine();
        let cache = CompileCache::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        cache.compiled(&engine, &bytes).unwrap();
        cache.compiled(&engine, &bytes).unwrap();
        assert_eq!((cache.hits(), cache.misses()), (1, 1));

        let entry = cache.entry_path(&engine, &bytes);
        let mut stored = std::fs::read(&entry).unwrap();
        let last = stored.len() - 1;
        stored[last] ^= 0x40;
        std::fs::write(&entry, &stored).unwrap();
        cache.compiled(&engine, &bytes).unwrap();
        assert_eq!((cache.hits(), cache.misses(), cache.rejected()), (1, 2, 1));
        // ...and the entry was rewritten.
        cache.compiled(&engine, &bytes).unwrap();
        assert_eq!(cache.hits(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        let error = CompileCache::open(dir.path(), DEFAULT_MAX_BYTES)
            .unwrap_err()
            .to_string();
        assert!(error.contains("mode 0775"), "{error}");
        assert!(error.contains("chmod go-w"), "{error}");
    }

    #[test]
    fn stale_work_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!("{WORK_PREFIX}dead"));
        let fresh = dir.path().join(format!("{WORK_PREFIX}live"));
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(&fresh, b"half").unwrap();
        let old = std::time::SystemTime::now() - 2 * STALE_WORK;
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        CompileCache::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
    }

    /// Sets the last use of the entry for `component` to `age` ago.
    fn age(cache: &CompileCache, component: &[u8], age: Duration) {
        std::fs::File::options()
            .write(true)
            .open(cache.entry_path(&engine(), component))
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }

    fn components() -> Vec<Vec<u8>> {
        [
            "(component)",
            "(component (core module))",
            "(component (core module (func)))",
            "(component (core module (func) (func)))",
        ]
        .iter()
        .map(|wat| wat::parse_str(wat).unwrap())
        .collect()
    }

    /// The cache is bounded: past its limit the least recently used entries
    /// go, where a load counts as a use, and the entry just written stays.
    #[test]
    fn the_least_recently_used_entries_go_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let [a, b, c, d] = <[Vec<u8>; 4]>::try_from(components()).unwrap();
        let size = |cache: &CompileCache, component: &[u8]| {
            std::fs::metadata(cache.entry_path(&engine, component))
                .unwrap()
                .len()
        };
        let cache = CompileCache::open(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        for component in [&a, &b, &c, &d] {
            cache.compiled(&engine, component).unwrap();
        }
        let sizes = [&a, &b, &c, &d].map(|component| size(&cache, component));
        assert_eq!(cache.stored_bytes(), sizes.iter().sum::<u64>());
        std::fs::remove_file(cache.entry_path(&engine, &d)).unwrap();
        // a is the oldest, then b, then c.
        for (component, hours) in [(&a, 3), (&b, 2), (&c, 1)] {
            age(&cache, component, Duration::from_secs(hours * 3600));
        }

        // Opening with a limit that b and c fit under removes a.
        let limit = sizes[1] + sizes[2];
        let cache = CompileCache::open(dir.path(), limit).unwrap();
        assert_eq!(cache.evicted(), 1);
        assert!(!cache.entry_path(&engine, &a).exists());
        assert_eq!(cache.stored_bytes(), limit);

        // Loading b makes it newer than c; writing d then removes c, the
        // least recently used, and keeps b and d.
        let limit = sizes[1] + sizes[2].max(sizes[3]);
        let cache = CompileCache::open(dir.path(), limit).unwrap();
        assert_eq!(cache.evicted(), 0);
        cache.compiled(&engine, &b).unwrap();
        cache.compiled(&engine, &d).unwrap();
        assert_eq!((cache.hits(), cache.misses(), cache.evicted()), (1, 1, 1));
        assert!(!cache.entry_path(&engine, &c).exists());
        assert!(cache.entry_path(&engine, &b).exists());
        assert!(cache.entry_path(&engine, &d).exists());

        // An entry larger than the limit is still written and kept (the
        // host runs it), and everything else goes.
        let cache = CompileCache::open(dir.path(), 1).unwrap();
        assert_eq!(cache.evicted(), 2);
        cache.compiled(&engine, &a).unwrap();
        assert_eq!(cache.stored_bytes(), sizes[0]);
        assert!(
            dir.path().join(KEY_FILE).exists(),
            "the key is not an entry"
        );
    }
}
