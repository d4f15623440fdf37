//! Where taskhost keeps what it can rebuild: compiled components and the
//! shared cargo target directory of plugin builds.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// `$XDG_CACHE_HOME/taskhost`, else `~/.cache/taskhost`.
pub(crate) fn cache_home() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            std::env::var_os("HOME").context("HOME is not set: cannot place the cache")?,
        )
        .join(".cache"),
    };
    Ok(base.join("taskhost"))
}

/// Env var that moves the compile cache.
pub(crate) const COMPILE_CACHE_ENV: &str = "TASKHOST_COMPILE_CACHE";

/// `$TASKHOST_COMPILE_CACHE`, else `<cache home>/compiled`.
pub(crate) fn compile_cache_dir() -> Result<PathBuf> {
    match std::env::var_os(COMPILE_CACHE_ENV) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(cache_home()?.join("compiled")),
    }
}
