//! Signing in to the dashboard without a token, on the real binary:
//! with GitHub (the App's OAuth client, `state` and PKCE, against the
//! stateful fake's github.com side, which checks the client, the redirect
//! URI and the verifier), and behind Cloudflare Access (JWTs signed by a
//! locally generated key set, served as Access serves its certs). In
//! headless Chromium, "Sign in with GitHub" lands on the page asked for,
//! signed in with the team's role.

mod browser;
mod harness;
mod support;

use harness::ChildService;
use octocrab::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use support::fake_github::{FakeGitHub, OAuthUser};

const CLIENT_ID: &str = "Iv23litestclient";
const CLIENT_SECRET: &str = "test-client-secret";
const KEY: &str = include_str!("fixtures/github/app-key.pem");
const JWKS: &str = include_str!("fixtures/github/app-key.jwks.json");

use browser::free_port;

fn client() -> reqwest::Client {
    taskmaster::agent::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// `name=value` of the `Set-Cookie` named `name`.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

fn query_param(url: &str, key: &str) -> Option<String> {
    url.split_once('?')?
        .1
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

struct SignInService {
    service: ChildService,
    github: FakeGitHub,
    base: String,
    _dir: tempfile::TempDir,
}

async fn start(config: &str) -> SignInService {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("repos")).unwrap();
    let github = FakeGitHub::start(dir.path().join("repos")).await;
    std::fs::write(dir.path().join("app.pem"), KEY).unwrap();
    std::fs::write(dir.path().join("taskmaster.yml"), config).unwrap();
    let port = free_port().to_string();
    let base = format!("http://127.0.0.1:{port}");
    github.add_oauth_client(
        CLIENT_ID,
        CLIENT_SECRET,
        &format!("{base}/auth/github/callback"),
    );
    let service = ChildService::start(
        &dir.path().join("tm.db"),
        &[
            ("PORT", &port),
            ("PUBLIC_URL", &base),
            ("GITHUB_API_URL", &github.url),
            ("GITHUB_WEB_URL", &github.url),
            ("GITHUB_APP_ID", "12345"),
            (
                "GITHUB_PRIVATE_KEY_PATH",
                dir.path().join("app.pem").to_str().unwrap(),
            ),
            ("GITHUB_CLIENT_ID", CLIENT_ID),
            ("GITHUB_CLIENT_SECRET", CLIENT_SECRET),
            (
                "TASKMASTER_CONFIG",
                dir.path().join("taskmaster.yml").to_str().unwrap(),
            ),
        ],
    );
    assert_eq!(service.base_url, base);
    SignInService {
        service,
        github,
        base,
        _dir: dir,
    }
}

const GITHUB_RULES: &str = "sign_in:\n  github:\n    roles:\n      - { team: acme/platform, role: operator }\n      - { org: acme, role: viewer }\n";

/// One browser's flow up to GitHub's answer: (the flow cookie, the
/// authorize URL).
async fn begin(s: &SignInService, http: &reqwest::Client) -> (String, String) {
    let started = http
        .get(format!("{}/auth/github?next=/agents", s.base))
        .send()
        .await
        .unwrap();
    assert!(started.status().is_redirection(), "{}", started.status());
    let cookie = set_cookie(&started, "tm_oauth").expect("the flow cookie");
    let raw = started.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Lax"),
        "{raw}"
    );
    (cookie, location(&started))
}

/// GitHub's redirect back (as if the person clicked "Authorize").
async fn authorize(http: &reqwest::Client, url: &str) -> String {
    let answer = http.get(url).send().await.unwrap();
    assert_eq!(answer.status(), 302, "{}", answer.text().await.unwrap());
    location(&answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_sign_in_maps_teams_to_roles_and_checks_state_and_pkce() {
    let s = start(GITHUB_RULES).await;
    let http = client();

    // The login page offers it.
    let login = http.get(format!("{}/login", s.base)).send().await.unwrap();
    let login = login.text().await.unwrap();
    assert!(login.contains("Sign in with GitHub"), "{login}");

    // To GitHub with the App's client, our callback, a state and S256.
    let (cookie, authorize_url) = begin(&s, &http).await;
    assert!(authorize_url.starts_with(&format!("{}/login/oauth/authorize?", s.github.url)));
    assert_eq!(
        query_param(&authorize_url, "client_id").as_deref(),
        Some(CLIENT_ID)
    );
    assert_eq!(
        query_param(&authorize_url, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query_param(&authorize_url, "code_challenge").unwrap().len(),
        43
    );
    let state = query_param(&authorize_url, "state").unwrap();
    assert_eq!(state.len(), 32);

    // A member of acme/platform becomes an operator.
    s.github.sign_in_as(OAuthUser {
        login: "bob".into(),
        id: 2,
        orgs: vec!["acme".into()],
        teams: vec!["acme/platform".into()],
    });
    let back = authorize(&http, &authorize_url).await;
    assert!(
        back.starts_with(&format!("{}/auth/github/callback?code=", s.base)),
        "{back}"
    );
    assert_eq!(query_param(&back, "state").as_deref(), Some(state.as_str()));

    // Without the browser's flow cookie (a forged or replayed callback): refused.
    let forged = http.get(&back).send().await.unwrap();
    assert_eq!(forged.status(), 403);

    let done = http
        .get(&back)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let session = set_cookie(&done, "tm_session").expect("a session");
    let body = done.text().await.unwrap();
    assert!(
        body.contains("Signed in as <strong>bob</strong> (operator)"),
        "{body}"
    );
    assert!(body.contains("url=/agents"), "{body}");
    let runs = http
        .get(format!("{}/runs", s.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(runs.status(), 200);
    let runs = runs.text().await.unwrap();
    assert!(runs.contains("(operator)"), "{runs}");
    assert!(runs.contains("github.bob."), "the session's name: {runs}");

    // The code works once.
    let again = http
        .get(&back)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 502);

    // A state other than this browser's: refused before any exchange.
    let (cookie, authorize_url) = begin(&s, &http).await;
    let back = authorize(&http, &authorize_url).await;
    let code = query_param(&back, "code").unwrap();
    let wrong_state = http
        .get(format!(
            "{}/auth/github/callback?code={code}&state=0123456789abcdef0123456789abcdef",
            s.base
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_state.status(), 403);

    // PKCE: a code issued to one flow, brought to another browser's flow
    // (its state and cookie), fails at GitHub: the verifier does not match.
    let (cookie_a, url_a) = begin(&s, &http).await;
    let (cookie_b, url_b) = begin(&s, &http).await;
    let stolen = query_param(&authorize(&http, &url_a).await, "code").unwrap();
    let state_b = query_param(&url_b, "state").unwrap();
    let mixed = http
        .get(format!(
            "{}/auth/github/callback?code={stolen}&state={state_b}",
            s.base
        ))
        .header("cookie", &cookie_b)
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), 502);
    assert!(mixed.text().await.unwrap().contains("code_verifier"));
    drop(cookie_a);

    // A member of acme outside the team: viewer.
    s.github.sign_in_as(OAuthUser {
        login: "carol".into(),
        id: 3,
        orgs: vec!["acme".into()],
        teams: vec![],
    });
    let (cookie, url) = begin(&s, &http).await;
    let back = authorize(&http, &url).await;
    let done = http
        .get(&back)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("(viewer)"));

    // Someone no rule names: refused, and told why.
    s.github.sign_in_as(OAuthUser {
        login: "mallory".into(),
        id: 4,
        orgs: vec!["evil".into()],
        teams: vec!["evil/platform".into()],
    });
    let (cookie, url) = begin(&s, &http).await;
    let back = authorize(&http, &url).await;
    let refused = http
        .get(&back)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(set_cookie(&refused, "tm_session").is_none());
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("mallory is in none of the organizations"),
        "{text}"
    );

    // The user tokens GitHub issued never reach the logs.
    assert!(!s.service.logs_text().contains("ghu_"));
}

fn access_config(team_domain: &str) -> String {
    format!(
        "sign_in:\n  cloudflare_access:\n    team_domain: {team_domain}\n    audience: test-aud\n    roles:\n      - {{ email: alice@acme.com, role: operator }}\n      - {{ group: platform, role: operator }}\n      - {{ email_domain: acme.com, role: viewer }}\n"
    )
}

fn access_jwt(claims: serde_json::Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(KEY.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_access_tokens_are_verified_before_they_open_the_dashboard() {
    // Cloudflare Access's certs endpoint, on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let team = format!("http://{}", listener.local_addr().unwrap());
    let certs = axum::Router::new().route(
        "/cdn-cgi/access/certs",
        axum::routing::get(|| async { ([("content-type", "application/json")], JWKS) }),
    );
    tokio::spawn(async move { axum::serve(listener, certs).await.unwrap() });

    let s = start(&access_config(&team)).await;
    let http = client();
    let now = chrono::Utc::now().timestamp();
    let claims = |email: &str, iss: &str, aud: &str, exp: i64| {
        serde_json::json!({ "email": email, "iss": iss, "aud": [aud], "exp": exp,
                            "iat": now, "nbf": now - 1, "sub": "user-1", "type": "app" })
    };
    let runs = |jwt: String| {
        let http = http.clone();
        let url = format!("{}/runs", s.base);
        async move {
            let answer = http
                .get(url)
                .header("cf-access-jwt-assertion", jwt)
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            (status, answer.text().await.unwrap())
        }
    };

    let (status, page) = runs(access_jwt(
        claims("alice@acme.com", &team, "test-aud", now + 300),
        "test-key-1",
    ))
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("access:alice@acme.com (operator)"), "{page}");
    let (status, page) = runs(access_jwt(
        claims("carol@acme.com", &team, "test-aud", now + 300),
        "test-key-1",
    ))
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("(viewer)"), "{page}");
    let grouped = serde_json::json!({ "email": "dan@partner.org", "iss": team, "aud": ["test-aud"],
        "exp": now + 300, "custom": { "groups": ["platform"] } });
    let (status, page) = runs(access_jwt(grouped, "test-key-1")).await;
    assert_eq!(status, 200);
    assert!(page.contains("access:dan@partner.org (operator)"), "{page}");

    // Refused: each sends the browser to the login page.
    let good = access_jwt(
        claims("alice@acme.com", &team, "test-aud", now + 300),
        "test-key-1",
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&claims("alice@acme.com", &team, "test-aud", now + 9_999)).unwrap(),
        )
    };
    let tampered = parts.join(".");
    for (why, jwt) in [
        (
            "another issuer",
            access_jwt(
                claims(
                    "alice@acme.com",
                    "https://evil.cloudflareaccess.com",
                    "test-aud",
                    now + 300,
                ),
                "test-key-1",
            ),
        ),
        (
            "another audience",
            access_jwt(
                claims("alice@acme.com", &team, "other-app", now + 300),
                "test-key-1",
            ),
        ),
        (
            "expired",
            access_jwt(
                claims("alice@acme.com", &team, "test-aud", now - 600),
                "test-key-1",
            ),
        ),
        (
            "an unknown key",
            access_jwt(
                claims("alice@acme.com", &team, "test-aud", now + 300),
                "other-key",
            ),
        ),
        ("a bad signature", tampered),
        (
            "no rule",
            access_jwt(
                claims("eve@elsewhere.org", &team, "test-aud", now + 300),
                "test-key-1",
            ),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
    ] {
        let (status, _) = runs(jwt).await;
        assert_eq!(status, 303, "{why} must be refused");
    }
    // Without the header, the dashboard wants a login as before.
    let plain = http.get(format!("{}/runs", s.base)).send().await.unwrap();
    assert_eq!(plain.status(), 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_sign_in_with_github_lands_on_the_runs_as_an_operator() {
    let s = start(GITHUB_RULES).await;
    s.github.sign_in_as(OAuthUser {
        login: "bob".into(),
        id: 2,
        orgs: vec!["acme".into()],
        teams: vec!["acme/platform".into()],
    });
    let http = taskmaster::agent::http_client_builder().build().unwrap();
    let driver = browser::start_driver(&http).await;
    let chromium = browser::Browser::start(http, &driver).await;
    // A page that needs a session sends the browser to the login page,
    // which remembers where it was going.
    chromium.goto(&format!("{}/runs", s.base)).await;
    chromium
        .wait_until(
            "the login page",
            "return location.pathname === '/login' && !!document.querySelector('#github-sign-in')",
        )
        .await;
    chromium.click("#github-sign-in").await;
    // GitHub (the fake) authorizes at once and sends the browser back; the
    // callback's page moves on to /runs with the session cookie.
    chromium
        .wait_until(
            "the runs, signed in as an operator",
            "return location.pathname === '/runs' \
               && document.body.innerText.includes('(operator)') \
               && !!document.querySelector('form[action=\"/logout\"]')",
        )
        .await;
    let errors = chromium.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    chromium.quit().await;
}
