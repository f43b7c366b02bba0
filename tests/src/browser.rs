//! A real headless Chromium driven through chromedriver (WebDriver over loopback HTTP).
//!
//! [`Browser::start`] starts a private chromedriver on a free port, waits on its `/status`,
//! and opens a session with a fresh profile and download folder. Dropping the [`Browser`]
//! closes the session (which ends Chromium) and then stops chromedriver, so a failing test
//! leaves no browser behind. Tests using it need a multi-threaded runtime.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::json;
use tempfile::TempDir;

use crate::{free_port, workspace_root};

/// How long a page may take to show what a test waits for.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Browser {
    client: Option<Client>,
    driver: Child,
    pub downloads: PathBuf,
    _profile: TempDir,
    screenshots: PathBuf,
}

impl Browser {
    /// The web UI's built files, which the gateway under test serves (`--web-dir`).
    pub fn web_dir() -> PathBuf {
        let dir = workspace_root().join("web/dist");
        assert!(
            dir.join("index.html").is_file(),
            "the web UI is not built: run scripts/web.sh (scripts/test.sh does)"
        );
        dir
    }

    /// Starts chromedriver and a headless Chromium session. Screenshots go to
    /// `target/screenshots/<name>/`.
    pub async fn start(name: &str) -> Browser {
        let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = find(&["chromedriver"]);
        let port = free_port();
        let profile = tempfile::tempdir().expect("profile dir");
        let downloads = profile.path().join("downloads");
        std::fs::create_dir_all(&downloads).expect("downloads dir");
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/status")).await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().join("chrome").display()),
                ],
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                },
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("opening a chromium session");
        let screenshots = workspace_root().join("target/screenshots").join(name);
        std::fs::create_dir_all(&screenshots).expect("screenshots dir");
        Browser {
            client: Some(client),
            driver,
            downloads,
            _profile: profile,
            screenshots,
        }
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Waits until an element matches `css`.
    pub async fn wait_for(&self, css: &str) -> Element {
        self.client()
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within {WAIT:?}: {e}"))
    }

    /// Clicks the element matching `css`, which must be there.
    pub async fn click(&self, css: &str) {
        self.find(Locator::Css(css))
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Follows the link whose text is `text`.
    pub async fn click_link(&self, text: &str) {
        self.find(Locator::LinkText(text))
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking the {text} link: {e}"));
    }

    /// Chooses `value` in the `<select>` matching `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.find(Locator::Css(css))
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("choosing {value} in {css}: {e}"));
    }

    async fn find(&self, locator: Locator<'_>) -> Element {
        self.client()
            .find(locator)
            .await
            .unwrap_or_else(|e| panic!("no element {locator:?}: {e}"))
    }

    /// Waits until `script` (a JavaScript expression) is true in the page.
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self
                .client()
                .execute(&format!("return !!({script});"), vec![])
                .await
                .unwrap_or_else(|e| panic!("running {script}: {e}"));
            if value.as_bool() == Some(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client()
            .execute(&format!("return ({script});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Saves the page as `target/screenshots/<test>/<name>.png`, for people to look at.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("screenshot");
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("writing screenshot");
        path
    }

    /// Waits for a finished download in the download folder; its path.
    pub async fn downloaded(&self, suffix: &str) -> PathBuf {
        let deadline = Instant::now() + WAIT;
        loop {
            let done = std::fs::read_dir(&self.downloads)
                .expect("downloads dir")
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| path.to_string_lossy().ends_with(suffix));
            if let Some(path) = done {
                return path;
            }
            assert!(
                Instant::now() < deadline,
                "no *{suffix} download in {}",
                self.downloads.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Closing the session is what ends Chromium; chromedriver alone would leave it.
            let _ = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(tokio::time::timeout(
                    Duration::from_secs(10),
                    client.close(),
                ))
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return candidate;
            }
        }
    }
    panic!(
        "none of {names:?} on PATH: install Debian's chromium and chromium-driver (scripts/tools.sh does)"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = http.get(url).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
            && body["value"]["ready"] == json!(true)
        {
            return;
        }
        assert!(Instant::now() < deadline, "chromedriver not ready at {url}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
