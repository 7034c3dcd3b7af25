//! A fake GitHub behind wiremock for the `github_*` tests: an App with the
//! fixture key, one installation whose token endpoint answers, and helpers to
//! read what GitHub received.
#![allow(dead_code)]

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use taskmaster::github::{GitHubClient, GitHubSettings, InstallationId, RepoName, RetryPolicy};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const APP_ID: u64 = 12345;
pub const INSTALLATION: InstallationId = InstallationId(42);
pub const TOKEN_PATH: &str = "/app/installations/42/access_tokens";
pub const PRIVATE_KEY: &str = include_str!("../fixtures/github/app-key.pem");
pub const PUBLIC_KEY: &str = include_str!("../fixtures/github/app-key.pub.pem");

pub fn repo() -> RepoName {
    RepoName::parse("octo/widgets").unwrap()
}

pub fn settings(api_url: &str) -> GitHubSettings {
    let api_url = api_url.to_owned();
    GitHubSettings::from_lookup(move |name| match name {
        "GITHUB_APP_ID" => Some(APP_ID.to_string()),
        "GITHUB_PRIVATE_KEY" => Some(PRIVATE_KEY.to_owned()),
        "GITHUB_API_URL" => Some(api_url.clone()),
        _ => None,
    })
    .unwrap()
}

/// Waits scaled down 1000×: GitHub's minute is 60 ms here.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy::scaled(0.001)
}

pub fn token_response(token: &str, expires_in: chrono::Duration) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "token": token,
        "expires_at": (Utc::now() + expires_in).to_rfc3339(),
        "permissions": { "checks": "write", "issues": "write" },
        "repository_selection": "all"
    }))
}

pub struct World {
    pub server: MockServer,
    pub client: GitHubClient,
}

/// A server whose token endpoint hands out `ghs_token_one` for an hour.
pub async fn world() -> World {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("ghs_token_one", chrono::Duration::hours(1)))
        .mount(&server)
        .await;
    let client = GitHubClient::new(&settings(&server.uri()), fast_policy()).unwrap();
    World { server, client }
}

/// World without the token endpoint (tests mount their own).
pub async fn bare_world() -> World {
    let server = MockServer::start().await;
    let client = GitHubClient::new(&settings(&server.uri()), fast_policy()).unwrap();
    World { server, client }
}

impl World {
    /// Every request GitHub received for `method` `path` (path only).
    pub async fn requests(&self, m: &str, p: &str) -> Vec<Request> {
        self.server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.method.as_str() == m && r.url.path() == p)
            .collect()
    }

    /// The JSON bodies of those requests.
    pub async fn bodies(&self, m: &str, p: &str) -> Vec<Value> {
        self.requests(m, p)
            .await
            .iter()
            .map(|r| serde_json::from_slice(&r.body).expect("JSON body"))
            .collect()
    }
}

pub fn bearer(r: &Request) -> String {
    r.headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

pub const SHORT: Duration = Duration::from_millis(1);
