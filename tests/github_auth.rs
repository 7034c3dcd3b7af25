//! App authentication against a fake GitHub: the App JWT's header and
//! claims, one installation token per installation reused until it nears
//! expiry, and one refresh-and-retry on a 401.

mod github_world;

use std::time::{SystemTime, UNIX_EPOCH};

use github_world::*;
use octocrab::jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use taskmaster::github::auth::app_jwt;
use taskmaster::github::{AppCredentials, GitHub, GitHubError, GitHubSettings, Permission};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

#[derive(Debug, Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
    /// GitHub accepts the App id as a number or a string.
    iss: serde_json::Value,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[track_caller]
fn assert_app_jwt(jwt: &str) {
    let header = decode_header(jwt).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = true;
    validation.set_required_spec_claims(&["exp", "iat"]);
    let key = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let claims = decode::<Claims>(jwt, &key, &validation)
        .expect("signed with the App key")
        .claims;
    let now = now();
    assert!(
        claims.iss == json!(APP_ID) || claims.iss == json!(APP_ID.to_string()),
        "iss is the App id: {}",
        claims.iss
    );
    assert!(
        claims.iat <= now - 55 && claims.iat >= now - 65,
        "iat backdated 60 s"
    );
    assert!(claims.exp <= now + 600, "exp at most 10 minutes ahead");
    assert!(claims.exp > now, "not expired");
}

#[test]
fn app_jwt_has_github_claims() {
    let credentials = AppCredentials::new(APP_ID, SecretString::from(PRIVATE_KEY)).unwrap();
    let jwt = app_jwt(&credentials, now()).unwrap();
    assert_app_jwt(jwt.expose_secret());
}

#[test]
fn settings_from_environment() {
    let s = GitHubSettings::from_lookup(|_| None).unwrap();
    assert_eq!(s.api_url, "https://api.github.com");
    assert!(s.credentials.is_none(), "no credentials is dry run");

    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, PRIVATE_KEY).unwrap();
    let key_path = key_path.to_string_lossy().into_owned();
    let s = GitHubSettings::from_lookup(|n| match n {
        "GITHUB_APP_ID" => Some("7".into()),
        "GITHUB_PRIVATE_KEY_PATH" => Some(key_path.clone()),
        "GITHUB_API_URL" => Some("https://ghe.example.com/api/v3/".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(s.api_url, "https://ghe.example.com/api/v3");
    assert_eq!(s.credentials.as_ref().unwrap().app_id, 7);
    assert!(
        !format!("{s:?}").contains("PRIVATE KEY"),
        "the key is never printed"
    );

    let bad = GitHubSettings::from_lookup(|n| match n {
        "GITHUB_APP_ID" => Some("7".into()),
        "GITHUB_PRIVATE_KEY" => Some("not a key".into()),
        _ => None,
    });
    assert!(matches!(bad, Err(GitHubError::Config(_))));
    let half = GitHubSettings::from_lookup(|n| (n == "GITHUB_APP_ID").then(|| "7".into()));
    assert!(matches!(half, Err(GitHubError::Config(_))));
}

fn mount_permission(server: &wiremock::MockServer) -> impl std::future::Future<Output = ()> + '_ {
    Mock::given(method("GET"))
        .and(path("/repos/octo/widgets/collaborators/alice/permission"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"permission": "write"})))
        .mount(server)
}

/// The bearer token of each permission request GitHub received, in order.
async fn permission_bearers(w: &World) -> Vec<String> {
    w.requests("GET", "/repos/octo/widgets/collaborators/alice/permission")
        .await
        .iter()
        .map(bearer)
        .collect()
}

#[tokio::test]
async fn token_is_fetched_once_with_the_app_jwt_and_reused() {
    let w = world().await;
    mount_permission(&w.server).await;
    for _ in 0..3 {
        let p = w
            .client
            .collaborator_permission(INSTALLATION, &repo(), "alice")
            .await
            .unwrap();
        assert_eq!(p, Permission::Write);
    }
    let token_requests = w.requests("POST", TOKEN_PATH).await;
    assert_eq!(token_requests.len(), 1, "one token for three requests");
    assert_app_jwt(&bearer(&token_requests[0]));
    assert!(
        permission_bearers(&w)
            .await
            .iter()
            .all(|b| b == "ghs_token_one")
    );
}

/// Twenty requests of one installation that has no token yet, sent at once,
/// wait for one mint instead of each minting its own.
#[tokio::test]
async fn concurrent_first_requests_mint_one_token() {
    let w = world().await;
    mount_permission(&w.server).await;
    let (client, repo) = (&w.client, repo());
    let answers = futures_util::future::join_all(
        (0..20).map(|_| client.collaborator_permission(INSTALLATION, &repo, "alice")),
    )
    .await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|p| *p == Permission::Write))
    );
    assert_eq!(w.requests("POST", TOKEN_PATH).await.len(), 1, "one mint");
}

/// Tokens of many installations are minted with one App JWT (signing is
/// RSA, milliseconds each), and each installation's token is its own.
#[tokio::test]
async fn one_app_jwt_serves_every_installation() {
    let w = bare_world().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path_regex(
            r"^/app/installations/\d+/access_tokens$",
        ))
        .respond_with(|r: &wiremock::Request| {
            let id = r.url.path().split('/').nth(3).unwrap().to_owned();
            token_response(&format!("ghs_for_{id}"), chrono::Duration::hours(1))
        })
        .mount(&w.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/repos/octo/widgets/collaborators/alice/permission"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"permission": "read"})))
        .mount(&w.server)
        .await;
    for id in 1..=5i64 {
        w.client
            .collaborator_permission(taskmaster::github::InstallationId(id), &repo(), "alice")
            .await
            .unwrap();
    }
    let mints: Vec<wiremock::Request> = w
        .server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path().ends_with("/access_tokens"))
        .collect();
    assert_eq!(mints.len(), 5);
    let jwts: std::collections::HashSet<String> = mints.iter().map(bearer).collect();
    assert_eq!(jwts.len(), 1, "one JWT signed for five mints");
    assert_app_jwt(jwts.iter().next().unwrap());
    let used = permission_bearers(&w).await;
    assert_eq!(
        used,
        [
            "ghs_for_1",
            "ghs_for_2",
            "ghs_for_3",
            "ghs_for_4",
            "ghs_for_5"
        ]
    );
}

/// GitHub's `permission` says `write` for maintainers and `read` for
/// triagers; `role_name` tells them apart (so `retry: triage` and
/// `run: maintain` in `.github/taskmaster.yml` work). A custom role falls
/// back to `permission`, its base.
#[tokio::test]
async fn maintain_and_triage_are_read_from_role_name() {
    let w = world().await;
    for (user, permission, role, expected) in [
        ("maria", "write", "maintain", Permission::Maintain),
        ("tom", "read", "triage", Permission::Triage),
        ("cara", "write", "security-reviewer", Permission::Write),
        ("ada", "admin", "admin", Permission::Admin),
    ] {
        Mock::given(method("GET"))
            .and(path(format!(
                "/repos/octo/widgets/collaborators/{user}/permission"
            )))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"permission": permission, "role_name": role})),
            )
            .mount(&w.server)
            .await;
        let got = w
            .client
            .collaborator_permission(INSTALLATION, &repo(), user)
            .await
            .unwrap();
        assert_eq!(got, expected, "{user}");
    }
}

#[tokio::test]
async fn token_near_expiry_is_refreshed_before_use() {
    let w = bare_world().await;
    // The first token has 10 s left: inside the one-minute margin, so the
    // next request fetches a new one instead of sending a dying token.
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(
            "ghs_short_lived",
            chrono::Duration::seconds(10),
        ))
        .up_to_n_times(1)
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("ghs_fresh", chrono::Duration::hours(1)))
        .mount(&w.server)
        .await;
    mount_permission(&w.server).await;
    for _ in 0..3 {
        w.client
            .collaborator_permission(INSTALLATION, &repo(), "alice")
            .await
            .unwrap();
    }
    assert_eq!(w.requests("POST", TOKEN_PATH).await.len(), 2);
    let used = permission_bearers(&w).await;
    assert_eq!(used, ["ghs_short_lived", "ghs_fresh", "ghs_fresh"]);
}

#[tokio::test]
async fn a_401_refreshes_the_token_and_retries_once() {
    let w = bare_world().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("ghs_revoked", chrono::Duration::hours(1)))
        .up_to_n_times(1)
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("ghs_good", chrono::Duration::hours(1)))
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/repos/octo/widgets/issues/7/comments"))
        .and(header("authorization", "Bearer ghs_revoked"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})),
        )
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/repos/octo/widgets/issues/7/comments"))
        .and(header("authorization", "Bearer ghs_good"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 99})))
        .mount(&w.server)
        .await;
    let id = w
        .client
        .create_comment(INSTALLATION, &repo(), 7, "hello")
        .await
        .unwrap();
    assert_eq!(id.0, 99);
    assert_eq!(w.requests("POST", TOKEN_PATH).await.len(), 2);
    let posts = w
        .requests("POST", "/repos/octo/widgets/issues/7/comments")
        .await;
    assert_eq!(posts.len(), 2, "one retry, with the same body");
    assert_eq!(posts[0].body, posts[1].body);
}

#[tokio::test]
async fn a_second_401_is_an_error_not_a_loop() {
    let w = world().await;
    Mock::given(method("GET"))
        .and(path("/repos/octo/widgets/collaborators/alice/permission"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"})),
        )
        .mount(&w.server)
        .await;
    let err = w
        .client
        .collaborator_permission(INSTALLATION, &repo(), "alice")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(
        !err.to_string().contains("ghs_"),
        "no token in errors: {err}"
    );
    assert_eq!(
        w.requests("GET", "/repos/octo/widgets/collaborators/alice/permission")
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn an_unreadable_token_answer_is_a_permanent_error_not_retried() {
    let w = bare_world().await;
    // A token answer without its `expires_at`: the same on every try, so
    // it must not be retried as if GitHub were unreachable.
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "token": "ghs_partial",
            "permissions": {"issues": "write"},
        })))
        .mount(&w.server)
        .await;
    let err = w
        .client
        .collaborator_permission(INSTALLATION, &repo(), "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::Decode { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(w.requests("POST", TOKEN_PATH).await.len(), 1, "not retried");
}

/// Every token the App mints is registered with the redactor as it is
/// minted: whatever shape GitHub gives it, no output shows it.
#[tokio::test]
async fn minted_tokens_are_registered_with_the_redactor() {
    let w = bare_world().await;
    let odd = "v3$installation.token-Qx7_not_a_known_shape";
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response(odd, chrono::Duration::hours(1)))
        .mount(&w.server)
        .await;
    let token = w
        .client
        .repository_token(INSTALLATION, &repo(), &[("contents", "read")])
        .await
        .unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&token), odd);
    let redacted = taskmaster::redact::Redactor::default().redact(&format!("agent printed {odd}"));
    assert_eq!(redacted, "agent printed [REDACTED:github-token]");
}
