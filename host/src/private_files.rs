//! Files only this user may read or replace: the compile cache's entries
//! and key, the control state file. One way to make a private directory,
//! to write a file atomically without following anything planted in its
//! place, and to open one without following a link or waiting on a FIFO.

use anyhow::{Context, Result, anyhow};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Lowercase hex digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates `dir` and its missing parents with mode 0700 (an existing
/// directory keeps its mode: callers check it).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Opens `path` for reading, refusing to follow a symlink at its end, and
/// without waiting should it be a FIFO.
pub(crate) fn open_nofollow(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(
            (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
        );
    }
    options.open(path)
}

/// A new file `<prefix><random hex>` in `dir`, created exclusively (never
/// an existing file or a planted symlink) and readable by this user only.
pub(crate) fn create_work_file(dir: &Path, prefix: &str) -> Result<(PathBuf, File)> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| anyhow!("no randomness for a file name: {e}"))?;
    let path = dir.join(format!("{prefix}{}", hex(&suffix)));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    Ok((path, file))
}

/// Writes `parts`, one after the other, as the file `path`: into a work
/// file of [`create_work_file`] beside it, synced, then renamed into place,
/// so a reader never sees half a file; the work file is removed if
/// anything fails (a full disk leaves nothing behind).
pub(crate) fn write_atomically(path: &Path, work_prefix: &str, parts: &[&[u8]]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (work, mut file) = create_work_file(dir, work_prefix)?;
    let written = (|| -> Result<()> {
        for part in parts {
            file.write_all(part)?;
        }
        file.sync_data()?;
        drop(file);
        std::fs::rename(&work, path)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&work);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}
