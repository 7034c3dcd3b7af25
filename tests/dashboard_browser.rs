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

mod browser;
mod dashboard_support;

use browser::{Browser, start_driver};
use dashboard_support::Dash;
use serde_json::json;
use taskmaster::store::Role;

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
