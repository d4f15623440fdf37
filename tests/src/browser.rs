//! A real headless browser for the dashboard's tests: Debian's chromium,
//! driven through chromedriver over WebDriver (fantoccini), with the
//! network to anything but loopback cut off, so a page that reached for
//! the internet would fail to load it.

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where `scripts/setup-browser` found (or installed) chromium and
/// chromedriver: run once per test binary.
fn browser_bins() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| {
        let [chromium, driver] = crate::setup_script("setup-browser", ["CHROMIUM", "CHROMEDRIVER"]);
        (chromium, driver)
    })
}

/// How long a wait for the page may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A headless chromium and its chromedriver; both stop when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let (chromium, chromedriver) = browser_bins();
        let port = crate::free_port();
        let mut driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let status = format!("http://127.0.0.1:{port}/status");
        let deadline = Instant::now() + PATIENCE;
        while ureq::get(&status).call().is_err() {
            if Instant::now() > deadline {
                let _ = driver.kill();
                panic!("chromedriver did not answer on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let options = serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
                // Nothing but loopback: other hosts go to a proxy that is
                // not there, and names do not resolve.
                "--proxy-server=http://127.0.0.1:9",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session");
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// The element `css` selects, once there is one.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// The text of `css`'s element once `done` holds for it.
    pub async fn text_when(&self, css: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::new();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if done(&text) {
                    return text;
                }
                last = text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never became what was awaited: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `script` in the page (its `arguments`, `args`) and returns
    /// what it returns (a promise is awaited).
    pub async fn run(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("the script failed: {e}"))
    }

    /// A PNG of the page, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Ends the WebDriver session (the browser quits); the driver stops
    /// when this is dropped.
    pub async fn close(&self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
