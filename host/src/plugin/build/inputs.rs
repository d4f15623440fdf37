//! Skipping a Python or JavaScript build whose inputs did not change.
//!
//! componentize-py and componentize-js take 30-90 s, and their output is
//! new bytes each time, so with `build = "..."` in app.toml every `check`
//! and `run` rebuilt, and the compile cache, keyed by the bytes, compiled
//! again (issue 24: 1 min 37 s to the first task). A build now records the
//! SHA-256 of everything that goes into it (the plugin's source files, the
//! SDK, the WIT, the tool and its version) and of what it wrote; the next
//! build with the same inputs, whose output is still the one it wrote,
//! returns that output at once: the same bytes, so nothing is compiled.
//!
//! The record lives in taskhost's cache (`<cache>/<lang>/built/`), keyed by
//! the output's path, not beside the plugin.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Past these a plugin directory is not hashed (the build just runs): a
/// wrong `build` path (a home directory) must not be read whole.
const MAX_FILES: usize = 20_000;
const MAX_BYTES: u64 = 512 << 20;

/// What went into one build, hashed.
pub(super) struct Inputs {
    digest: String,
    record: PathBuf,
    out: PathBuf,
}

/// Hashes `dir`'s sources (every file but outputs, hidden entries, caches
/// and `node_modules`, whose lock file `extra_files` may name instead) and
/// `fixed` (the tool's version, the SDK, the WIT...). None when the
/// directory is too big to hash.
pub(super) fn hash(
    cache: &Path,
    dir: &Path,
    out: &Path,
    fixed: &[&[u8]],
    extra_files: &[&Path],
) -> Result<Option<Inputs>> {
    let mut files = Vec::new();
    if !collect(dir, &mut files)? {
        return Ok(None);
    }
    for extra in extra_files {
        let path = dir.join(extra);
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for part in fixed {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let mut total = 0u64;
    for file in &files {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        total += bytes.len() as u64;
        if total > MAX_BYTES {
            return Ok(None);
        }
        let name = file.strip_prefix(dir).unwrap_or(file).to_string_lossy();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let key = hex(&Sha256::digest(out.to_string_lossy().as_bytes()));
    Ok(Some(Inputs {
        digest: hex(&hasher.finalize()),
        record: cache.join("built").join(key),
        out,
    }))
}

/// Adds the source files under `dir` to `files`; false past the bounds.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<bool> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.')
            || matches!(name.as_ref(), "node_modules" | "__pycache__" | "target")
            || name.ends_with(".wasm")
            || name.ends_with(".tmp")
        {
            continue;
        }
        // Through symbolic links: a linked source is a source. A loop of
        // links ends at MAX_FILES (the build then just runs).
        let Ok(kind) = std::fs::metadata(entry.path()).map(|m| m.file_type()) else {
            continue;
        };
        if kind.is_dir() {
            if !collect(&entry.path(), files)? {
                return Ok(false);
            }
        } else if kind.is_file() {
            files.push(entry.path());
            if files.len() > MAX_FILES {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// A short name for the plugin built to `out`, the same every build: what
/// its scratch directory is called.
pub(super) fn build_key(out: &Path) -> String {
    let out = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    hex(&Sha256::digest(out.to_string_lossy().as_bytes()))[..16].to_string()
}

/// Whether the build of `dir` can be skipped: `inputs` (none when they
/// could not be hashed) built the file at the output last. Says so when
/// the build's output is shown.
pub(super) fn up_to_date(inputs: Option<&Inputs>, dir: &Path, output: super::BuildOutput) -> bool {
    let Some(inputs) = inputs.filter(|inputs| inputs.unchanged()) else {
        return false;
    };
    if output == super::BuildOutput::Inherit {
        eprintln!(
            "taskhost: {} is up to date with {}",
            inputs.out.display(),
            dir.display()
        );
    }
    true
}

impl Inputs {
    /// Whether the last build with these inputs wrote the file that is at
    /// the output now.
    pub(super) fn unchanged(&self) -> bool {
        let Ok(record) = std::fs::read_to_string(&self.record) else {
            return false;
        };
        let mut lines = record.lines();
        let (Some(inputs), Some(output)) = (lines.next(), lines.next()) else {
            return false;
        };
        inputs == self.digest
            && std::fs::read(&self.out).is_ok_and(|bytes| hex(&Sha256::digest(&bytes)) == output)
    }

    /// Records that these inputs built the file now at the output.
    pub(super) fn record(&self) -> Result<()> {
        let bytes = std::fs::read(&self.out)
            .with_context(|| format!("cannot read {}", self.out.display()))?;
        if let Some(parent) = self.record.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = format!("{}\n{}\n", self.digest, hex(&Sha256::digest(&bytes)));
        super::write_atomically(&self.record, text.as_bytes())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 16 hex digits of the SHA-256 of `parts`, each length-prefixed so no
/// two lists of parts share a key: names a cache directory by what it
/// holds.
pub(crate) fn content_key<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    hex(&digest.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_skipped_only_while_its_inputs_and_output_are_unchanged() {
        let cache = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "x = 1\n").unwrap();
        std::fs::create_dir(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/app.pyc"), "junk").unwrap();
        let out = dir.path().join("app.wasm");
        let inputs = |fixed: &[u8]| {
            hash(cache.path(), dir.path(), &out, &[fixed], &[])
                .unwrap()
                .unwrap()
        };
        assert!(!inputs(b"v1").unchanged(), "nothing was built yet");
        std::fs::write(&out, "component").unwrap();
        inputs(b"v1").record().unwrap();
        assert!(inputs(b"v1").unchanged());
        // Caches and the output itself are not inputs.
        std::fs::write(dir.path().join("__pycache__/app.pyc"), "other").unwrap();
        assert!(inputs(b"v1").unchanged());
        // Another tool version, a changed source, a replaced output: build.
        assert!(!inputs(b"v2").unchanged());
        std::fs::write(dir.path().join("app.py"), "x = 2\n").unwrap();
        assert!(!inputs(b"v1").unchanged());
        std::fs::write(dir.path().join("app.py"), "x = 1\n").unwrap();
        assert!(inputs(b"v1").unchanged());
        std::fs::write(&out, "tampered").unwrap();
        assert!(!inputs(b"v1").unchanged());
    }
}
