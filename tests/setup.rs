//! Registering the GitHub App from the browser, end to end, on the real
//! binary: a service started without App credentials offers `/setup`
//! behind its one-time token, posts a manifest that asks for what the
//! service uses, takes GitHub's callback only with the state it handed out
//! (once), stores the credentials with mode 0600 and starts using them in
//! the same process: the next webhook is verified with the App's new secret.
//! GitHub is the stateful fake (its github.com side registers the App from
//! the posted manifest and exchanges the code).

mod harness;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use harness::{ChildService, fixture, sign};
use support::fake_github::FakeGitHub;

/// The value of the first `name="…" value="…"` input, HTML-unescaped.
fn input_value(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\""))
        .unwrap_or_else(|| panic!("no input {name} in {html}"));
    let rest = &html[at..];
    let start = rest.find("value=\"").expect("a value") + 7;
    let end = rest[start..].find('"').expect("value's end") + start;
    unescape(&rest[start..end])
}

fn form_action(html: &str) -> String {
    let at = html.find("id=\"manifest\"").expect("the manifest form");
    let rest = &html[at..];
    let start = rest.find("action=\"").expect("an action") + 8;
    let end = rest[start..].find('"').unwrap() + start;
    unescape(&rest[start..end])
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_registered_from_the_browser_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("repos")).unwrap();
    let github = FakeGitHub::start(dir.path().join("repos")).await;
    let db = dir.path().join("tm.db");
    let service = ChildService::start_with_secret(
        &format!("sqlite://{}", db.display()),
        &[
            ("GITHUB_API_URL", &github.url),
            ("GITHUB_WEB_URL", &github.url),
        ],
        None,
    );
    let base = service.base_url.clone();
    let client = taskmaster::agent::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Until an App exists, every delivery is refused.
    let body = fixture("pull_request.opened.json");
    let (status, _) = harness::post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some("before-registration"),
        &body,
        Some(&sign("any-secret", &body)),
    )
    .await;
    assert_eq!(status, 401);

    // `/` leads to the set-up page, which wants the one-time token.
    let home = client.get(format!("{base}/")).send().await.unwrap();
    assert!(home.status().is_redirection());
    assert_eq!(home.headers()["location"], "/setup");
    let no_token = client.get(format!("{base}/setup")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    let wrong = client
        .get(format!(
            "{base}/setup?token=0123456789abcdef0123456789abcdef"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let token_file = service.data_dir.path().join("setup-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let page = client
        .get(format!("{base}/setup?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let text = page.text().await.unwrap();
    assert!(
        text.contains(&format!("{base}/api/github/webhooks")),
        "{text}"
    );

    // Without the token's cookie, the form is refused.
    let form = "name=tm-acme&owner=organization&organization=acme&public=true";
    let refused = client
        .post(format!("{base}/setup"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let started = client
        .post(format!("{base}/setup"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie)
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    let csp = started.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains(&format!("form-action 'self' {}", github.url)),
        "{csp}"
    );
    let html = started.text().await.unwrap();
    let action = form_action(&html);
    let prefix = format!("{}/organizations/acme/settings/apps/new?state=", github.url);
    assert!(action.starts_with(&prefix), "{action}");
    let state = action[prefix.len()..].to_owned();
    assert_eq!(state.len(), 32);

    // The manifest asks for what the service uses, at this address.
    let manifest: serde_json::Value =
        serde_json::from_str(&input_value(&html, "manifest")).unwrap();
    assert_eq!(manifest["name"], "tm-acme");
    assert_eq!(manifest["public"], true);
    assert_eq!(
        manifest["hook_attributes"]["url"],
        format!("{base}/api/github/webhooks")
    );
    assert_eq!(manifest["redirect_url"], format!("{base}/setup/callback"));
    assert_eq!(
        manifest["callback_urls"],
        serde_json::json!([format!("{base}/auth/github/callback")])
    );
    let permissions = &manifest["default_permissions"];
    assert_eq!(permissions["checks"], "write");
    assert_eq!(permissions["pull_requests"], "write");
    assert_eq!(permissions["contents"], "write");
    assert_eq!(permissions["members"], "read");
    assert!(permissions.get("workflows").is_none());
    assert!(
        manifest["default_events"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("pull_request"))
    );

    // A forged state is refused before anything is exchanged.
    let forged = client
        .get(format!(
            "{base}/setup/callback?code=abc123&state=00000000000000000000000000000000"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);

    // The browser posts the manifest to GitHub, which creates the App and
    // sends the browser back with a code and the state.
    let at_github = client
        .post(&action)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "manifest={}",
            taskmaster::dashboard::signin::percent_encode(&manifest.to_string())
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        at_github.status(),
        302,
        "{}",
        at_github.text().await.unwrap()
    );
    let back = at_github.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{base}/setup/callback?code=")),
        "{back}"
    );
    assert!(back.ends_with(&format!("&state={state}")), "{back}");
    let apps = github.registered_apps();
    assert_eq!(apps.len(), 1);
    assert_eq!(apps[0].organization.as_deref(), Some("acme"));
    let app = apps[0].clone();

    let done = client.get(&back).send().await.unwrap();
    assert_eq!(done.status(), 200);
    let done = done.text().await.unwrap();
    assert!(
        done.contains(&format!("{}/apps/tm-acme/installations/new", github.url)),
        "{done}"
    );

    // The credentials, readable by the service's user only.
    let env_file = service.data_dir.path().join("github-app.env");
    let pem_file = service.data_dir.path().join("github-app.pem");
    for file in [&env_file, &pem_file] {
        assert_eq!(
            std::fs::metadata(file).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            file.display()
        );
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains(&format!("GITHUB_APP_ID={}\n", app.id)),
        "{env}"
    );
    assert!(env.contains("GITHUB_APP_SLUG=tm-acme\n"), "{env}");
    assert!(
        env.contains(&format!("GITHUB_CLIENT_ID={}\n", app.client_id)),
        "{env}"
    );
    assert!(!token_file.exists(), "the set-up token is gone once used");

    // The same process starts again with the App: a delivery signed with
    // the App's new secret is accepted, the old refusal stands for others.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{base}/api/ready")).send().await;
        let registered = service
            .logs_text()
            .contains("starting again with the registered GitHub App");
        if registered && ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not come back with the App: {}",
            service.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, receipt) = harness::post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some("after-registration"),
        &body,
        Some(&sign(&app.webhook_secret, &body)),
    )
    .await;
    assert_eq!(status, 202, "{receipt:?}");
    let (status, _) = harness::post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some("forged-after-registration"),
        &body,
        Some(&sign("any-secret", &body)),
    )
    .await;
    assert_eq!(status, 401);

    // Registering again, or reusing the callback, is refused; `/` is the
    // dashboard again.
    let again = client.get(&back).send().await.unwrap();
    assert_eq!(again.status(), 409);
    let again = client.get(format!("{base}/setup")).send().await.unwrap();
    assert_eq!(again.status(), 409);
    let home = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(home.headers()["location"], "/runs");
    assert!(
        !service.logs_text().contains(&app.webhook_secret),
        "the secret never reaches the logs"
    );
}

/// A registration stored by an earlier process is used at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_credentials_are_used_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tm.db");
    let data = tempfile::tempdir().unwrap();
    let app = taskmaster::tools::ManifestConversion {
        id: 777,
        slug: "tm-stored".into(),
        pem: include_str!("fixtures/github/app-key.pem").into(),
        webhook_secret: Some("stored-secret".into()),
        html_url: None,
        client_id: None,
        client_secret: None,
    };
    taskmaster::setup::store_credentials(data.path(), &app).unwrap();
    let service = ChildService::start_with_secret(
        &format!("sqlite://{}", db.display()),
        &[
            ("TASKMASTER_DATA_DIR", data.path().to_str().unwrap()),
            // Nothing listens there: the App's calls fail fast.
            ("GITHUB_API_URL", "http://127.0.0.1:9"),
        ],
        None,
    );
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let body = fixture("pull_request.opened.json");
    let (status, _) = harness::post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some("stored-1"),
        &body,
        Some(&sign("stored-secret", &body)),
    )
    .await;
    assert_eq!(status, 202);
    let setup = client
        .get(format!("{}/setup", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(setup.status(), 409, "no set-up once an App exists");
    assert!(
        service.logs_text().contains("GitHub App webhook URL"),
        "{}",
        service.logs_text()
    );
}
