//! Operator tools that talk to a running service or to GitHub on set-up:
//! `taskmaster deliver` (replay a payload, signed, as GitHub would send it)
//! and `taskmaster app-manifest` (register the GitHub App from a manifest).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::webhook::signature::WebhookSecrets;

/// Events the App subscribes to (`installation` and
/// `installation_repositories` are sent to every App without subscribing).
///
/// Source: <https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest>
pub const APP_EVENTS: &[&str] = &[
    "check_run",
    "check_suite",
    "issue_comment",
    "issues",
    "pull_request",
    "push",
];

/// The event name a payload file's name suggests: `pull_request.opened.json`
/// → `pull_request`, `issues.json` → `issues`. `None` when the name has no
/// such prefix.
pub fn event_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let event = name.split('.').next()?;
    (!event.is_empty() && event.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .then(|| event.to_owned())
}

/// What the service answered to a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverAnswer {
    /// The delivery id sent (`X-GitHub-Delivery`), fresh for each call.
    pub delivery_id: String,
    /// The HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Posts `payload` to `url` as GitHub would: `X-GitHub-Event: event`, a new
/// `X-GitHub-Delivery` (a v4 UUID) and `X-Hub-Signature-256` under the
/// first of `secrets`.
///
/// # Errors
/// The payload is not a JSON object, or the service cannot be reached.
pub async fn deliver(
    url: &str,
    secrets: &WebhookSecrets,
    event: &str,
    payload: &[u8],
) -> anyhow::Result<DeliverAnswer> {
    let parsed: Value = serde_json::from_slice(payload)
        .map_err(|e| anyhow::anyhow!("the payload is not JSON: {e}"))?;
    anyhow::ensure!(parsed.is_object(), "the payload is not a JSON object");
    let delivery_id = uuid::Uuid::new_v4().to_string();
    let client = crate::agent::http_client_builder().build()?;
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/taskmaster-deliver")
        .header("x-github-event", event)
        .header("x-github-delivery", &delivery_id)
        .header("x-hub-signature-256", secrets.sign_first(payload))
        .body(payload.to_vec())
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Ok(DeliverAnswer {
        delivery_id,
        status,
        body,
    })
}

/// A GitHub App manifest for this service at `public_url` (no trailing
/// slash needed): webhook at `/api/github/webhooks`, the permissions and
/// events taskmaster needs, and `redirect_url` at `/setup/callback` for the
/// manifest flow (exchange the code with `taskmaster app-manifest --code`).
///
/// Source: <https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest#github-app-manifest-parameters>
pub fn app_manifest(name: &str, public_url: &str) -> Value {
    let base = public_url.trim_end_matches('/');
    json!({
        "name": name,
        "url": base,
        "hook_attributes": { "url": format!("{base}/api/github/webhooks"), "active": true },
        "redirect_url": format!("{base}/setup/callback"),
        "public": false,
        "default_permissions": {
            "checks": "write",
            "pull_requests": "write",
            "issues": "write",
            // Commits of agents' changes through the Git Data API. The
            // `workflows` permission stays off: a change to
            // `.github/workflows/` is refused unless a workflow allows it
            // and the owner grants the App that permission by hand.
            "contents": "write",
            "metadata": "read",
        },
        "default_events": APP_EVENTS,
    })
}

/// The App GitHub created from a manifest (the fields taskmaster keeps).
///
/// Source: <https://docs.github.com/en/rest/apps/apps#create-a-github-app-from-a-manifest>
#[derive(Deserialize)]
pub struct ManifestConversion {
    pub id: u64,
    pub slug: String,
    pub pem: String,
    pub webhook_secret: Option<String>,
}

impl std::fmt::Debug for ManifestConversion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestConversion")
            .field("id", &self.id)
            .field("slug", &self.slug)
            .finish_non_exhaustive()
    }
}

/// Exchanges the manifest flow's temporary `code` for the new App's
/// credentials (`POST {api_url}/app-manifests/{code}/conversions`, no
/// authentication; the code is valid for one hour) and writes them under
/// `dir`: the private key to `github-app.pem` and the settings to
/// `github-app.env` (`GITHUB_APP_ID`, `GITHUB_APP_SLUG`,
/// `GITHUB_PRIVATE_KEY_PATH`, `GITHUB_WEBHOOK_SECRET`), both readable by
/// the owner only. Returns the two paths.
///
/// # Errors
/// GitHub refuses the code, or the files cannot be written.
pub async fn convert_manifest_code(
    api_url: &str,
    code: &str,
    dir: &Path,
) -> anyhow::Result<(ManifestConversion, PathBuf, PathBuf)> {
    anyhow::ensure!(
        !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric()),
        "the code should be the letters and digits GitHub put in the redirect URL"
    );
    let client = crate::agent::http_client_builder().build()?;
    let url = format!(
        "{}/app-manifests/{code}/conversions",
        api_url.trim_end_matches('/')
    );
    let response = client
        .post(&url)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "taskmaster")
        .header("x-github-api-version", "2022-11-28")
        .send()
        .await?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "GitHub answered {status} to the code exchange (codes expire after an hour and work once)"
    );
    let app: ManifestConversion = response.json().await?;
    let pem = dir.join("github-app.pem");
    let env = dir.join("github-app.env");
    write_private(&pem, &app.pem)?;
    let mut text = format!(
        "GITHUB_APP_ID={}\nGITHUB_APP_SLUG={}\nGITHUB_PRIVATE_KEY_PATH={}\n",
        app.id,
        app.slug,
        pem.display()
    );
    if let Some(secret) = &app.webhook_secret {
        text.push_str(&format!("GITHUB_WEBHOOK_SECRET={secret}\n"));
    }
    write_private(&env, &text)?;
    Ok((app, pem, env))
}

/// `GET /setup/callback?code=…`: where GitHub sends the browser after the
/// App is registered from the manifest. The page shows the command that
/// exchanges the code; the service itself never writes credentials on an
/// unauthenticated request.
pub fn setup_router() -> axum::Router {
    use axum::extract::Query;
    use axum::response::Html;
    use axum::routing::get;

    #[derive(Deserialize)]
    struct Callback {
        code: Option<String>,
    }

    async fn callback(Query(q): Query<Callback>) -> (axum::http::StatusCode, Html<String>) {
        let code = q.code.filter(|c| {
            !c.is_empty() && c.len() <= 100 && c.chars().all(|c| c.is_ascii_alphanumeric())
        });
        let Some(code) = code else {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                Html("<!doctype html><title>taskmaster set-up</title><h1>No code</h1><p>GitHub sends <code>?code=…</code> here after an App is registered from the manifest printed by <code>taskmaster app-manifest</code>.</p>".into()),
            );
        };
        (
            axum::http::StatusCode::OK,
            Html(format!(
                "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>taskmaster set-up</title>\
                 <h1>Your GitHub App is registered</h1>\
                 <p>On the machine that runs taskmaster, within the hour, run:</p>\
                 <pre><code>taskmaster app-manifest --code {code}</code></pre>\
                 <p>It stores the App's id, private key and webhook secret in <code>github-app.env</code> \
                 and <code>github-app.pem</code>. Then install the App on your repositories.</p></html>"
            )),
        )
    }

    axum::Router::new().route("/setup/callback", get(callback))
}

/// Writes `text` to `path`, readable and writable by the owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_come_from_fixture_file_names() {
        assert_eq!(
            event_from_file_name(Path::new("tests/pull_request.opened.json")).as_deref(),
            Some("pull_request")
        );
        assert_eq!(
            event_from_file_name(Path::new("issues.json")).as_deref(),
            Some("issues")
        );
        assert_eq!(event_from_file_name(Path::new("My Payload.json")), None);
    }

    #[test]
    fn the_manifest_asks_for_what_taskmaster_uses() {
        let m = app_manifest("taskmaster-acme", "https://tm.example.com/");
        assert_eq!(
            m["hook_attributes"]["url"],
            "https://tm.example.com/api/github/webhooks"
        );
        assert_eq!(m["redirect_url"], "https://tm.example.com/setup/callback");
        assert_eq!(m["default_permissions"]["checks"], "write");
        assert_eq!(m["default_permissions"]["contents"], "write");
        assert_eq!(m["default_permissions"]["pull_requests"], "write");
        assert!(m["default_permissions"].get("workflows").is_none());
        let events: Vec<&str> = m["default_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        for needed in [
            "pull_request",
            "issues",
            "issue_comment",
            "check_run",
            "check_suite",
        ] {
            assert!(events.contains(&needed), "{needed}");
        }
    }
}
