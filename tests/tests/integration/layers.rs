//! The host crate's modules form the layers its crate docs describe: every
//! `use crate::...` (and every `crate::...` path) in a module names a
//! module of a lower layer, never one of the same layer or above, and so
//! does every `super::` and `self::` path once made absolute. Cycles
//! between the listed modules are impossible by construction. Paths are
//! read as text: an item re-exported by a parent (`super::Target`) counts
//! as the parent's, and `//` inside a string ends what is read of its
//! line.
//!
//! An entry may name a submodule (`operations::types`): it then has a layer
//! of its own, apart from the rest of its parent, so a module's vocabulary
//! can sit low while what acts on it sits high.

use taskhost_tests::repo;

/// The layers of `host/src/lib.rs`, bottom first.
const LAYERS: &[&[&str]] = &[
    &["config::value", "task_log", "trace_context"],
    &["variables::section"],
    &[
        "task",
        "config",
        "bindings",
        "dirs",
        "private_files",
        "grace",
    ],
    &[
        "lifecycle",
        "events",
        "registry",
        "metrics",
        "compile_cache",
        "storage",
        "connection_hub",
        "sockets",
    ],
    &["telemetry"],
    &[
        "queues",
        "logging",
        "engine",
        "serve",
        "operations::types",
        "interface",
        "joins",
        "journal",
    ],
    &[
        "app",
        "wasi",
        "http",
        "keyvalue",
        "connections",
        "variables",
        "db",
    ],
    &["store"],
    &["plugin"],
    &["runner"],
    &["worker"],
    &["scheduler"],
    &["cluster"],
    &["host"],
    &["operations"],
    &["control", "listener", "watch"],
    &["application", "scaffold"],
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
    listed(&module_path(path, src))
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
    // `super::` and `self::` paths too, made absolute: a submodule the list
    // places apart from its parent (`operations::types`) must not reach up
    // to it either.
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for file in files {
        let own_path = module_path(&file, &src);
        let module = module_of(&file, &src);
        if module == "lib" || module == "main" {
            continue;
        }
        let own = layer_of(&module);
        let text = std::fs::read_to_string(&file).unwrap();
        for named in named_paths(&text, &own_path) {
            if named.is_empty() {
                continue;
            }
            let used = listed(&named);
            // Not a module of the list: an item of the crate root.
            if !LAYERS.iter().any(|layer| layer.contains(&used.as_str())) {
                continue;
            }
            if used != module && layer_of(&used) >= own {
                wrong.push(format!(
                    "{}: `{module}` uses `{used}` (through `{}`)",
                    file.strip_prefix(&src).unwrap().display(),
                    named.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses that do not point down the layers:\n{}",
        wrong.join("\n")
    );
}

/// The module path of a file of `host/src`: `cluster/any.rs` is
/// `["cluster", "any"]`, `cluster/mod.rs` is `["cluster"]`.
fn module_path(path: &std::path::Path, src: &std::path::Path) -> Vec<String> {
    let mut parts: Vec<String> = path
        .strip_prefix(src)
        .unwrap()
        .components()
        .map(|c| {
            c.as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    parts
}

/// Every module path a file names (`crate::a::b`, `super::b`,
/// `self::b`, and each path of a `{...}` group), made absolute.
fn named_paths(text: &str, own: &[String]) -> Vec<Vec<String>> {
    // A module's unit tests (`#[cfg(test)] mod tests`, at its end) are not
    // part of its layering, and their `super::` is the module's own.
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let start_ok = at == 0
            || !(bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b':');
        let (mut base, skip): (Vec<String>, usize) = if start_ok && rest.starts_with("crate::") {
            (Vec::new(), 7)
        } else if start_ok && rest.starts_with("super::") {
            (own[..own.len().saturating_sub(1)].to_vec(), 7)
        } else if start_ok && rest.starts_with("self::") {
            (own.to_vec(), 6)
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let mut tail = &rest[skip..];
        while let Some(next) = tail.strip_prefix("super::") {
            base.pop();
            tail = next;
        }
        let used = expand(tail, base, &mut found);
        at += skip + used.max(1);
    }
    found
}

/// Reads one path at the start of `text` (after its prefix `base`),
/// groups included, into `found`; returns the bytes it read.
fn expand(text: &str, mut base: Vec<String>, found: &mut Vec<Vec<String>>) -> usize {
    let mut read = 0;
    loop {
        let rest = &text[read..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items separated by top-level commas, up to the matching `}`.
            let mut depth = 0;
            let mut item_start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth > 0 => depth -= 1,
                    '}' | ',' if depth == 0 => {
                        let item = group[item_start..i].trim();
                        if !item.is_empty() {
                            expand(item, base.clone(), found);
                        }
                        item_start = i + 1;
                        if c == '}' {
                            return read + 1 + i + 1;
                        }
                    }
                    _ => {}
                }
            }
            return text.len();
        }
        let segment: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let lowercase = segment
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if segment.is_empty() || !lowercase || segment == "self" {
            found.push(base);
            return read + segment.len();
        }
        base.push(segment.clone());
        read += segment.len();
        match text[read..].strip_prefix("::") {
            Some(_) => read += 2,
            None => {
                found.push(base);
                return read;
            }
        }
    }
}

#[test]
fn no_module_has_a_circle_among_its_submodules() {
    // A module's files may use its own items (its `mod.rs`, the module's
    // face), but its submodules must form no circle: within every module,
    // `a` using `b` and `b` using `a` (directly or through others) is
    // refused, as `cluster`'s `any` -> `members` -> `any` once was.
    let src = repo().join("host/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // parent module -> (child, child) edges between siblings.
    let mut edges: std::collections::BTreeMap<
        Vec<String>,
        std::collections::BTreeSet<(String, String)>,
    > = Default::default();
    let paths: Vec<Vec<String>> = files.iter().map(|f| module_path(f, &src)).collect();
    let modules: std::collections::BTreeSet<Vec<String>> = paths.iter().cloned().collect();
    for (file, own) in files.iter().zip(&paths) {
        if own.len() < 2 || own[0] == "lib" || own[0] == "main" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_paths(&text, own) {
            // The deepest common parent of `own` and `named`, and the
            // children of it on each side.
            let common = own.iter().zip(&named).take_while(|(a, b)| a == b).count();
            if common + 1 > own.len() || common + 1 > named.len() {
                continue;
            }
            // Top-level modules are held to the layers by the test above.
            if common == 0 {
                continue;
            }
            let parent = own[..common].to_vec();
            let from = own[common].clone();
            let to = named[common].clone();
            let mut sibling = parent.clone();
            sibling.push(to.clone());
            if from != to && modules.contains(&sibling) {
                edges.entry(parent).or_default().insert((from, to));
            }
        }
    }
    let mut circles = Vec::new();
    for (parent, pairs) in &edges {
        // A circle exists if some `a -> b` has `b` reaching `a`.
        let reaches = |from: &str, to: &str| {
            let mut seen = std::collections::BTreeSet::new();
            let mut stack = vec![from.to_string()];
            while let Some(node) = stack.pop() {
                if node == to {
                    return true;
                }
                if seen.insert(node.clone()) {
                    stack.extend(
                        pairs
                            .iter()
                            .filter(|(a, _)| *a == node)
                            .map(|(_, b)| b.clone()),
                    );
                }
            }
            false
        };
        for (a, b) in pairs {
            if reaches(b, a) {
                circles.push(format!(
                    "{}: `{a}` uses `{b}`, and `{b}` reaches `{a}`",
                    parent.join("::")
                ));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "circles among submodules:\n{}",
        circles.join("\n")
    );
}
