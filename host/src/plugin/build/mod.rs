//! `taskhost build`: a plugin crate -> a component file. (A Python plugin
//! goes through [`python`], a JavaScript one through [`js`] instead.)
//!
//! Two toolchains can do it, tried in this order:
//! - **rustup** with the `wasm32-wasip2` target: rustc links a component
//!   directly;
//! - **Debian's Rust** (`rustc-web`, `cargo-web`, `rust-web-src`, `lld`,
//!   `wasi-libc`): builds a `wasm32-wasip1` core module with a freshly built
//!   std (`-Zbuild-std`), then wit-component wraps it with the WASI preview1
//!   reactor adapter.
//!
//! All plugins share one cargo target directory, so dependencies, and the
//! wasm std on the Debian path, are compiled once and reused by every plugin
//! and every later build.

mod diagnose;
mod inputs;
pub mod js;
pub mod python;
mod tools;

use anyhow::{Context, Result, anyhow, bail};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Which toolchain builds the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toolchain {
    /// rustup's `wasm32-wasip2` target.
    Rustup,
    /// Debian's Rust with `-Zbuild-std` for `wasm32-wasip1`, then adapted.
    Debian,
}

impl Toolchain {
    fn target(self) -> &'static str {
        match self {
            Toolchain::Rustup => "wasm32-wasip2",
            Toolchain::Debian => "wasm32-wasip1",
        }
    }
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Toolchain::Rustup => "rustup (wasm32-wasip2)",
            Toolchain::Debian => "Debian rustc-web (wasm32-wasip1 + adapter)",
        })
    }
}

/// What the cargo output of a build does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BuildOutput {
    /// Cargo's progress goes to our stderr (the CLI).
    #[default]
    Inherit,
    /// Cargo's output is kept and shown only if the build fails.
    Capture,
}

/// How to build. The defaults pick the toolchain and the shared target
/// directory themselves.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Force a toolchain instead of detecting one.
    pub toolchain: Option<Toolchain>,
    /// Cargo target directory shared by all plugin builds.
    pub target_dir: Option<PathBuf>,
    /// Where to write the component; default `<crate dir>/<crate name>.wasm`.
    pub out: Option<PathBuf>,
    /// Where the build tools' output goes: to stderr (the CLI's default), or
    /// kept and shown only if the build fails.
    pub output: BuildOutput,
    /// A failed Python or JavaScript build shows the componentizer's own
    /// output whole, not just the user's error it found there.
    pub verbose: bool,
}

/// Env var that forces a toolchain (`rustup` or `debian`) for every build.
pub const TOOLCHAIN_ENV: &str = "TASKHOST_TOOLCHAIN";
/// Env var that sets the shared cargo target directory.
pub const TARGET_DIR_ENV: &str = "TASKHOST_TARGET_DIR";

/// Builds the plugin in `crate_dir` (a Rust crate, a Python project, see
/// [`python`], or a JavaScript package, see [`js`]) and returns the
/// component's path.
pub fn build(crate_dir: &Path, options: &BuildOptions) -> Result<PathBuf> {
    if python::is_python_plugin(crate_dir) {
        return python::build(crate_dir, options);
    }
    if js::is_js_plugin(crate_dir) {
        return js::build(crate_dir, options);
    }
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} is not a plugin: it has no Cargo.toml (a Rust plugin), pyproject.toml (a \
             Python plugin) or package.json (a JavaScript plugin)",
            crate_dir.display()
        );
    }
    let toolchain = match options.toolchain {
        Some(toolchain) => toolchain,
        None => match std::env::var(TOOLCHAIN_ENV).ok().as_deref() {
            Some("rustup") => Toolchain::Rustup,
            Some("debian") => Toolchain::Debian,
            Some(other) => {
                bail!("{TOOLCHAIN_ENV}={other:?} is not a toolchain; use `rustup` or `debian`")
            }
            None => detect(crate_dir)?,
        },
    };
    if let Err(missing) = probe(toolchain, crate_dir) {
        bail!("cannot build with {toolchain}: {missing}");
    }
    if options.output == BuildOutput::Inherit {
        eprintln!(
            "taskhost: building {} with {toolchain}",
            crate_dir.display()
        );
    }

    let lib_name = cdylib_name(&manifest, toolchain)?;
    let target_dir = match &options.target_dir {
        Some(dir) => dir.clone(),
        None => default_target_dir()?,
    };
    run_cargo(&manifest, toolchain, &target_dir, options.output)?;

    let artifact = target_dir
        .join(toolchain.target())
        .join("release")
        .join(format!("{lib_name}.wasm"));
    let bytes = std::fs::read(&artifact)
        .with_context(|| format!("cargo succeeded but {} is missing", artifact.display()))?;
    let component = match toolchain {
        Toolchain::Rustup => bytes,
        Toolchain::Debian => adapt(&bytes)
            .with_context(|| format!("cannot turn {} into a component", artifact.display()))?,
    };
    if !wasmparser::Parser::is_component(&component) {
        bail!(
            "{} is a core module, not a component: does the crate use taskhost-guest-sdk's \
             `plugin!`?",
            artifact.display()
        );
    }

    let out = match &options.out {
        Some(out) => out.clone(),
        None => crate_dir.join(format!("{lib_name}.wasm")),
    };
    write_atomically(&out, &component)?;
    Ok(out)
}

/// The toolchain to use on this machine, or an error saying what to install.
pub fn detect(crate_dir: &Path) -> Result<Toolchain> {
    let rustup = probe(Toolchain::Rustup, crate_dir);
    if rustup.is_ok() {
        return Ok(Toolchain::Rustup);
    }
    let debian = probe(Toolchain::Debian, crate_dir);
    if debian.is_ok() {
        return Ok(Toolchain::Debian);
    }
    Err(anyhow!(
        "no toolchain can build WebAssembly plugins here.\n\
         Install one of:\n\
         \x20 - rustup's target:  rustup target add wasm32-wasip2\n\
         \x20   ({})\n\
         \x20 - Debian's Rust:    apt-get install -y rustc-web cargo-web rust-web-src lld wasi-libc\n\
         \x20   ({})",
        rustup.unwrap_err(),
        debian.unwrap_err()
    ))
}

/// Ok if `toolchain` can build here; otherwise what is missing.
fn probe(toolchain: Toolchain, crate_dir: &Path) -> Result<(), String> {
    match toolchain {
        Toolchain::Rustup => {
            let output = Command::new("rustc")
                .args(["--print", "sysroot"])
                .current_dir(crate_dir)
                .output()
                .map_err(|e| format!("cannot run rustc: {e}"))?;
            if !output.status.success() {
                return Err("`rustc --print sysroot` failed".into());
            }
            let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let std = Path::new(&sysroot).join("lib/rustlib/wasm32-wasip2/lib");
            if std.is_dir() {
                Ok(())
            } else {
                Err(format!(
                    "the wasm32-wasip2 target is not installed in {sysroot}"
                ))
            }
        }
        Toolchain::Debian => {
            let needed = [
                (DEBIAN_CARGO, "cargo-web"),
                (DEBIAN_RUSTC, "rustc-web"),
                (DEBIAN_RUST_SRC, "rust-web-src"),
                ("/usr/bin/wasm-ld", "lld"),
                ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
            ];
            let missing: Vec<String> = needed
                .iter()
                .filter(|(path, _)| !Path::new(path).exists())
                .map(|(path, package)| format!("{path} (package {package})"))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing {}", missing.join(", ")))
            }
        }
    }
}

/// Writes the WIT package this taskhost builds plugins against into
/// `dir` (`plugin.wit` and `deps/`): `taskhost new` gives it to the Rust
/// SDK it writes out.
pub(crate) fn write_wit_package(dir: &Path) -> Result<()> {
    tools::write_wit(dir)
}

pub(crate) use inputs::content_key;

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/Cargo.lock";

/// `$TASKHOST_TARGET_DIR`, else `<cache home>/wasm-target` (see
/// `dirs::cache_home`).
pub fn default_target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(TARGET_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    Ok(crate::dirs::cache_home()?.join("wasm-target"))
}

fn cargo_command(toolchain: Toolchain) -> Command {
    let mut command = match toolchain {
        Toolchain::Rustup => Command::new("cargo"),
        Toolchain::Debian => {
            let mut command = Command::new(DEBIAN_CARGO);
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut new_path = OsString::from("/usr/bin:");
            new_path.push(path);
            command
                .env("PATH", new_path)
                .env("RUSTC", DEBIAN_RUSTC)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_WASIP1_LINKER", "wasm-ld")
                .env(
                    "RUSTFLAGS",
                    "-C link-self-contained=no -L /usr/lib/wasm32-wasi",
                )
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("RUSTC_WRAPPER")
                .env_remove("RUSTC_WORKSPACE_WRAPPER");
            command
        }
    };
    // Host-oriented settings of an outer cargo or shell must not leak into a
    // wasm build.
    command
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    if toolchain == Toolchain::Rustup {
        command.env_remove("RUSTFLAGS");
    }
    command
}

/// The crate's library name, which names the `.wasm` cargo writes.
fn cdylib_name(manifest: &Path, toolchain: Toolchain) -> Result<String> {
    let output = cargo_command(toolchain)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .stderr(Stdio::piped())
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed for {}:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    let wanted = std::fs::canonicalize(manifest)?;
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| std::fs::canonicalize(m).ok())
                .is_some_and(|m| m == wanted)
        })
        .with_context(|| format!("{} defines no package", manifest.display()))?;
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["crate_types"]
                .as_array()
                .is_some_and(|types| types.iter().any(|k| k == "cdylib"))
        })
        .with_context(|| {
            format!(
                "{}: a plugin crate needs `[lib] crate-type = [\"cdylib\"]`",
                manifest.display()
            )
        })?;
    let name = lib["name"]
        .as_str()
        .context("cargo metadata: target without a name")?;
    Ok(name.replace('-', "_"))
}

fn run_cargo(
    manifest: &Path,
    toolchain: Toolchain,
    target_dir: &Path,
    output: BuildOutput,
) -> Result<()> {
    let mut command = cargo_command(toolchain);
    command
        .args(["build", "--release", "--target", toolchain.target()])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    match toolchain {
        Toolchain::Debian => {
            command.arg("-Zbuild-std=std,panic_abort");
        }
        // tokio networks on WASI only with this cfg (its WASI support is
        // still unstable): with it, database clients built on tokio, such
        // as tokio-postgres, work in a plugin as they are. Added to the
        // target's rustflags from config files, not in their place, and
        // only for wasm code (build scripts run on the host).
        Toolchain::Rustup => {
            command.args([
                "--config",
                "target.wasm32-wasip2.rustflags = [\"--cfg\", \"tokio_unstable\"]",
            ]);
        }
    }
    let status = match output {
        BuildOutput::Inherit => command
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .context("cannot run cargo")?,
        BuildOutput::Capture => {
            let result = command.output().context("cannot run cargo")?;
            if !result.status.success() {
                bail!(
                    "cargo build of {} failed ({}):\n{}",
                    manifest.display(),
                    toolchain,
                    String::from_utf8_lossy(&result.stderr)
                );
            }
            result.status
        }
    };
    if !status.success() {
        bail!("cargo build of {} failed ({toolchain})", manifest.display());
    }
    Ok(())
}

/// wasip1 core module -> component, with the preview1 reactor adapter.
fn adapt(core: &[u8]) -> Result<Vec<u8>> {
    use wasi_preview1_component_adapter_provider::{
        WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
    };
    wit_component::ComponentEncoder::default()
        .module(core)?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
}

/// Readers (a running host, a watcher) never see a half-written component.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("plugin"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
