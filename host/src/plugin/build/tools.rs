//! What the Python and JavaScript builds share: the WIT they build
//! against, a scratch directory per build, running a tool with its output
//! shown or kept, and installing a tool into taskhost's cache once.

use super::BuildOutput;
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The WIT files, as this taskhost links them: a guest is always built
/// against the host that builds it.
const WIT: &[(&str, &str)] = &[
    ("plugin.wit", include_str!("../../../../wit/plugin.wit")),
    (
        "deps/config/store.wit",
        include_str!("../../../../wit/deps/config/store.wit"),
    ),
    (
        "deps/config/world.wit",
        include_str!("../../../../wit/deps/config/world.wit"),
    ),
    (
        "deps/keyvalue/atomic.wit",
        include_str!("../../../../wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "deps/keyvalue/batch.wit",
        include_str!("../../../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "deps/keyvalue/store.wit",
        include_str!("../../../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "deps/keyvalue/watch.wit",
        include_str!("../../../../wit/deps/keyvalue/watch.wit"),
    ),
    (
        "deps/keyvalue/world.wit",
        include_str!("../../../../wit/deps/keyvalue/world.wit"),
    ),
    (
        "deps/db/types.wit",
        include_str!("../../../../wit/deps/db/types.wit"),
    ),
    (
        "deps/db/postgres.wit",
        include_str!("../../../../wit/deps/db/postgres.wit"),
    ),
    (
        "deps/db/redis.wit",
        include_str!("../../../../wit/deps/db/redis.wit"),
    ),
];

/// The WIT files' texts, for a build's input digest.
pub(super) fn wit_texts<'a>() -> impl Iterator<Item = &'a [u8]> {
    WIT.iter().map(|(_, text)| text.as_bytes())
}

/// Writes the WIT package into `dir` (`plugin.wit` and `deps/`).
pub(super) fn write_wit(dir: &Path) -> Result<()> {
    write_files(dir, WIT)
}

/// Writes `files` (relative path, text) under `dir`, making directories.
pub(super) fn write_files(dir: &Path, files: &[(&str, &str)]) -> Result<()> {
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Runs the componentizer `command`, which writes `component`, and moves
/// what it wrote to `out` (atomically: a running host watching `out` never
/// sees half a file). Returns `out`.
///
/// Unless `verbose`, its output is kept, and if it fails, `explain` picks
/// the user's error out of it (their file, line and message: see
/// `diagnose`); the whole output is shown only when nothing is found.
pub(super) fn componentize(
    command: Command,
    options: &super::BuildOptions,
    what: &str,
    component: &Path,
    out: PathBuf,
    explain: impl FnOnce(&str) -> Option<String>,
) -> Result<PathBuf> {
    if options.verbose {
        run(command, options.output, what)?;
    } else {
        run_explained(command, what, explain)?;
    }
    let bytes = std::fs::read(component)
        .with_context(|| format!("{what} succeeded but wrote no {}", component.display()))?;
    super::write_atomically(&out, &bytes)?;
    Ok(out)
}

/// Runs `command`, its output shown (Inherit) or kept for the error.
pub(super) fn run(mut command: Command, output: BuildOutput, what: &str) -> Result<()> {
    let status = match output {
        BuildOutput::Inherit => command
            .status()
            .with_context(|| format!("cannot run {what}"))?,
        BuildOutput::Capture => {
            let out = command
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .with_context(|| format!("cannot run {what}"))?;
            if !out.status.success() {
                bail!(
                    "{what} failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            out.status
        }
    };
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Runs `command` with its output kept; if it fails, the error is what
/// `explain` finds in that output, else the whole output.
fn run_explained(
    mut command: Command,
    what: &str,
    explain: impl FnOnce(&str) -> Option<String>,
) -> Result<()> {
    let out = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match explain(&text) {
        Some(error) => bail!("{error}\n(`--verbose` shows {what}'s own output)"),
        None => bail!("{what} failed ({}):\n{text}", out.status),
    }
}

/// Makes `dir` hold an installed tool, running `install` into it unless a
/// finished install (its `.installed` marker) is there already. Parallel
/// builds take a lock in `dir`'s parent so only one installs; a half-made
/// `dir` (an install that died) is cleared first.
pub(super) fn install_once(
    dir: &Path,
    what: &str,
    install: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let done = dir.join(".installed");
    if done.is_file() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let _lock = lock_file(&parent.join(".install-lock"))?;
    if done.is_file() {
        return Ok(());
    }
    eprintln!("taskhost: installing {what} into {} (once)", dir.display());
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot clear a half-made {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    install(dir)?;
    std::fs::write(&done, what).with_context(|| format!("cannot write {}", done.display()))
}

/// Opens (creating) `path` and waits for its exclusive lock, held until
/// the file is dropped: how builds and installs take turns.
fn lock_file(path: &Path) -> Result<std::fs::File> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(lock)
}

/// Explains a missing interpreter: which command, the env var that picks
/// another, and what to install.
pub(super) fn missing_tool(
    command: &str,
    env: &str,
    install: &str,
    error: anyhow::Error,
) -> anyhow::Error {
    anyhow!("cannot run `{command}` (set {env} to use another, or install {install}): {error:#}")
}

/// A scratch directory for one build, removed when dropped.
///
/// Its path is the same for every build of the same plugin (`key`): the
/// componentizers snapshot an interpreter whose state holds the paths it
/// read from, so a path that changed from build to build (it held the
/// process id and the time) made every build's bytes differ. Builds of one
/// plugin at once take turns (a lock beside the directory).
pub(super) struct WorkDir {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl WorkDir {
    pub(super) fn new(cache: &Path, key: &str) -> Result<WorkDir> {
        std::fs::create_dir_all(cache)
            .with_context(|| format!("cannot create {}", cache.display()))?;
        let dir = cache.join(format!("build-{key}"));
        let lock = lock_file(&cache.join(format!("build-{key}.lock")))?;
        // What a build that died left behind.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot make the build directory {}", dir.display()))?;
        Ok(WorkDir { dir, _lock: lock })
    }

    pub(super) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
