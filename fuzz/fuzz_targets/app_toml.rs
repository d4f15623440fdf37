//! app.toml loading never panics, whatever the file holds: it parses or it
//! fails with an error that names the file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use taskhost::config::AppConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative plugin paths resolve against a directory that holds nothing,
    // so `path = ...` entries exercise the missing-file errors.
    let base = Path::new("/nonexistent/taskhost-fuzz");
    if let Err(error) = AppConfig::parse(text, Path::new("fuzz.toml"), base) {
        let message = format!("{error:#}");
        assert!(
            message.starts_with("fuzz.toml"),
            "unattributed error: {message}"
        );
    }
});
