//! `taskhost build` for a JavaScript or TypeScript plugin: a directory
//! whose `package.json` has `"taskhost": { "main": "app.js" }`. esbuild
//! bundles the main module (and what it imports, its npm dependencies
//! too) with the taskhost SDK; componentize-js turns the bundle and the
//! WIT into a component.
//!
//! Nothing is installed by hand: both tools go into `node_modules` in
//! taskhost's cache (`<cache>/js/componentize-js-V`), installed with the
//! machine's `npm` the first time and run with its `node` (or
//! `$TASKHOST_NODE` / `$TASKHOST_NPM`). The WIT and the SDK are the ones
//! this taskhost was built with.

use super::tools::{WorkDir, componentize, install_once, missing_tool, run, write_wit};
use super::{BuildOptions, BuildOutput, write_atomically};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The componentize-js taskhost installs and builds with.
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// The esbuild that bundles a plugin before componentize-js sees it
/// (componentize-js resolves relative imports only, not packages).
pub const ESBUILD: &str = "0.28.2";

/// Env vars naming the Node.js and npm commands.
pub const NODE_ENV: &str = "TASKHOST_NODE";
/// The npm command to install the build tools with; `npm` when unset.
pub const NPM_ENV: &str = "TASKHOST_NPM";

/// The JavaScript SDK (`guest-sdk/js`), as this taskhost ships it.
const SDK: &str = include_str!("../../../../guest-sdk/js/index.js");
/// The bundle-and-componentize script, run by node.
const SCRIPT: &str = include_str!("componentize.mjs");

/// Whether `dir` holds a JavaScript plugin.
pub fn is_js_plugin(dir: &Path) -> bool {
    !dir.join("Cargo.toml").is_file()
        && !dir.join("pyproject.toml").is_file()
        && dir.join("package.json").is_file()
}

/// Whether a changed `path` in a JS plugin's directory is a source of it
/// (not its output, nor `node_modules`).
pub fn is_source(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !path.components().any(|c| c.as_os_str() == "node_modules")
        && (matches!(ext, "js" | "mjs" | "cjs" | "ts" | "mts" | "cts" | "json")
            && path.file_name().is_some_and(|n| n != "package-lock.json"))
}

/// What `package.json` says.
struct Package {
    /// The output's name: the package's, its scope dropped, `-` as `_`.
    name: String,
    /// The module whose exports are the factories, relative to the dir.
    main: String,
    /// Whether it has npm dependencies (which need `node_modules`).
    has_dependencies: bool,
}

fn read_package(dir: &Path) -> Result<Package> {
    let path = dir.join("package.json");
    let file = path.display();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {file}"))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{file} is not valid JSON"))?;
    let taskhost = doc.get("taskhost").ok_or_else(|| {
        anyhow!(
            "{file} has no \"taskhost\" entry: add `\"taskhost\": {{ \"main\": \"app.js\" }}` \
             (the module whose task() exports are the plugin's factories)"
        )
    })?;
    let main = taskhost
        .get("main")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| anyhow!("{file}: \"taskhost\" needs `\"main\": \"app.js\"` (a path)"))?;
    let name = doc
        .get("name")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| anyhow!("{file} needs a \"name\", which names the component"))?;
    let name = name
        .rsplit('/')
        .next()
        .unwrap_or(name)
        .replace(['-', '.'], "_");
    let has_dependencies = doc
        .get("dependencies")
        .and_then(|d| d.as_object())
        .is_some_and(|d| !d.is_empty());
    Ok(Package {
        name,
        main: main.to_string(),
        has_dependencies,
    })
}

/// Builds the JavaScript plugin in `dir`; returns the component's path.
pub fn build(dir: &Path, options: &BuildOptions) -> Result<PathBuf> {
    let package = read_package(dir)?;
    let manifest = dir.join("package.json");
    let main = dir.join(&package.main);
    if !main.is_file() {
        bail!(
            "{}: \"taskhost\".main is {:?}, but there is no {}",
            manifest.display(),
            package.main,
            main.display()
        );
    }
    if package.has_dependencies && !dir.join("node_modules").is_dir() {
        bail!(
            "{} lists dependencies but {} has no node_modules: run `npm install` there first",
            manifest.display(),
            dir.display()
        );
    }
    let main = std::fs::canonicalize(&main)
        .with_context(|| format!("cannot resolve {}", main.display()))?;
    let cache = crate::dirs::cache_home()?.join("js");
    let out = match &options.out {
        Some(out) => out.clone(),
        None => dir.join(format!("{}.wasm", package.name)),
    };
    let main_text = main.display().to_string();
    let mut fixed: Vec<&[u8]> = vec![
        b"componentize-js",
        COMPONENTIZE_JS.as_bytes(),
        ESBUILD.as_bytes(),
        SDK.as_bytes(),
        SCRIPT.as_bytes(),
        main_text.as_bytes(),
    ];
    fixed.extend(super::tools::wit_texts());
    // npm rewrites node_modules/.package-lock.json on every install: it
    // stands for the dependencies, which are not hashed file by file.
    let lock = Path::new("node_modules/.package-lock.json");
    let inputs = super::inputs::hash(&cache, dir, &out, &fixed, &[lock])?;
    if super::inputs::up_to_date(inputs.as_ref(), dir, options.output) {
        return Ok(out);
    }
    let tools = install_tools(&cache, options.output)?;
    if options.output == BuildOutput::Inherit {
        eprintln!(
            "taskhost: building {} with componentize-js {COMPONENTIZE_JS}",
            dir.display()
        );
    }
    let script = tools.join("componentize.mjs");
    write_atomically(&script, SCRIPT.as_bytes())?;
    let work = WorkDir::new(&cache, &super::inputs::build_key(&out))?;
    let wit = work.path().join("wit");
    write_wit(&wit)?;
    let sdk = work.path().join("taskhost-sdk.js");
    std::fs::write(&sdk, SDK).with_context(|| format!("cannot write {}", sdk.display()))?;
    let entry = work.path().join("entry.js");
    std::fs::write(
        &entry,
        format!(
            "// Made by `taskhost build`: the plugin's exports are its factories.\n\
             import * as plugin from {main};\n\
             import {{ factoriesFrom }} from 'taskhost';\n\
             export const factories = factoriesFrom(plugin);\n",
            main = serde_json::to_string(&main.display().to_string())?
        ),
    )?;
    let component = work.path().join("plugin.wasm");
    let node = std::env::var(NODE_ENV).unwrap_or_else(|_| "node".into());
    let mut command = Command::new(&node);
    command
        .current_dir(&tools)
        .arg(&script)
        .arg(&entry)
        .arg(&sdk)
        .arg(&wit)
        .arg(work.path().join("bundle.js"))
        .arg(&component);
    let bundle = work.path().join("bundle.js");
    let what = format!("componentize-js (node: `{node}`)");
    let out = componentize(command, options, &what, &component, out, |output| {
        super::diagnose::js(output, &tools, &bundle)
    })?;
    if let Some(inputs) = inputs {
        inputs.record()?;
    }
    Ok(out)
}

/// The directory whose `node_modules` holds componentize-js and esbuild,
/// installing them the first time.
fn install_tools(cache: &Path, output: BuildOutput) -> Result<PathBuf> {
    let dir = cache.join(format!("componentize-js-{COMPONENTIZE_JS}"));
    let what = format!("componentize-js {COMPONENTIZE_JS} and esbuild {ESBUILD}");
    install_once(&dir, &what, |dir| {
        let node = std::env::var(NODE_ENV).unwrap_or_else(|_| "node".into());
        let mut version = Command::new(&node);
        version.arg("--version");
        run(version, BuildOutput::Capture, &format!("{node} --version"))
            .map_err(|e| missing_tool(&node, NODE_ENV, "Node.js 18 or newer", e))?;
        std::fs::write(
            dir.join("package.json"),
            format!(
                "{{\"private\": true, \"type\": \"module\", \"dependencies\": {{\
                 \"@bytecodealliance/componentize-js\": \"{COMPONENTIZE_JS}\", \
                 \"esbuild\": \"{ESBUILD}\"}}}}\n"
            ),
        )?;
        let npm = std::env::var(NPM_ENV).unwrap_or_else(|_| "npm".into());
        let mut version = Command::new(&npm);
        version.arg("--version");
        run(version, BuildOutput::Capture, &format!("{npm} --version"))
            .map_err(|e| missing_tool(&npm, NPM_ENV, "npm (it comes with Node.js)", e))?;
        let mut install = Command::new(&npm);
        install
            .current_dir(dir)
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"]);
        run(install, output, "npm install componentize-js esbuild")
    })?;
    Ok(dir)
}
