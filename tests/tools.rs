//! `taskmaster deliver` and `taskmaster app-manifest`, run as the real
//! binary against a real service and a wiremock GitHub.

mod harness;

use std::process::Command;

use harness::{ChildService, SECRET};
use serde_json::json;
use taskmaster::store::{SqliteStore, Store};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn taskmaster(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_taskmaster"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn deliver_signs_a_fixture_and_prints_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("deliver.db");
    let service = ChildService::start(&db, &[]);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/pull_request.opened.json"
    );
    let url = service.webhook_url();

    let (ok, stdout, stderr) = taskmaster(
        &["deliver", fixture, "--url", &url],
        &[("GITHUB_WEBHOOK_SECRET", SECRET)],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.starts_with("202 "), "{stdout}");
    assert!(
        stdout.contains("\"queued\"") && stdout.contains("event pull_request"),
        "{stdout}"
    );
    let delivery = stdout
        .split("(delivery ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    let store = SqliteStore::open(db.to_str().unwrap()).await.unwrap();
    let stored = store.delivery(&delivery).await.unwrap().expect("stored");
    assert_eq!(stored.event, "pull_request");

    // A wrong secret: the service answers 401 and the command fails.
    let (ok, stdout, _) = taskmaster(
        &["deliver", fixture, "--url", &url],
        &[("GITHUB_WEBHOOK_SECRET", "not-the-secret")],
    );
    assert!(!ok);
    assert!(stdout.starts_with("401 "), "{stdout}");

    // Without a secret it says how to set one.
    let (ok, _, stderr) = taskmaster(&["deliver", fixture, "--url", &url], &[]);
    assert!(!ok);
    assert!(stderr.contains("GITHUB_WEBHOOK_SECRET"), "{stderr}");

    // The set-up callback page shows the exchange command, and only for a
    // well-formed code.
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let page = client
        .get(format!("{}/setup/callback?code=abc123", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("taskmaster app-manifest --code abc123")
    );
    let bad = client
        .get(format!(
            "{}/setup/callback?code=%3Cscript%3E",
            service.base_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(!bad.text().await.unwrap().contains("<script>"));
}

#[tokio::test]
async fn app_manifest_prints_the_manifest_and_exchanges_a_code() {
    let (ok, stdout, stderr) = taskmaster(
        &["app-manifest", "--name", "tm-acme"],
        &[("PUBLIC_URL", "https://tm.example.com")],
    );
    assert!(ok, "{stderr}");
    let manifest: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(manifest["name"], "tm-acme");
    assert_eq!(
        manifest["hook_attributes"]["url"],
        "https://tm.example.com/api/github/webhooks"
    );
    assert!(stderr.contains("--code"), "{stderr}");

    let github = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/app-manifests/abc123/conversions"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": 4242,
            "slug": "tm-acme",
            "pem": "-----BEGIN RSA PRIVATE KEY-----\nfake\n-----END RSA PRIVATE KEY-----\n",
            "webhook_secret": "whsec-from-github",
            "client_id": "Iv1.x",
            "client_secret": "shh",
        })))
        .expect(1)
        .mount(&github)
        .await;
    let out = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = taskmaster(
        &[
            "app-manifest",
            "--code",
            "abc123",
            "--out",
            out.path().to_str().unwrap(),
        ],
        &[("GITHUB_API_URL", &github.uri())],
    );
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("`tm-acme` (id 4242)"), "{stdout}");
    assert!(
        !stdout.contains("whsec-from-github"),
        "no secret on the terminal"
    );
    let env = std::fs::read_to_string(out.path().join("github-app.env")).unwrap();
    assert!(env.contains("GITHUB_APP_ID=4242\n"), "{env}");
    assert!(
        env.contains("GITHUB_WEBHOOK_SECRET=whsec-from-github\n"),
        "{env}"
    );
    let pem = out.path().join("github-app.pem");
    assert!(
        std::fs::read_to_string(&pem)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    use std::os::unix::fs::PermissionsExt;
    for file in [pem, out.path().join("github-app.env")] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }

    // A used or expired code: GitHub's 404 becomes a clear failure.
    let (ok, _, stderr) = taskmaster(
        &["app-manifest", "--code", "expired9"],
        &[("GITHUB_API_URL", &github.uri())],
    );
    assert!(!ok);
    assert!(stderr.contains("codes expire after an hour"), "{stderr}");
}
