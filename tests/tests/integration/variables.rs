//! `[plugins.NAME.variables]`: per-plugin values a task reads through the
//! standard `wasi:config/store`, one set per plugin (no plugin sees
//! another's), secrets from the environment or a file, and app.toml
//! errors that name the table and the variable. The Python and JavaScript
//! SDKs read them in `guests.rs` (`variables_are_read_through_wasi_config`).

use serde_json::json;
use taskhost_tests::TestApp;

#[test]
fn each_plugin_reads_its_own_variables_through_wasi_config() {
    let app = TestApp::new(
        r#"
        name = "vars"
        [plugins.billing]
        path = "{testkit}"
        [plugins.billing.variables]
        db_url = "postgres://127.0.0.1/billing"
        pool = 4
        token = { file = "token.txt" }
        [plugins.mailer]
        path = "{testkit}"
        [plugins.mailer.variables]
        db_url = "postgres://127.0.0.1/mail"
        [plugins.plain]
        path = "{testkit}"
        [[tasks]]
        plugin = "billing"
        factory = "variables"
        name = "billing"
        args = { key = "token" }
        [[tasks]]
        plugin = "mailer"
        factory = "variables"
        name = "mailer"
        args = { key = "token" }
        [[tasks]]
        plugin = "plain"
        factory = "variables"
        name = "plain"
        args = { key = "db_url" }
        "#,
    );
    app.file("token.txt", b"t0k-from-a-file\n");
    let run = app.run_until_idle().ok();
    assert_eq!(
        run.results_of("billing"),
        vec![json!({
            "value": "t0k-from-a-file",
            "all": [["db_url", "postgres://127.0.0.1/billing"], ["pool", "4"],
                    ["token", "t0k-from-a-file"]],
        })],
        "{}",
        run.dump()
    );
    assert_eq!(
        run.results_of("mailer"),
        vec![json!({"value": null, "all": [["db_url", "postgres://127.0.0.1/mail"]]})],
        "{}",
        run.dump()
    );
    assert_eq!(
        run.results_of("plain"),
        vec![json!({"value": null, "all": []})],
        "{}",
        run.dump()
    );
}

#[test]
fn check_lists_variables_by_name_and_a_secret_by_its_source_only() {
    let app = TestApp::new(
        r#"
        name = "vars"
        [plugins.billing]
        path = "{testkit}"
        [plugins.billing.variables]
        db_url = "postgres://127.0.0.1/billing"
        db_password = { env = "TASKHOST_TEST_DB_PASSWORD" }
        "#,
    );
    let check = app
        .run_taskhost_with_env(&["check"], &[("TASKHOST_TEST_DB_PASSWORD", "pw-not-shown")])
        .ok();
    assert!(
        check.stdout.contains(
            "    variables: db_password (secret, from environment variable \
             TASKHOST_TEST_DB_PASSWORD), db_url\n"
        ),
        "{}",
        check.dump()
    );
    assert!(!check.dump().contains("pw-not-shown"), "{}", check.dump());
    // Not set: the start stops, naming the variable and what to set.
    let check = app.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains(
            "[plugins.billing.variables]: variable `db_password`: environment variable \
             TASKHOST_TEST_DB_PASSWORD is not set"
        ),
        "{}",
        check.dump()
    );
}

#[test]
fn a_bad_variable_is_refused_at_check_naming_the_table_and_the_variable() {
    let app = TestApp::new(
        r#"
        name = "vars"
        [plugins.billing]
        path = "{testkit}"
        [plugins.billing.variables]
        hosts = ["a", "b"]
        "#,
    );
    let check = app.run_taskhost(&["check"]);
    assert_eq!(check.code, Some(2), "{}", check.dump());
    assert!(
        check.stderr.contains(
            "[plugins.billing.variables]: variable `hosts` is array: wasi:config values are \
             strings"
        ),
        "{}",
        check.dump()
    );
}
