//! The dashboard in a real browser: headless Chromium driven by
//! chromedriver over the W3C WebDriver protocol (a few JSON calls, spoken
//! here directly with reqwest rather than through another crate).
//!
//! Log in with an operator token through the form, open a run whose first
//! step is running, see the graph with its states, press Pause and see the
//! run paused, then let the step finish and watch its box turn green
//! without a reload (SSE). A screenshot goes to `target/dashboard-run.png`.
//!
//! Needs `chromium` and `chromium-driver` (Debian; `scripts/test.sh`
//! installs them). When the browser cannot be started the test FAILS with
//! the reason — it never skips. `CHROMEDRIVER` and `CHROMIUM` override the
//! paths.

mod dashboard_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dashboard_support::Dash;
use serde_json::{Value, json};
use taskmaster::store::Role;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed on drop.
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_driver(http: &reqwest::Client) -> Driver {
    let path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let port = free_port();
    let child = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver at {path}: {e}. Install Debian's `chromium` and \
                 `chromium-driver` (apt-get install -y chromium chromium-driver; \
                 scripts/test.sh does) or set CHROMEDRIVER"
            )
        });
    let driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}/status", driver.base)).send().await
            && r.status().is_success()
        {
            return driver;
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver at {path} did not answer on port {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn start(http: reqwest::Client, driver: &Driver) -> Browser {
        let binary = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1400"]
            }
        } } });
        let resp: Value = http
            .post(format!("{}/session", driver.base))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"].as_str().unwrap_or_else(|| {
            panic!("Chromium ({binary}) could not be started by chromedriver: {resp}")
        });
        Browser {
            session: format!("{}/session/{session}", driver.base),
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {}", v["value"]);
        }
        v["value"].clone()
    }

    /// The browser console's errors since the last call (chromedriver's
    /// log endpoint; `goog:loggingPrefs` asks it to keep them).
    async fn console_errors(&self) -> Vec<String> {
        self.call(
            reqwest::Method::POST,
            "/se/log",
            Some(json!({ "type": "browser" })),
        )
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Waits until `script` returns `true`.
    async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.script(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let html = self
                    .script("return document.documentElement.outerHTML")
                    .await;
                panic!("the page never showed {what}: {html}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, to: &std::path::Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(to, png).unwrap();
    }

    async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn node_state(step: &str) -> String {
    format!(
        "var n = document.querySelector('#dag g.node[data-step=\"{step}\"]'); \
         return n ? n.getAttribute('data-state') : null;"
    )
}

#[tokio::test]
async fn a_run_page_in_chromium_shows_the_graph_pauses_and_updates_live() {
    let http = taskmaster::agent::http_client_builder().build().unwrap();
    let driver = start_driver(&http).await;
    let browser = Browser::start(http, &driver).await;
    let d = Dash::start(false).await;
    let id = d.execute("gated", 77).await;
    d.wait_for(id, Some("build"), "running").await;

    // Log in through the form as an operator.
    browser.goto(&format!("{}/runs/{id}", d.base)).await;
    browser
        .wait_until(
            "the login form",
            "return !!document.querySelector('#token')",
        )
        .await;
    browser
        .type_into("#token", &d.tokens[&Role::Operator])
        .await;
    browser.click("#login-submit").await;
    browser
        .wait_until("the run page", "return !!document.querySelector('#dag')")
        .await;

    // The graph with its states.
    assert_eq!(browser.script(&node_state("build")).await, "running");
    for step in ["test", "lint", "ship"] {
        assert_eq!(browser.script(&node_state(step)).await, "pending", "{step}");
    }
    assert_eq!(
        browser
            .script("return document.querySelectorAll('#dag path.edge').length")
            .await,
        4
    );
    let title = browser
        .script("return document.querySelector('#subject').textContent")
        .await;
    assert!(
        title
            .as_str()
            .unwrap()
            .contains("<script>alert(1)</script>"),
        "the title is shown as text: {title}"
    );
    assert_eq!(
        browser
            .script("return document.querySelectorAll('script:not([src])').length")
            .await,
        0,
        "no script was injected"
    );

    // Pause: the page comes back showing the run paused.
    browser.click("#btn-pause").await;
    browser
        .wait_until(
            "the paused state",
            "var s = document.querySelector('#run-state'); \
             return !!s && s.getAttribute('data-state') === 'paused' \
                    && !!document.querySelector('#btn-resume');",
        )
        .await;
    d.wait_for(id, None, "paused").await;

    // Live: the step finishes while the page stays loaded.
    browser
        .wait_until(
            "the live stream connected",
            "return document.querySelector('#live').getAttribute('data-connected') === 'true'",
        )
        .await;
    browser
        .script("window.__notReloaded = true; return true")
        .await;
    d.open_gate();
    browser
        .wait_until(
            "build succeeded, live",
            "var n = document.querySelector('#dag g.node[data-step=\"build\"]'); \
             return !!n && n.getAttribute('data-state') === 'succeeded' \
                    && !!document.querySelector('#gantt g.attempt[data-outcome=\"succeeded\"]');",
        )
        .await;
    assert_eq!(
        browser.script("return window.__notReloaded === true").await,
        true,
        "updated without a reload"
    );
    assert_eq!(
        browser
            .script(&node_state("test"))
            .await
            .as_str()
            .map(|s| s != "running" && s != "succeeded"),
        Some(true),
        "paused: no new step starts"
    );
    assert_eq!(
        browser
            .script("return document.querySelector('#run-state').getAttribute('data-state')")
            .await,
        "paused"
    );

    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    let shot = target.join("dashboard-run.png");
    browser.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // The list page, on a phone-sized window, lists the run.
    browser
        .call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": 390, "height": 844 })),
        )
        .await;
    browser.goto(&format!("{}/runs", d.base)).await;
    browser
        .wait_until(
            "the run in the list",
            &format!("return !!document.querySelector('tr[data-run=\"{id}\"]')"),
        )
        .await;
    let newer = d.execute("review", 78).await;
    browser
        .wait_until(
            "a new run appearing live",
            &format!("return !!document.querySelector('tr[data-run=\"{newer}\"]')"),
        )
        .await;
    browser
        .screenshot(&target.join("dashboard-runs-phone.png"))
        .await;

    // The spend page, on the same phone-sized window: its budget meter and
    // tables render, and nothing overflows the page sideways (tables
    // scroll in their own box).
    browser.goto(&format!("{}/spend", d.base)).await;
    browser
        .wait_until(
            "the spend page's budget meter and tables",
            "return !!document.querySelector('#budgets meter') \
             && !!document.querySelector('#by-repository') \
             && !!document.querySelector('#by-day')",
        )
        .await;
    browser
        .wait_until(
            "no sideways scroll",
            "return document.documentElement.scrollWidth <= window.innerWidth",
        )
        .await;
    browser
        .screenshot(&target.join("dashboard-spend-phone.png"))
        .await;

    // The insights page: its four trend charts and its tables render, on
    // the phone-sized window too, with nothing in the console.
    browser.console_errors().await;
    browser.goto(&format!("{}/insights", d.base)).await;
    browser
        .wait_until(
            "the insights page's charts and tables",
            "return document.querySelectorAll('section.charts svg.chart').length === 4 \
             && document.querySelectorAll('svg.chart rect').length > 0 \
             && !!document.querySelector('#workflows') && !!document.querySelector('#steps') \
             && !!document.querySelector('#accuracy')",
        )
        .await;
    browser
        .wait_until(
            "no sideways scroll on insights",
            "return document.documentElement.scrollWidth <= window.innerWidth",
        )
        .await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors on /insights: {errors:?}");
    browser
        .screenshot(&target.join("dashboard-insights-phone.png"))
        .await;
    browser.quit().await;
    d.stop().await;
}
