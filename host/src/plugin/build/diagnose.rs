//! What a failed Python or JavaScript build says to its user: the user's
//! file, line and message first, out of the componentizer's output, where
//! that error sits among tool frames (componentize-py's traceback with its
//! own paths, `/2/app.py`; a node stack; esbuild's paths relative to the
//! tool's directory). `taskhost build --verbose` shows the tools' own
//! output instead.

use std::path::{Path, PathBuf};

/// The error of a Python traceback in `output`, at the last frame in the
/// user's code. `roots` maps componentize-py's path prefixes (`/2`, one per
/// `-p` directory, in order) to the directories they stand for, and
/// `user` says which of those are the user's (the plugin, its
/// dependencies): a frame elsewhere (the generated entry, the SDK) is not
/// where the mistake is.
pub(super) fn python(output: &str, roots: &[(PathBuf, bool)]) -> Option<String> {
    // componentize-py reports the plugin's traceback inside its own, then
    // again after "Caused by:"; the inner one has the frames and the code.
    let text = output.split("\nCaused by:").next().unwrap_or(output);
    let lines: Vec<&str> = text.lines().collect();
    let exception = lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())?
        .to_string();
    if !exception.contains("Error") && !exception.contains("Exception") {
        return None;
    }
    let mut found = None;
    for (index, line) in lines.iter().enumerate() {
        let Some((root, rest)) = frame(line) else {
            continue;
        };
        let Some((dir, true)) = roots.get(root) else {
            continue;
        };
        found = Some((index, dir.join(rest.0), rest.1));
    }
    let (index, file, number) = found?;
    // The frame's code and caret lines, up to the next frame or the end.
    let context: Vec<&str> = lines[index + 1..]
        .iter()
        .take_while(|l| l.starts_with("    ") && !l.trim_start().starts_with("File \""))
        .copied()
        .collect();
    let mut message = format!("{}:{number}: {exception}", file.display());
    for line in context {
        message.push('\n');
        message.push_str(line);
    }
    Some(message)
}

/// `  File "/2/app.py", line 5[, in f]` -> (2, ("app.py", 5)).
fn frame(line: &str) -> Option<(usize, (String, u64))> {
    let rest = line.trim_start().strip_prefix("File \"/")?;
    let (path, rest) = rest.split_once('"')?;
    let (root, path) = path.split_once('/')?;
    let root: usize = root.parse().ok()?;
    let number = rest.strip_prefix(", line ")?;
    let number: u64 = number
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((root, (path.to_string(), number)))
}

/// The error of a failed componentize-js run in `output`: esbuild's
/// (a syntax error, an import not found), with its path made the user's,
/// or one the plugin's top-level code threw while the component was
/// initialised, found in the user's file through `bundle` (esbuild's
/// output, which marks each source file with a `// path` comment and
/// keeps its statements as written). esbuild's paths are relative to
/// `cwd`.
pub(super) fn js(output: &str, cwd: &Path, bundle: &Path) -> Option<String> {
    esbuild_error(output, cwd).or_else(|| init_error(output, cwd, bundle))
}

fn esbuild_error(output: &str, cwd: &Path) -> Option<String> {
    // "✘ [ERROR] Unexpected \";\"", a blank line, then the excerpt:
    // "    ../../x/app.js:2:47:", "      2 │ code", "        ╵   ^".
    let start = output.find("✘ [ERROR] ")?;
    let block: Vec<&str> = output[start..].lines().collect();
    let message = block[0].trim_start_matches("✘ [ERROR] ").trim();
    let at = block.iter().skip(1).find(|l| !l.trim().is_empty())?.trim();
    let (path, place) = at.trim_end_matches(':').split_once(':')?;
    let file = normal(&cwd.join(path));
    let mut text = format!("{}:{place}: {message}", file.display());
    for line in block
        .iter()
        .skip_while(|l| l.trim() != at)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
    {
        text.push('\n');
        text.push_str(line);
    }
    Some(text)
}

fn init_error(output: &str, cwd: &Path, bundle: &Path) -> Option<String> {
    // "bundle.js:572:1 ReferenceError: undefinedThing is not defined"
    let line = output
        .lines()
        .find(|l| l.starts_with("bundle.js:") && l.contains("Error"))?;
    let (place, error) = line.strip_prefix("bundle.js:")?.split_once(' ')?;
    let number: usize = place.split(':').next()?.parse().ok()?;
    let bundled = std::fs::read_to_string(bundle).ok()?;
    let bundled: Vec<&str> = bundled.lines().collect();
    let code = bundled.get(number.checked_sub(1)?)?.trim();
    // The nearest `// path` above it names the source file.
    let source = bundled[..number - 1]
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("// ")
                .filter(|p| p.ends_with(".js") || p.ends_with(".mjs") || p.ends_with(".ts"))
        })
        .map(|p| normal(&cwd.join(p)));
    let found = source.as_ref().and_then(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        let at = text.lines().position(|l| l.trim() == code)?;
        Some((file.clone(), at + 1))
    });
    Some(match found {
        Some((file, at)) => format!(
            "{}:{at}: {error} (thrown while the plugin's top-level code ran at build time)\n    {code}",
            file.display()
        ),
        None => format!(
            "{error} (thrown while the plugin's top-level code ran at build time, at: {code})"
        ),
    })
}

/// `path` with `.` and `..` taken out, as written (no links followed).
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_python_syntax_error_is_shown_at_the_users_file() {
        let output = "Traceback (most recent call last):\n  File \"/root/.cache/x/bin/componentize-py\", line 8, in <module>\n    sys.exit(script())\nAssertionError: Traceback (most recent call last):\n  File \"/0/taskhost_entry.py\", line 8, in <module>\n    import app\n  File \"/2/app.py\", line 5\n    return undefined_name +\n                           ^\nSyntaxError: invalid syntax\n\n\nCaused by:\n    SyntaxError: invalid syntax (app.py, line 5)\n";
        let roots = [
            (PathBuf::from("/w/entry"), false),
            (PathBuf::from("/w/sdk"), false),
            (PathBuf::from("/home/me/hello/plugin"), true),
        ];
        assert_eq!(
            python(output, &roots).unwrap(),
            "/home/me/hello/plugin/app.py:5: SyntaxError: invalid syntax\n    return undefined_name +\n                           ^"
        );
    }

    #[test]
    fn an_esbuild_error_is_shown_at_the_users_file() {
        let output = "✘ [ERROR] Unexpected \";\"\n\n    ../../../tmp/p/app.js:2:47:\n      2 │ export const hello = task((app) => { return 1 +; });\n        ╵                                                ^\n\n/root/node_modules/esbuild/lib/main.js:1752\n  let error = new Error(text);\n";
        assert_eq!(
            js(
                output,
                Path::new("/root/.cache/js"),
                Path::new("/nonexistent")
            )
            .unwrap(),
            "/tmp/p/app.js:2:47: Unexpected \";\"\n      2 │ export const hello = task((app) => { return 1 +; });\n        ╵                                                ^"
        );
    }
}
