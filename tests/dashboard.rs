//! The dashboard's pages over real HTTP on loopback, with the real engine:
//! status codes, who may see and do what, CSRF, escaping of untrusted text,
//! and the SSE streams. The browser tests are in `dashboard_browser.rs`.

mod dashboard_support;

use std::time::Duration;
use taskmaster::store::RunId;

use dashboard_support::{Dash, EVIL_TITLE, csrf_of, set_cookie};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use taskmaster::store::{DeliveryState, EncodedPayload, NewDelivery, Role, now_ms};

const ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";

#[track_caller]
fn assert_escaped(body: &str) {
    assert!(!body.contains("<script>alert(1)"), "raw markup in {body}");
    assert!(body.contains(ESCAPED), "the title is missing from {body}");
}

#[tokio::test]
async fn a_private_dashboard_sends_strangers_to_the_login() {
    let d = Dash::start(false).await;
    for path in [
        "/runs",
        "/runs/1",
        "/runs/1/live",
        "/runs/1/events",
        "/runs/events",
        "/agents",
        "/deliveries",
        "/tasks",
        "/spend",
        "/insights",
    ] {
        let p = d.get(path, None).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(p.location(), format!("/login?next={path}"), "{path}");
    }
    let p = d.get("/", None).await;
    assert_eq!(p.location(), "/runs");
    for path in ["/login", "/static/dashboard.css", "/static/dashboard.js"] {
        assert_eq!(d.get(path, None).await.status, StatusCode::OK, "{path}");
    }
    // A forged or expired cookie is no session.
    let forged = "tm_session=abc.99999999999999.00";
    assert_eq!(
        d.get("/runs", Some(forged)).await.status,
        StatusCode::SEE_OTHER
    );
    // Controls are refused without a session, public or not.
    let p = d.post("/runs/1/pause", None, &[("csrf", "x")]).await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    d.stop().await;
}

#[tokio::test]
async fn a_public_dashboard_is_readable_without_login_but_not_controllable() {
    let d = Dash::start(true).await;
    let id = d.execute("gated", 3).await;
    d.wait_for(id, Some("build"), "running").await;
    for path in ["/runs", "/agents", "/deliveries", "/tasks"] {
        assert_eq!(d.get(path, None).await.status, StatusCode::OK, "{path}");
    }
    let page = d.get(&format!("/runs/{id}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("btn-pause"),
        "no controls for strangers"
    );
    assert!(page.body.contains("Log in"));
    let p = d
        .post(&format!("/runs/{id}/pause"), None, &[("csrf", "x")])
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    d.open_gate();
    d.wait_for(id, None, "succeeded").await;
    d.stop().await;
}

#[test]
fn after_login_only_a_same_site_path_is_followed() {
    use taskmaster::dashboard::pages::safe_next;
    for evil in [
        "//evil.example/x",
        "/\t/evil.example",
        "/\n/evil.example",
        "/\\evil.example",
        "/ /evil.example",
        "https://evil.example",
        "evil.example",
        "/\u{7f}/evil.example",
        "/\u{2028}/evil.example",
    ] {
        assert_eq!(safe_next(Some(evil)), "/runs", "{evil:?}");
    }
    for ok in ["/agents", "/runs/7", "/runs?state=failed&cursor=9"] {
        assert_eq!(safe_next(Some(ok)), ok);
    }
    assert_eq!(safe_next(None), "/runs");
}

#[tokio::test]
async fn login_needs_its_csrf_token_and_a_valid_token_and_sets_a_strict_cookie() {
    let d = Dash::start(false).await;
    let form = d.get("/login?next=/agents", None).await;
    let login_cookie = set_cookie(&form.headers, "tm_login").unwrap();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let login_cookie = login_cookie.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&form.body);
    let token = d.tokens[&Role::Viewer].clone();

    // No login cookie, or a token from another form: refused.
    let p = d
        .post("/login", None, &[("token", &token), ("csrf", &csrf)])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = d
        .post(
            "/login",
            Some(&login_cookie),
            &[("token", &token), ("csrf", "0000")],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // A wrong token.
    let p = d
        .post(
            "/login",
            Some(&login_cookie),
            &[("token", "tm_nope"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&p.headers, "tm_session").is_none());
    // The right one: a secure, HTTP-only, same-site session; `next` is followed
    // only within the site.
    let p = d
        .post(
            "/login",
            Some(&login_cookie),
            &[
                ("token", &token),
                ("csrf", &csrf),
                ("next", "//evil.example/x"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/runs");
    let session = set_cookie(&p.headers, "tm_session").unwrap();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(attr), "{session} lacks {attr}");
    }
    assert!(
        !session.contains(&token),
        "the token itself is not in the cookie"
    );
    let cookie = session.split(';').next().unwrap().to_owned();
    assert_eq!(d.get("/runs", Some(&cookie)).await.status, StatusCode::OK);

    // Logging out needs the CSRF token.
    let page = d.get("/runs", Some(&cookie)).await;
    let csrf = csrf_of(&page.body);
    let p = d.post("/logout", Some(&cookie), &[("csrf", "bad")]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = d.post("/logout", Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert!(
        set_cookie(&p.headers, "tm_session")
            .unwrap()
            .contains("Max-Age=0")
    );
    // The session ended on the server: the old cookie, replayed, opens
    // nothing (it is sent to the login page).
    let replayed = d.get("/runs", Some(&cookie)).await;
    assert_eq!(replayed.status, StatusCode::SEE_OTHER);
    assert!(
        replayed.location().starts_with("/login"),
        "{}",
        replayed.location()
    );

    // Revoking the token ends its sessions at once.
    let cookie = d.login(Role::Viewer).await;
    assert_eq!(d.get("/runs", Some(&cookie)).await.status, StatusCode::OK);
    taskmaster::api::auth::revoke_token(
        &*d.store,
        "viewer-token",
        (taskmaster::store::ActorKind::System, "test"),
    )
    .await
    .unwrap();
    assert_eq!(
        d.get("/runs", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
    d.stop().await;
}

#[tokio::test]
async fn the_run_pages_show_the_graph_attempts_outputs_and_timeline_escaped() {
    let d = Dash::start(false).await;
    let cookie = d.login(Role::Viewer).await;
    let id = d.execute("review", 42).await;
    d.wait_for(id, None, "succeeded").await;

    let list = d.get("/runs", Some(&cookie)).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_escaped(&list.body);
    assert!(list.body.contains(&format!("href=\"/runs/{id}\"")));
    let csp = list.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    let page = d.get(&format!("/runs/{id}"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    let b = &page.body;
    assert_escaped(b);
    assert!(
        b.contains("href=\"https://github.com/octo/repo/pull/42\""),
        "{b}"
    );
    assert!(b.contains("<svg id=\"dag\""), "the DAG is drawn");
    assert!(b.contains("data-step=\"check\" data-state=\"succeeded\""));
    assert!(b.contains("data-step=\"report\" data-state=\"succeeded\""));
    assert!(b.contains("<svg id=\"gantt\""), "the attempts are drawn");
    assert!(b.contains("data-outcome=\"succeeded\""));
    assert!(b.contains("checked 42"), "the output is shown");
    assert!(
        b.contains("&lt;b&gt;bold&lt;/b&gt; reported"),
        "outputs are escaped"
    );
    assert!(
        b.contains("data-kind=\"run_finished\""),
        "the timeline is shown"
    );
    // The `report` step's verdict report: its verdict, summary and findings, escaped.
    assert!(
        b.contains("data-step=\"report\" data-verdict=\"neutral\""),
        "{b}"
    );
    assert!(b.contains("Looked &lt;i&gt;twice&lt;/i&gt;."), "{b}");
    assert!(b.contains("<li data-severity=\"warning\">"), "{b}");
    assert!(b.contains("&lt;i&gt;odd&lt;/i&gt;"), "{b}");
    assert!(b.contains("src/a b.rs:2"), "{b}");
    assert!(!b.contains("btn-pause"), "a viewer has no controls");

    let live = d.get(&format!("/runs/{id}/live"), Some(&cookie)).await;
    assert_eq!(live.status, StatusCode::OK);
    assert!(!live.body.contains("<html"), "the live part alone");
    assert_escaped(&live.body);

    // No step changed files: no Changes section. A refused change shows
    // why, its files and its diff, escaped.
    assert!(!b.contains("id=\"changes\""));
    let change = taskmaster::workspace::Change {
        base_sha: "a".repeat(40),
        files: vec![taskmaster::workspace::ChangedFile {
            path: "src/<evil>.rs".into(),
            status: taskmaster::workspace::FileStatus::Modified,
            old_mode: Some("100644".into()),
            new_mode: Some("100644".into()),
            sha: Some("b".repeat(40)),
            size: 10,
            additions: 2,
            deletions: 1,
            binary: false,
        }],
        additions: 2,
        deletions: 1,
        diff: "+<script>alert(1)</script>\n".into(),
        ..Default::default()
    };
    d.store
        .record_change(
            RunId(id),
            "check",
            &change,
            Some("line 1 of `src/<evil>.rs` adds a secret"),
        )
        .await
        .unwrap();
    let page = d.get(&format!("/runs/{id}"), Some(&cookie)).await;
    let b = &page.body;
    assert_escaped(b);
    assert!(
        b.contains("<div id=\"changes\" data-state=\"refused\">"),
        "{b}"
    );
    assert!(b.contains("Change refused, nothing was sent"), "{b}");
    assert!(b.contains("src/&lt;evil&gt;.rs"), "{b}");
    assert!(b.contains("+&lt;script&gt;alert(1)&lt;/script&gt;"), "{b}");
    assert!(b.contains("data-kind=\"changes\""), "the timeline has it");

    // Filters, pages and bad input.
    let other = d
        .get("/runs?workflow=gated&state=&repository=", Some(&cookie))
        .await;
    assert!(other.body.contains("No runs match"));
    let same = d
        .get(
            "/runs?workflow=review&state=succeeded&repository=octo%2Frepo",
            Some(&cookie),
        )
        .await;
    assert!(same.body.contains(&format!("data-run=\"{id}\"")));
    let older = d.get(&format!("/runs?cursor={id}"), Some(&cookie)).await;
    assert!(!older.body.contains(&format!("data-run=\"{id}\"")));
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let dated = d
        .get(&format!("/runs?from={today}&to={today}"), Some(&cookie))
        .await;
    assert!(dated.body.contains(&format!("data-run=\"{id}\"")));
    let old = d.get("/runs?to=2000-01-01", Some(&cookie)).await;
    assert!(old.body.contains("No runs match"));
    assert_eq!(
        d.get("/runs?from=yesterday", Some(&cookie)).await.status,
        StatusCode::BAD_REQUEST
    );
    let frag = d.get("/runs?fragment=1", Some(&cookie)).await;
    assert!(frag.body.contains("<table id=\"runs\"") && !frag.body.contains("<html"));
    assert_eq!(
        d.get("/runs?state=bogus", Some(&cookie)).await.status,
        StatusCode::BAD_REQUEST
    );
    for path in [
        "/runs/999999",
        "/runs/abc",
        "/runs/999999/live",
        "/runs/999999/events",
    ] {
        assert_eq!(
            d.get(path, Some(&cookie)).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn controls_need_the_operator_role_and_the_csrf_token() {
    let d = Dash::start(false).await;
    let id = d.execute("gated", 5).await;
    d.wait_for(id, Some("build"), "running").await;
    let path = format!("/runs/{id}/pause");

    let viewer = d.login(Role::Viewer).await;
    let page = d.get(&format!("/runs/{id}"), Some(&viewer)).await;
    assert!(!page.body.contains("btn-pause"));
    let csrf = csrf_of(&page.body); // the logout form's
    let p = d.post(&path, Some(&viewer), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);

    let operator = d.login(Role::Operator).await;
    let page = d.get(&format!("/runs/{id}"), Some(&operator)).await;
    assert!(page.body.contains("id=\"btn-pause\""), "{}", page.body);
    assert!(page.body.contains("id=\"btn-cancel\""));
    let csrf = csrf_of(&page.body);
    // Without, or with another session's, token: refused.
    let p = d.post(&path, Some(&operator), &[]).await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let viewer_csrf = csrf_of(&d.get("/runs", Some(&viewer)).await.body);
    let p = d
        .post(&path, Some(&operator), &[("csrf", &viewer_csrf)])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    // From another site: refused even with the token.
    let resp = d
        .client
        .post(format!("{}{path}", d.base))
        .header("cookie", &operator)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        d.store
            .run(RunId(id))
            .await
            .unwrap()
            .unwrap()
            .run
            .state
            .as_str(),
        "running"
    );

    // The real thing.
    let p = d.post(&path, Some(&operator), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), format!("/runs/{id}"));
    d.wait_for(id, None, "paused").await;
    d.open_gate();
    d.wait_for(id, Some("build"), "succeeded").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = d.store.run(RunId(id)).await.unwrap().unwrap();
    let test_state = snap.step("test").unwrap().state.as_str();
    assert!(
        ["pending", "ready"].contains(&test_state),
        "paused: `test` must not start, but it is {test_state}"
    );
    let page = d.get(&format!("/runs/{id}"), Some(&operator)).await;
    assert!(page.body.contains("id=\"btn-resume\""));
    let p = d
        .post(
            &format!("/runs/{id}/resume"),
            Some(&operator),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    d.wait_for(id, None, "succeeded").await;
    let page = d.get(&format!("/runs/{id}"), Some(&operator)).await;
    assert!(page.body.contains("id=\"btn-retry\""));
    let p = d
        .post(
            &format!("/runs/{id}/launch"),
            Some(&operator),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);

    // Audited under the token's name.
    let audit = d.store.audit_entries(None, 100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "run.pause" && e.actor == "operator-token" && e.outcome == "ok"),
        "{audit:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn the_spend_page_shows_budgets_repositories_agents_and_days() {
    let d = Dash::start(false).await;
    let viewer = d.login(Role::Viewer).await;
    let run = d.execute("review", 3).await;
    d.wait_for(run, None, "succeeded").await;
    let page = d.get("/spend", Some(&viewer)).await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    assert!(body.contains("aria-current=\"page\">Spend"), "{body}");
    assert!(body.contains("data-scope=\"global_month\""), "{body}");
    assert!(body.contains("$250.00"), "{body}");
    assert!(body.contains("<td>octo/repo</td>"), "{body}");
    assert!(body.contains("<td>review</td><td>command</td>"), "{body}");
    assert!(body.contains("id=\"by-day\""), "{body}");
    // The run page has a cost per step: none reported or priced here.
    let run_page = d.get(&format!("/runs/{run}"), Some(&viewer)).await;
    assert!(
        run_page.body.contains("<td class=\"cost\">—</td>"),
        "{}",
        run_page.body
    );
    d.stop().await;
}

#[tokio::test]
async fn the_insights_page_shows_workflows_steps_agents_predictions_and_charts() {
    let d = Dash::start(false).await;
    let viewer = d.login(Role::Viewer).await;
    let run = d.execute("review", 4).await;
    d.wait_for(run, None, "succeeded").await;
    let page = d.get("/insights", Some(&viewer)).await;
    assert_eq!(page.status, StatusCode::OK);
    let body = &page.body;
    assert!(body.contains("aria-current=\"page\">Insights"), "{body}");
    assert!(body.contains("<section class=\"charts\""), "{body}");
    assert_eq!(body.matches("<svg class=\"chart\"").count(), 4, "{body}");
    assert!(
        body.contains("<td>review</td><td>1</td><td>100 %</td>"),
        "{body}"
    );
    assert!(body.contains("id=\"steps\""), "{body}");
    assert!(body.contains("<td>command</td>"), "{body}");
    assert!(body.contains("id=\"accuracy\""), "{body}");
    // Filters: another repository has nothing.
    let other = d
        .get("/insights?days=7&repository=octo%2Fnone", Some(&viewer))
        .await;
    assert!(
        other.body.contains("No runs in this window yet"),
        "{}",
        other.body
    );
    // The run page says what was predicted when it was created.
    let run_page = d.get(&format!("/runs/{run}"), Some(&viewer)).await;
    assert!(
        run_page.body.contains("id=\"predicted\""),
        "{}",
        run_page.body
    );
    d.stop().await;
}

#[tokio::test]
async fn agents_deliveries_and_tasks_pages() {
    let d = Dash::start(false).await;
    let viewer = d.login(Role::Viewer).await;
    let operator = d.login(Role::Operator).await;

    let agents = d.get("/agents", Some(&viewer)).await;
    assert_eq!(agents.status, StatusCode::OK);
    assert!(
        agents.body.contains("data-agent=\"command\""),
        "{}",
        agents.body
    );

    // A task with an untrusted title.
    let resp = d
        .client
        .post(format!("{}/api/tasks", d.base))
        .bearer_auth(&d.tokens[&Role::Developer])
        .json(&json!({ "text": format!("fix: {EVIL_TITLE}\n\n- [ ] it works"), "repository": "octo/repo" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let tasks = d.get("/tasks", Some(&viewer)).await;
    assert_eq!(tasks.status, StatusCode::OK);
    assert_escaped(&tasks.body);
    assert!(tasks.body.contains("Evidence ("), "{}", tasks.body);
    assert!(tasks.body.contains("bugfix"));

    // A failed delivery with an untrusted error, then redelivered.
    d.store
        .insert_deliveries(&[NewDelivery {
            delivery_id: "d-failed-1".into(),
            event: "ping".into(),
            action: None,
            hook_id: None,
            installation_id: None,
            repository: Some("octo/repo".into()),
            sender_id: None,
            sender_login: Some("octocat".into()),
            payload: EncodedPayload::encode(bytes::Bytes::from_static(b"{}")),
            received_at: now_ms(),
            state: DeliveryState::Failed,
        }])
        .await
        .unwrap();
    let page = d.get("/deliveries", Some(&viewer)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("data-delivery=\"d-failed-1\" data-state=\"failed\"")
    );
    assert!(
        !page.body.contains("Redeliver</button>"),
        "viewers see no button"
    );
    let page = d.get("/deliveries?state=failed", Some(&operator)).await;
    assert!(page.body.contains("Redeliver</button>"), "{}", page.body);
    let csrf = csrf_of(&page.body);
    let viewer_csrf = csrf_of(&d.get("/deliveries", Some(&viewer)).await.body);
    let p = d
        .post(
            "/deliveries/d-failed-1/redeliver",
            Some(&viewer),
            &[("csrf", &viewer_csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = d
        .post("/deliveries/d-failed-1/redeliver", Some(&operator), &[])
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    let p = d
        .post(
            "/deliveries/d-failed-1/redeliver",
            Some(&operator),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(p.location(), "/deliveries?requeued=d-failed-1");
    let after = d.store.delivery("d-failed-1").await.unwrap().unwrap();
    assert_ne!(after.state, DeliveryState::Failed);
    let p = d
        .post(
            "/deliveries/nope/redeliver",
            Some(&operator),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert_eq!(
        d.get("/deliveries?state=bogus", Some(&viewer)).await.status,
        StatusCode::BAD_REQUEST
    );
    d.stop().await;
}

/// Reads an SSE response until `pred` holds for the text so far.
async fn read_until(resp: reqwest::Response, pred: impl Fn(&str) -> bool) -> String {
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if pred(&text) {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .is_err()
    {
        panic!("the stream never said it: {text}");
    }
    text
}

#[tokio::test]
async fn sse_streams_a_runs_transitions_and_new_runs() {
    let d = Dash::start(false).await;
    let cookie = d.login(Role::Viewer).await;
    let id = d.execute("gated", 9).await;
    d.wait_for(id, Some("build"), "running").await;

    let resp = d
        .client
        .get(format!("{}/runs/{id}/events", d.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let list = d
        .client
        .get(format!("{}/runs/events", d.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    d.open_gate();
    let text = read_until(resp, |t| {
        t.contains("\"step\":\"build\"") && t.contains("\"kind\":\"run\"")
    })
    .await;
    assert!(text.contains("event: transition"), "{text}");
    assert!(text.contains("\"state\":\"succeeded\""), "{text}");

    let newer = d.execute("review", 10).await;
    let text = read_until(list, |t| t.contains("event: run_created")).await;
    assert!(text.contains(&format!("data: {newer}")), "{text}");
    d.stop().await;
}

#[tokio::test]
async fn a_failed_step_can_be_retried_from_its_output() {
    let d = Dash::start(false).await;
    let id = d.execute("broken", 11).await;
    d.wait_for(id, None, "failed").await;
    let operator = d.login(Role::Operator).await;
    let page = d.get(&format!("/runs/{id}"), Some(&operator)).await;
    assert!(
        page.body.contains("Retry fail and what needs it"),
        "{}",
        page.body
    );
    assert!(page.body.contains("no luck"), "the error is shown");
    assert!(page.body.contains("data-outcome=\"failed\""));
    let csrf = csrf_of(&page.body);
    let p = d
        .post(
            &format!("/runs/{id}/retry"),
            Some(&operator),
            &[("csrf", &csrf), ("step", "fail")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let p = d
        .post(
            &format!("/runs/{id}/retry"),
            Some(&operator),
            &[("csrf", &csrf), ("step", "nope")],
        )
        .await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    let audit = d.store.audit_entries(None, 100).await.unwrap();
    assert!(
        audit.iter().any(|e| e.action == "run.retry"
            && e.outcome == "ok"
            && e.target.as_deref() == Some(&*format!("run:{id}"))),
        "{audit:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn an_open_event_stream_does_not_hold_up_shutdown() {
    let d = Dash::start(true).await;
    let resp = d
        .client
        .get(format!("{}/runs/events", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), d.stop())
        .await
        .expect("the service stopped with a stream open");
    // The stream ended with the service.
    let mut body = resp.bytes_stream();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream did not end");
}

/// A token scoped to repositories works with the API only: the dashboard
/// (which shows every repository) refuses it at the login.
#[tokio::test]
async fn a_scoped_token_cannot_log_in_to_the_dashboard() {
    let d = Dash::start(false).await;
    let (scoped, _) = taskmaster::api::auth::create_token_scoped(
        &*d.store,
        Role::Operator,
        Some("scoped"),
        (taskmaster::store::ActorKind::System, "test"),
        None,
        Some(vec!["octo/repo".into()]),
    )
    .await
    .unwrap();
    let form = d.get("/login", None).await;
    let login_cookie = set_cookie(&form.headers, "tm_login").unwrap();
    let login_cookie = login_cookie.split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&form.body);
    let token = secrecy::ExposeSecret::expose_secret(&scoped.secret).to_owned();
    let p = d
        .post(
            "/login",
            Some(&login_cookie),
            &[("token", &token), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN, "{}", p.body);
    assert!(p.body.contains("scoped to repositories"), "{}", p.body);
    assert!(set_cookie(&p.headers, "tm_session").is_none());
    d.stop().await;
}
