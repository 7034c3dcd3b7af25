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

/// The webhook URL to give GitHub: `{public_url}/api/github/webhooks`, or
/// this machine's address when `PUBLIC_URL` is unset (reachable by GitHub
/// only through a tunnel or a proxy).
pub fn webhook_url(public_url: Option<&str>, local: std::net::SocketAddr) -> String {
    match public_url {
        Some(public) => format!("{}/api/github/webhooks", public.trim_end_matches('/')),
        None => {
            let host = if local.ip().is_unspecified() {
                "localhost".to_string()
            } else {
                local.ip().to_string()
            };
            format!("http://{host}:{}/api/github/webhooks", local.port())
        }
    }
}

/// What the service will use the App for: the manifest asks for what
/// these need and nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestFeatures {
    /// Other accounts may install the App.
    pub public: bool,
    /// Agents' changes come back as commits and pull requests
    /// (`contents: write`); otherwise `contents: read` (checkouts only).
    pub changes: bool,
    /// Dashboard sign-in with GitHub: a callback URL for the user
    /// authorization, and `members: read` to map teams to roles.
    pub sign_in: bool,
}

impl Default for ManifestFeatures {
    fn default() -> Self {
        ManifestFeatures {
            public: false,
            changes: true,
            sign_in: true,
        }
    }
}

/// A GitHub App manifest for this service at `public_url` (no trailing
/// slash needed): webhook at `/api/github/webhooks`, the permissions and
/// events taskmaster needs for `features`, and `redirect_url` at
/// `/setup/callback` for the manifest flow (the service's set-up page, or
/// `taskmaster app-manifest --code`).
///
/// Source: <https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest#github-app-manifest-parameters>
pub fn app_manifest(name: &str, public_url: &str, features: &ManifestFeatures) -> Value {
    let base = public_url.trim_end_matches('/');
    let mut permissions = json!({
        "checks": "write",
        "pull_requests": "write",
        "issues": "write",
        // Commits of agents' changes through the Git Data API. The
        // `workflows` permission stays off: a change to
        // `.github/workflows/` is refused unless a workflow allows it
        // and the owner grants the App that permission by hand.
        "contents": if features.changes { "write" } else { "read" },
        "metadata": "read",
    });
    let mut manifest = json!({
        "name": name,
        "url": base,
        "hook_attributes": { "url": format!("{base}/api/github/webhooks"), "active": true },
        "redirect_url": format!("{base}/setup/callback"),
        "public": features.public,
        "default_events": APP_EVENTS,
    });
    if features.sign_in {
        // Organization members and teams, read: sign-in maps them to roles.
        permissions["members"] = json!("read");
        manifest["callback_urls"] = json!([format!("{base}/auth/github/callback")]);
        manifest["request_oauth_on_install"] = json!(false);
    }
    manifest["default_permissions"] = permissions;
    manifest
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
    /// The App's page, `https://github.com/apps/{slug}`.
    #[serde(default)]
    pub html_url: Option<String>,
    /// The OAuth client id (dashboard sign-in).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The OAuth client secret (dashboard sign-in).
    #[serde(default)]
    pub client_secret: Option<String>,
}

impl ManifestConversion {
    /// The settings as `KEY=value` lines, the private key at `pem`:
    /// `GITHUB_APP_ID`, `GITHUB_APP_SLUG`, `GITHUB_PRIVATE_KEY_PATH`, and when
    /// GitHub gave them `GITHUB_WEBHOOK_SECRET`, `GITHUB_CLIENT_ID`,
    /// `GITHUB_CLIENT_SECRET`.
    pub fn env_text(&self, pem: &Path) -> String {
        let mut text = format!(
            "GITHUB_APP_ID={}\nGITHUB_APP_SLUG={}\nGITHUB_PRIVATE_KEY_PATH={}\n",
            self.id,
            self.slug,
            pem.display()
        );
        for (key, value) in [
            ("GITHUB_WEBHOOK_SECRET", &self.webhook_secret),
            ("GITHUB_CLIENT_ID", &self.client_id),
            ("GITHUB_CLIENT_SECRET", &self.client_secret),
        ] {
            if let Some(v) = value {
                text.push_str(&format!("{key}={v}\n"));
            }
        }
        text
    }
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
/// `github-app.env` (see [`ManifestConversion::env_text`]), both readable
/// by the owner only. Returns the two paths.
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
    let app = crate::setup::exchange_code(&client, api_url, code).await?;
    let (env, pem) = crate::setup::store_credentials(dir, &app)?;
    Ok((app, pem, env))
}

/// Writes `text` to `path`, readable and writable by the owner only.
///
/// # Errors
/// The file cannot be written.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
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
        let m = app_manifest(
            "taskmaster-acme",
            "https://tm.example.com/",
            &ManifestFeatures::default(),
        );
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
