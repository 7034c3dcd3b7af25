//! `taskmaster doctor`: checks a set-up end to end and says what is wrong
//! and how to fix it, one line per check. It reads; it changes nothing (no
//! migration, no lock on a SQLite file, no webhook sent), so it can run
//! beside the service.
//!
//! The checks, in order: the webhook secret; the agent configuration and
//! the workflows; the database (reachable, migrated); the GitHub App (its
//! JWT accepted by `GET /app`, its webhook pointing at `PUBLIC_URL`); the
//! service answering at `PUBLIC_URL`; each agent answering its health
//! probe; git; bubblewrap; free space in the data directory.

use std::path::Path;
use std::time::Duration;

use crate::config::{MISSING_SECRET_HELP, Settings};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but not as a production set-up should (dry run, say).
    Warn,
    Fail,
}

/// One check's outcome: what was checked, what was seen, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do, for a warning or a failure.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &str, detail: impl Into<String>) -> Self {
        Finding {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check: check.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every finding, in check order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any check failed (the exit status is 1 then).
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }

    /// One line per check (`✓`, `!` or `✗`, the check, what was seen), the
    /// fix indented under it, and a last line counting them.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let mark = match f.status {
                Status::Ok => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            // A detail of several lines (the workflows' errors) is indented
            // under its check.
            let detail = f.detail.trim_end().replace('\n', "\n    ");
            out.push_str(&format!("{mark} {}: {detail}\n", f.check));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("    → {fix}\n"));
            }
        }
        let count = |s| self.findings.iter().filter(|f| f.status == s).count();
        out.push_str(&format!(
            "{} ok, {} warnings, {} failed\n",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        ));
        out
    }
}

/// Runs every check against `settings` (and the environment, for the
/// GitHub App's credentials and the agents' secrets).
pub async fn diagnose(settings: &Settings) -> Report {
    let lookup = crate::agent::env::process_lookup;
    // The App as `serve` resolves it: the environment's, else a browser
    // registration's stored in the data directory.
    let app = crate::setup::resolve_app(
        lookup,
        settings.webhook_secret.as_ref(),
        &settings.app_slug,
        &settings.data_dir,
    );
    let mut findings = vec![secret(&app)];
    let agents = agents_and_workflows(settings, &lookup, &mut findings);
    findings.push(database(settings).await);
    findings.extend(github(settings, &app).await);
    findings.push(public_url(settings).await);
    if let Some((registry, used)) = &agents {
        for name in used {
            if let Some(agent) = registry.get(name) {
                let health = agent.health().await;
                findings.push(if health.reachable {
                    Finding::ok(
                        &format!("agent {name}"),
                        format!(
                            "answers ({}, {} ms)",
                            health.detail,
                            health.latency.as_millis()
                        ),
                    )
                } else {
                    Finding::fail(
                        &format!("agent {name}"),
                        format!("does not answer: {}", health.detail),
                        "start it, or correct its endpoint or command in the service \
                         configuration (--config)",
                    )
                });
            }
        }
    }
    findings.push(git().await);
    findings.push(bubblewrap().await);
    findings.push(disk(&settings.data_dir, settings.min_free_disk_mb));
    Report { findings }
}

fn secret(app: &anyhow::Result<crate::setup::ResolvedApp>) -> Finding {
    match app {
        Ok(app) if app.secrets.is_some() && app.from_registration => Finding::ok(
            "webhook secret",
            "set (the registered App's, from the data directory)",
        ),
        Ok(app) if app.secrets.is_some() => Finding::ok("webhook secret", "set"),
        Ok(app) if app.needs_registration() => Finding::warn(
            "webhook secret",
            "not set, and no GitHub App yet",
            "start `taskmaster serve` and open the set-up link it prints (it registers the App \
             and stores its secret), or set GITHUB_WEBHOOK_SECRET",
        ),
        Ok(_) => Finding::fail("webhook secret", "not set", MISSING_SECRET_HELP),
        // The App's settings are invalid: the github check says how.
        Err(_) => match std::env::var("GITHUB_WEBHOOK_SECRET") {
            Ok(v) if !v.trim().is_empty() => Finding::ok("webhook secret", "set"),
            _ => Finding::fail("webhook secret", "not set", MISSING_SECRET_HELP),
        },
    }
}

/// The agent configuration and the workflows against it; the agents, when
/// they load, and the names of those to probe: the ones the workflows use
/// (agents and fallbacks; a built-in agent nothing uses is no one's
/// problem), none when the workflows do not load.
fn agents_and_workflows(
    settings: &Settings,
    lookup: &dyn Fn(&str) -> Option<String>,
    findings: &mut Vec<Finding>,
) -> Option<(crate::agent::AgentRegistry, Vec<String>)> {
    use crate::agent::{AgentRegistry, AgentsConfig};
    let config = match AgentsConfig::load(settings.config.as_deref(), lookup) {
        Ok(c) => c,
        Err(e) => {
            findings.push(Finding::fail(
                "configuration",
                format!("the service configuration is invalid: {e}"),
                "fix the file named above (taskmaster.example.yml shows every key)",
            ));
            return None;
        }
    };
    let registry = match AgentRegistry::new(&config, lookup) {
        Ok(r) => r,
        Err(e) => {
            findings.push(Finding::fail(
                "configuration",
                format!("cannot build the agents: {e}"),
                "set what the message names (an endpoint, a token's environment variable)",
            ));
            return None;
        }
    };
    let names: Vec<String> = {
        let names: Vec<String> = registry.names().map(str::to_owned).collect();
        if names.is_empty() {
            crate::workflow::DEFAULT_AGENTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            names
        }
    };
    findings.push(Finding::ok(
        "configuration",
        format!("{} agents: {}", names.len(), names.join(", ")),
    ));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Probed: the agents the workflows use; none when they do not load.
    let mut used: Vec<String> = Vec::new();
    findings.push(
        match crate::workflow::WorkflowSet::load_dir(&settings.workflows, &refs) {
            Ok(set) => {
                let mut names = std::collections::BTreeSet::new();
                for step in set.iter().flat_map(|wf| &wf.steps) {
                    names.insert(step.agent.clone());
                    names.extend(step.fallback.iter().cloned());
                }
                used = names.into_iter().collect();
                Finding::ok(
                    "workflows",
                    format!(
                        "{} loaded from {}; they use {}",
                        set.iter().count(),
                        settings.workflows.display(),
                        used.join(", ")
                    ),
                )
            }
            Err(errors) => Finding::fail(
                "workflows",
                format!("{errors}"),
                format!(
                    "fix each file:line:column above (`taskmaster validate {}` checks again)",
                    settings.workflows.display()
                ),
            ),
        },
    );
    Some((registry, used))
}

async fn database(settings: &Settings) -> Finding {
    let url = crate::store::redact_url(&settings.database_url);
    match crate::store::migration_status(&settings.database_url).await {
        Err(e) => Finding::fail(
            "database",
            format!("{url}: {e}"),
            "check DATABASE_URL (and that PostgreSQL is running and accepts this user)",
        ),
        Ok(s) if s.failed.is_some() => Finding::fail(
            "database",
            format!(
                "{url}: migration {} failed part-way",
                s.failed.unwrap_or_default()
            ),
            "restore the database from a backup, or repair the migration by hand and \
             remove its row from `_sqlx_migrations`",
        ),
        // PostgreSQL: a rolling upgrade runs both versions on the newer,
        // expanded schema (migrations/README.md); SQLite refuses it.
        Ok(s) if !s.unknown.is_empty() && crate::store::is_postgres_url(&settings.database_url) => {
            Finding::warn(
                "database",
                format!(
                    "{url}: migrated by a newer taskmaster (versions {:?} are unknown here); \
                     this build runs on it, as during a rolling upgrade",
                    s.unknown
                ),
                "finish the upgrade: run the newer taskmaster on every replica",
            )
        }
        Ok(s) if !s.unknown.is_empty() => Finding::fail(
            "database",
            format!(
                "{url}: migrated by a newer taskmaster (versions {:?} are unknown here)",
                s.unknown
            ),
            "run the newer taskmaster, or restore a backup made before it",
        ),
        Ok(s) if !s.pending.is_empty() => Finding::warn(
            "database",
            format!(
                "{url}: reachable; {} migrations to apply ({})",
                s.pending.len(),
                s.pending
                    .iter()
                    .map(|(v, d)| format!("{v} {d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "`taskmaster migrate` applies them (`serve` does too, at start)",
        ),
        Ok(s) => Finding::ok(
            "database",
            format!("{url}: reachable, {} migrations applied", s.applied.len()),
        ),
    }
}

/// A GET of the REST API as the App (its JWT); `(status, body)`.
async fn app_get(
    http: &reqwest::Client,
    api_url: &str,
    jwt: &str,
    path: &str,
) -> Result<(u16, serde_json::Value), String> {
    let reply = http
        .get(format!("{api_url}{path}"))
        .bearer_auth(jwt)
        .header("Accept", "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .header("User-Agent", "taskmaster-doctor")
        .send()
        .await
        .map_err(|e| format!("{api_url} cannot be reached: {e}"))?;
    let status = reply.status().as_u16();
    let body = reply.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

async fn github(
    settings: &Settings,
    app: &anyhow::Result<crate::setup::ResolvedApp>,
) -> Vec<Finding> {
    let resolved = match app {
        Ok(app) => app,
        Err(e) => {
            return vec![Finding::fail(
                "github app",
                format!("{e:#}"),
                "set GITHUB_APP_ID and GITHUB_PRIVATE_KEY_PATH (or GITHUB_PRIVATE_KEY) as \
                 `taskmaster app-manifest` wrote them",
            )];
        }
    };
    let gh = &resolved.github;
    let Some(credentials) = &gh.credentials else {
        return vec![Finding::warn(
            "github app",
            "no App credentials: dry run (nothing is sent to GitHub)",
            "start `taskmaster serve` and open the set-up link it prints (README, \
             “Install it as a GitHub App”), or set GITHUB_APP_ID and GITHUB_PRIVATE_KEY_PATH",
        )];
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let jwt = match crate::github::auth::app_jwt(credentials, now) {
        Ok(jwt) => jwt,
        Err(e) => {
            return vec![Finding::fail(
                "github app",
                format!("cannot sign the App's JWT: {e}"),
                "GITHUB_PRIVATE_KEY_PATH must name the App's PEM private key",
            )];
        }
    };
    use secrecy::ExposeSecret as _;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client with a timeout builds");
    let mut out = Vec::new();
    match app_get(&http, &gh.api_url, jwt.expose_secret(), "/app").await {
        Err(e) => {
            out.push(Finding::fail(
                "github app",
                e,
                "check the network and GITHUB_API_URL (GitHub Enterprise: https://HOST/api/v3)",
            ));
            return out;
        }
        Ok((200, app)) => {
            let slug = app["slug"].as_str().unwrap_or_default().to_owned();
            out.push(Finding::ok(
                "github app",
                format!(
                    "App {} (`{slug}`) accepts its JWT; {} installations",
                    credentials.app_id,
                    app["installations_count"].as_i64().unwrap_or(0)
                ),
            ));
            if !slug.is_empty() && slug != resolved.slug {
                out.push(Finding::warn(
                    "github app slug",
                    format!(
                        "--app-slug is `{}` but the App is `{slug}`: taskmaster will not \
                         recognise its own comments",
                        resolved.slug
                    ),
                    format!("start with --app-slug {slug} (or TASKMASTER_APP_SLUG={slug})"),
                ));
            }
        }
        Ok((status, body)) => {
            out.push(Finding::fail(
                "github app",
                format!(
                    "GET /app answered {status}: {}",
                    body["message"].as_str().unwrap_or("(no message)")
                ),
                format!(
                    "GITHUB_APP_ID ({}) and the private key must be the same App's; \
                     generate a new key on the App's settings page if in doubt",
                    credentials.app_id
                ),
            ));
            return out;
        }
    }
    let Some(public) = &settings.public_url else {
        return out;
    };
    let want = format!("{}/api/github/webhooks", public.trim_end_matches('/'));
    match app_get(&http, &gh.api_url, jwt.expose_secret(), "/app/hook/config").await {
        Ok((200, hook)) => {
            let url = hook["url"].as_str().unwrap_or_default();
            out.push(if url == want {
                Finding::ok("github webhook", format!("GitHub sends to {url}"))
            } else {
                Finding::fail(
                    "github webhook",
                    format!("GitHub sends to `{url}`, not to {want}"),
                    "set the App's webhook URL (App settings → General) to the second one, or \
                     correct PUBLIC_URL",
                )
            });
        }
        Ok((status, body)) => out.push(Finding::warn(
            "github webhook",
            format!(
                "GET /app/hook/config answered {status}: {}",
                body["message"].as_str().unwrap_or("(no message)")
            ),
            "check the webhook URL on the App's settings page by hand",
        )),
        Err(e) => out.push(Finding::warn("github webhook", e, "check the network")),
    }
    out.push(recent_deliveries(&http, &gh.api_url, jwt.expose_secret(), &want).await);
    out
}

/// Whether GitHub reaches the service from outside, by its own record of
/// the App's latest webhook deliveries (`GET /app/hook/deliveries`): the
/// newest one's answer.
///
/// Source: <https://docs.github.com/en/rest/apps/webhooks#list-deliveries-for-an-app-webhook>
async fn recent_deliveries(
    http: &reqwest::Client,
    api_url: &str,
    jwt: &str,
    want: &str,
) -> Finding {
    let check = "github deliveries";
    match app_get(http, api_url, jwt, "/app/hook/deliveries?per_page=10").await {
        Ok((200, serde_json::Value::Array(list))) => {
            let Some(newest) = list.first() else {
                return Finding::warn(
                    check,
                    "GitHub has sent this App no webhook yet",
                    "install the App on a repository (GitHub then sends `installation`), or \
                     open a pull request, and run doctor again",
                );
            };
            let code = newest["status_code"].as_i64().unwrap_or(0);
            let status = newest["status"].as_str().unwrap_or("?");
            let event = newest["event"].as_str().unwrap_or("?");
            let at = newest["delivered_at"].as_str().unwrap_or("?");
            if (200..300).contains(&code) {
                Finding::ok(
                    check,
                    format!("GitHub's newest delivery ({event}, {at}) got {code} from the service"),
                )
            } else if code == 0 {
                Finding::fail(
                    check,
                    format!(
                        "GitHub's newest delivery ({event}, {at}) did not reach the service: {status}"
                    ),
                    format!(
                        "GitHub must reach {want} from the internet: see the README's “Reaching the \
                         service” (a tunnel or a reverse proxy), then redeliver it from the App's \
                         settings (Advanced)"
                    ),
                )
            } else {
                Finding::fail(
                    check,
                    format!("GitHub's newest delivery ({event}, {at}) got {code} ({status})"),
                    if code == 401 {
                        "the App's webhook secret and GITHUB_WEBHOOK_SECRET differ: set the same \
                         one on both sides (several, comma-separated, while rotating)"
                            .to_owned()
                    } else {
                        format!(
                            "something in front of the service answers for it, or it failed: \
                             check the proxy or tunnel in front of {want} and the service's log"
                        )
                    },
                )
            }
        }
        Ok((status, body)) => Finding::warn(
            check,
            format!(
                "GET /app/hook/deliveries answered {status}: {}",
                body["message"].as_str().unwrap_or("(no message)")
            ),
            "look at the App's settings → Advanced → Recent Deliveries by hand",
        ),
        Err(e) => Finding::warn(check, e, "check the network"),
    }
}

async fn public_url(settings: &Settings) -> Finding {
    let Some(public) = &settings.public_url else {
        return Finding::warn(
            "public url",
            "PUBLIC_URL is not set: check runs have no Details links and GitHub cannot be told \
             where to send webhooks",
            "set PUBLIC_URL to the address GitHub reaches this service at (README: \
             \"Pointing a GitHub App at it\")",
        );
    };
    let health = format!("{}/api/health", public.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client with a timeout builds");
    match http.get(&health).send().await {
        Ok(r) if r.status().is_success() => {
            Finding::ok("public url", format!("{health} answers {}", r.status()))
        }
        Ok(r) => Finding::fail(
            "public url",
            format!("{health} answers {}", r.status()),
            "PUBLIC_URL reaches something that is not this service: check the tunnel or proxy",
        ),
        Err(e) => Finding::warn(
            "public url",
            format!("{health} cannot be reached from here: {e}"),
            "start the service (`taskmaster serve`), then check the tunnel or proxy in front \
             of it",
        ),
    }
}

async fn git() -> Finding {
    match tokio::process::Command::new("git")
        .arg("--version")
        .output()
        .await
    {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let numbers: Vec<u32> = version
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .split('.')
                .filter_map(|p| p.parse().ok())
                .collect();
            if numbers.as_slice() >= [2, 30].as_slice() {
                Finding::ok("git", version)
            } else {
                Finding::fail(
                    "git",
                    format!("{version}: workspaces need git 2.30 or newer"),
                    "install a newer git",
                )
            }
        }
        _ => Finding::fail(
            "git",
            "not found",
            "install git (Debian package `git`): workspaces check out each run's commit",
        ),
    }
}

async fn bubblewrap() -> Finding {
    let Some(bwrap) = crate::agent::sandbox::find_bwrap(None) else {
        return Finding::warn(
            "bubblewrap",
            "`bwrap` is not installed: sandboxed agents and command steps refuse to run",
            "install the Debian package `bubblewrap`",
        );
    };
    match tokio::process::Command::new(&bwrap)
        .args([
            "--ro-bind",
            "/",
            "/",
            "--unshare-all",
            "--die-with-parent",
            "true",
        ])
        .output()
        .await
    {
        Ok(out) if out.status.success() => Finding::ok(
            "bubblewrap",
            format!("{} starts a sandbox", bwrap.display()),
        ),
        Ok(out) => Finding::fail(
            "bubblewrap",
            format!(
                "{} cannot start a sandbox: {}",
                bwrap.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; \
             in a container, run it with them allowed)",
        ),
        Err(e) => Finding::fail(
            "bubblewrap",
            format!("{} does not run: {e}", bwrap.display()),
            "reinstall the Debian package `bubblewrap`",
        ),
    }
}

fn disk(data_dir: &Path, min_free_mb: u64) -> Finding {
    // The directory may not exist yet; its nearest existing parent holds it.
    let existing = data_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match crate::workspace::free_bytes(existing) {
        None => Finding::warn(
            "disk",
            format!("cannot read the free space of {}", existing.display()),
            "check TASKMASTER_DATA_DIR",
        ),
        Some(free) if free / (1 << 20) < min_free_mb => Finding::fail(
            "disk",
            format!(
                "{} MB free in {}, under the {min_free_mb} MB workspaces need",
                free / (1 << 20),
                data_dir.display()
            ),
            "free space, or point TASKMASTER_DATA_DIR at a larger disk",
        ),
        Some(free) => Finding::ok(
            "disk",
            format!("{} MB free in {}", free / (1 << 20), data_dir.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_marks_each_check_and_counts_them() {
        let r = Report {
            findings: vec![
                Finding::ok("database", "reachable"),
                Finding::warn("public url", "not set", "set PUBLIC_URL"),
                Finding::fail("git", "not found", "install git"),
            ],
        };
        assert!(r.failed());
        assert_eq!(
            r.render(),
            "✓ database: reachable\n! public url: not set\n    → set PUBLIC_URL\n\
             ✗ git: not found\n    → install git\n1 ok, 1 warnings, 1 failed\n"
        );
    }
}
