//! `taskhost build` for a Python plugin: a directory whose `pyproject.toml`
//! has a `[tool.taskhost]` table naming the module of its `@task`
//! functions. componentize-py turns it, the taskhost SDK and the WIT into
//! a component.
//!
//! Nothing is installed by hand: componentize-py goes into a virtual
//! environment in taskhost's cache (`<cache>/python/componentize-py-V`),
//! made with the machine's `python3` (or `$TASKHOST_PYTHON`) the first
//! time. The WIT and the SDK are the ones this taskhost was built with,
//! so a plugin always matches the host that builds it.

use super::tools::{
    WorkDir, componentize, install_once, missing_tool, run, write_files, write_wit,
};
use super::{BuildOptions, BuildOutput};
use anyhow::{Context, Result, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The componentize-py taskhost installs and builds with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// Env var naming the Python interpreter that makes the tool environment.
pub const PYTHON_ENV: &str = "TASKHOST_PYTHON";

/// What Python plugins import besides the plugin world: the world
/// `python-plugin` (the plugin world plus `wasi:http/outgoing-handler`, for
/// the SDK's `app.fetch`) and the WASI packages it needs, copied from
/// wasmtime-wasi-http 48.0.8's `wit/` (the version this host links).
/// componentize-py makes bindings only for what the world imports, and a
/// Rust guest's wasi crate brings its own, so only Python needs these.
const PYTHON_WIT: &[(&str, &str)] = &[
    ("python.wit", include_str!("wit-python/python.wit")),
    ("deps/cli.wit", include_str!("wit-python/deps/cli.wit")),
    (
        "deps/clocks.wit",
        include_str!("wit-python/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("wit-python/deps/filesystem.wit"),
    ),
    ("deps/http.wit", include_str!("wit-python/deps/http.wit")),
    ("deps/io.wit", include_str!("wit-python/deps/io.wit")),
    (
        "deps/random.wit",
        include_str!("wit-python/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("wit-python/deps/sockets.wit"),
    ),
];

/// The Python SDK (`guest-sdk/python`), as this taskhost ships it.
const SDK: &str = include_str!("../../../../guest-sdk/python/taskhost/__init__.py");

/// What stands in for the standard `ssl` module, which componentize-py's
/// interpreter cannot import (it has no `_ssl`): see the file.
const SSL_STUB: &str = include_str!("python-ssl.py");

/// Whether `dir` holds a Python plugin.
pub fn is_python_plugin(dir: &Path) -> bool {
    !dir.join("Cargo.toml").is_file() && dir.join("pyproject.toml").is_file()
}

/// What `[tool.taskhost]` and `[project]` say.
struct Project {
    /// The output's name: the project's, `-` turned into `_`.
    name: String,
    /// The module of the `@task` functions.
    module: String,
    /// `[project] dependencies`: requirements pip installs into the
    /// component (pure-Python packages only).
    dependencies: Vec<String>,
}

fn read_project(dir: &Path) -> Result<Project> {
    let path = dir.join("pyproject.toml");
    let file = path.display();
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {file}"))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{file} is not valid TOML"))?;
    let tool = doc
        .get("tool")
        .and_then(|t| t.get("taskhost"))
        .ok_or_else(|| {
            anyhow!(
                "{file} has no [tool.taskhost] table: add one with `module = \"app\"` (the \
                 module of the plugin's @task functions)"
            )
        })?;
    let module = tool
        .get("module")
        .and_then(|m| m.as_str())
        .ok_or_else(|| anyhow!("{file}: [tool.taskhost] needs `module = \"...\"` (a string)"))?;
    if module.is_empty()
        || !module
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        bail!("{file}: [tool.taskhost] module = {module:?} is not a Python module name");
    }
    let name = doc
        .get("project")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| anyhow!("{file}: [project] needs a `name`, which names the component"))?;
    let dependencies = match doc.get("project").and_then(|p| p.get("dependencies")) {
        None => Vec::new(),
        Some(toml::Value::Array(list)) => list
            .iter()
            .map(|d| d.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                anyhow!("{file}: [project] dependencies must be a list of strings such as \"pg8000>=1.31\"")
            })?,
        Some(_) => bail!(
            "{file}: [project] dependencies must be a list of strings such as \"pg8000>=1.31\""
        ),
    };
    Ok(Project {
        name: name.replace('-', "_"),
        module: module.to_string(),
        dependencies,
    })
}

/// Builds the Python plugin in `dir`; returns the component's path.
pub fn build(dir: &Path, options: &BuildOptions) -> Result<PathBuf> {
    let project = read_project(dir)?;
    let module_file = dir.join(format!("{}.py", project.module.replace('.', "/")));
    let package = dir
        .join(project.module.replace('.', "/"))
        .join("__init__.py");
    if !module_file.is_file() && !package.is_file() {
        bail!(
            "{}: [tool.taskhost] module = {:?}, but there is no {}",
            dir.join("pyproject.toml").display(),
            project.module,
            module_file.display()
        );
    }
    let cache = crate::dirs::cache_home()?.join("python");
    let out = match &options.out {
        Some(out) => out.clone(),
        None => dir.join(format!("{}.wasm", project.name)),
    };
    let mut fixed: Vec<&[u8]> = vec![
        b"componentize-py",
        COMPONENTIZE_PY.as_bytes(),
        SDK.as_bytes(),
        SSL_STUB.as_bytes(),
        project.module.as_bytes(),
    ];
    fixed.extend(super::tools::wit_texts());
    fixed.extend(PYTHON_WIT.iter().map(|(_, text)| text.as_bytes()));
    fixed.extend(project.dependencies.iter().map(|d| d.as_bytes()));
    let inputs = super::inputs::hash(&cache, dir, &out, &fixed, &[])?;
    if super::inputs::up_to_date(inputs.as_ref(), dir, options.output) {
        return Ok(out);
    }
    let tool = componentize_py(&cache, options.output)?;
    let site = match project.dependencies.is_empty() {
        true => None,
        false => Some(install_dependencies(
            &cache,
            &dir.join("pyproject.toml"),
            &project.dependencies,
            options.output,
        )?),
    };
    if options.output == BuildOutput::Inherit {
        eprintln!(
            "taskhost: building {} with componentize-py {COMPONENTIZE_PY}",
            dir.display()
        );
    }
    let work = WorkDir::new(&cache, &super::inputs::build_key(&out))?;
    let wit = work.path().join("wit");
    write_wit(&wit)?;
    write_files(&wit, PYTHON_WIT)?;
    let sdk = work.path().join("sdk");
    std::fs::create_dir_all(sdk.join("taskhost"))?;
    std::fs::write(sdk.join("taskhost/__init__.py"), SDK)?;
    let entry = work.path().join("entry");
    std::fs::create_dir_all(&entry)?;
    std::fs::write(entry.join("taskhost_ssl.py"), SSL_STUB)?;
    std::fs::write(
        entry.join("taskhost_entry.py"),
        format!(
            "# Made by `taskhost build`: the plugin's module registers its tasks.\n\
             import sys\n\
             try:\n    import ssl\n\
             except ImportError:\n    import taskhost_ssl\n    sys.modules[\"ssl\"] = taskhost_ssl\n\
             import {}\nfrom taskhost import Factories\n",
            project.module
        ),
    )?;
    let component = work.path().join("plugin.wasm");
    let mut command = Command::new(&tool);
    command
        .arg("-d")
        .arg(&wit)
        .args(["-w", "python-plugin", "componentize", "taskhost_entry"])
        .arg("-p")
        .arg(&entry)
        .arg("-p")
        .arg(&sdk)
        .arg("-p")
        .arg(dir);
    if let Some(site) = &site {
        command.arg("-p").arg(site);
    }
    command.arg("-o").arg(&component);
    // A fixed hash seed: the interpreter's state is snapshotted into the
    // component, and with a random seed its dicts (so its bytes) differ
    // from build to build.
    command.env("PYTHONHASHSEED", "0");
    let mut roots = vec![
        (entry.clone(), false),
        (sdk.clone(), false),
        (dir.to_path_buf(), true),
    ];
    if let Some(site) = &site {
        roots.push((site.clone(), false));
    }
    let out = componentize(
        command,
        options,
        "componentize-py",
        &component,
        out,
        |output| super::diagnose::python(output, &roots),
    )?;
    if let Some(inputs) = inputs {
        inputs.record()?;
    }
    Ok(out)
}

/// Installs `dependencies` (from `pyproject`) with pip, once per list,
/// into taskhost's cache; returns the directory componentize-py then
/// takes them from. Only wheels for any platform (`py3-none-any`): the
/// component's interpreter cannot load a native extension, so a package
/// that has only those fails here, named, rather than at run time.
fn install_dependencies(
    cache: &Path,
    pyproject: &Path,
    dependencies: &[String],
    output: BuildOutput,
) -> Result<PathBuf> {
    let key = super::inputs::content_key(
        std::iter::once(COMPONENTIZE_PY.as_bytes())
            .chain(dependencies.iter().map(|d| d.as_bytes())),
    );
    let dir = cache.join("deps").join(key);
    let pip = cache
        .join(format!("componentize-py-{COMPONENTIZE_PY}"))
        .join("bin/pip");
    install_once(&dir, &dependencies.join(", "), |dir| {
        let mut install = Command::new(&pip);
        install
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-compile",
            ])
            .args([
                "--only-binary=:all:",
                "--platform",
                "any",
                "--implementation",
                "py",
            ])
            .args(["--abi", "none", "--target"])
            .arg(dir.join("site"))
            .args(dependencies);
        run(install, output, "pip install").map_err(|e| {
            anyhow!(
                "{}: [project] dependencies could not be installed: {e:#}\n\
                 A Python plugin can use pure-Python packages only (wheels for any platform, \
                 py3-none-any): the component's interpreter cannot load native extensions.",
                pyproject.display()
            )
        })
    })?;
    Ok(dir.join("site"))
}

/// componentize-py's path, installing it into taskhost's cache the first
/// time.
fn componentize_py(cache: &Path, output: BuildOutput) -> Result<PathBuf> {
    let venv = cache.join(format!("componentize-py-{COMPONENTIZE_PY}"));
    install_once(
        &venv,
        &format!("componentize-py {COMPONENTIZE_PY}"),
        |venv| {
            let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".into());
            let mut make = Command::new(&python);
            make.args(["-m", "venv"]).arg(venv);
            run(make, BuildOutput::Capture, &format!("{python} -m venv")).map_err(|e| {
                missing_tool(
                    &python,
                    PYTHON_ENV,
                    "Python 3.10 or newer with its venv module (python3-venv)",
                    e,
                )
            })?;
            let mut install = Command::new(venv.join("bin/pip"));
            install
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("componentize-py=={COMPONENTIZE_PY}"));
            run(install, output, "pip install componentize-py")
        },
    )?;
    Ok(venv.join("bin/componentize-py"))
}
