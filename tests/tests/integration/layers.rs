//! The host crate's modules form the layers its crate docs describe: every
//! `use crate::...` (and every `crate::...` path) in a module names a
//! module of a lower layer, never one of the same layer or above. Cycles
//! are impossible by construction.
//!
//! An entry may name a submodule (`operations::types`): it then has a layer
//! of its own, apart from the rest of its parent, so a module's vocabulary
//! can sit low while what acts on it sits high.

use taskhost_tests::repo;

/// The layers of `host/src/lib.rs`, bottom first.
const LAYERS: &[&[&str]] = &[
    &["task", "config", "bindings", "dirs", "private_files"],
    &[
        "lifecycle",
        "events",
        "registry",
        "metrics",
        "compile_cache",
        "storage",
        "connection_hub",
    ],
    &["logging", "engine", "serve", "operations::types"],
    &["app", "wasi", "http", "keyvalue", "connections"],
    &["store"],
    &["plugin"],
    &["runner"],
    &["worker"],
    &["cluster"],
    &["scheduler"],
    &["host"],
    &["operations"],
    &["control", "listener", "watch"],
    &["application"],
    &["cli"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of lib.rs"))
}

/// The module of the layer list a file of `host/src` belongs to: its
/// top-level module, or a submodule the list names.
fn module_of(path: &std::path::Path, src: &std::path::Path) -> String {
    let relative = path.strip_prefix(src).unwrap();
    let parts: Vec<String> = relative
        .components()
        .map(|c| {
            c.as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    listed(&parts)
}

/// The longest prefix of `parts` (`["operations", "types"]`) the layer
/// list names, joined with `::`; the first part when only it is named.
fn listed(parts: &[String]) -> String {
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|name| LAYERS.iter().any(|layer| layer.contains(&name.as_str())))
        .unwrap_or_else(|| parts[0].clone())
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = repo().join("host/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let module = module_of(&file, &src);
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer_of(&module);
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + 7..];
                if rest.starts_with('{') {
                    wrong.push(format!(
                        "{}:{}: a grouped `crate::{{...}}` import hides its modules from \
                         this check: one `use` per module",
                        file.strip_prefix(&src).unwrap().display(),
                        number + 1
                    ));
                    continue;
                }
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':')
                    .collect();
                let parts: Vec<String> = path
                    .split("::")
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect();
                if parts.is_empty() {
                    continue;
                }
                let used = listed(&parts);
                if used == module {
                    continue;
                }
                if layer_of(&used) >= own {
                    wrong.push(format!(
                        "{}:{}: `{module}` uses `{used}`",
                        file.strip_prefix(&src).unwrap().display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses that do not point down the layers:\n{}",
        wrong.join("\n")
    );
}
