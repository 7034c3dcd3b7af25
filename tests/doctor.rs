//! `taskmaster doctor`, the real binary, on a healthy set-up and on broken
//! ones, each broken in one way: it names what is wrong and how to fix it,
//! and exits 1 only when a check fails. GitHub is the stateful fake (which
//! checks that the App's JWT is the App's); the database is a real SQLite
//! file, or a PostgreSQL address nothing listens on.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::fake_github::FakeGitHub;

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");

const AGENTS: &str = "agents:\n  tests:\n    kind: command\n    policy: standard\n";
const WORKFLOW: &str = r#"
name: checks
on: { pull_request: {} }
steps:
  test: { agent: tests, with: { run: ["true"] } }
"#;

struct SetUp {
    dir: tempfile::TempDir,
    github: FakeGitHub,
    /// A loopback server answering `/api/health`, standing in for the
    /// service at `PUBLIC_URL`.
    public_url: String,
    _health: tokio::task::JoinHandle<()>,
}

impl SetUp {
    async fn new() -> SetUp {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workflows")).unwrap();
        std::fs::write(dir.path().join("workflows/checks.yml"), WORKFLOW).unwrap();
        std::fs::write(dir.path().join("agents.yml"), AGENTS).unwrap();
        std::fs::write(dir.path().join("app.pem"), PRIVATE_KEY).unwrap();
        std::fs::create_dir(dir.path().join("repos")).unwrap();
        let github = FakeGitHub::start(dir.path().join("repos")).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let public_url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/api/health",
            axum::routing::get(|| async { "{\"status\":\"ok\"}" }),
        );
        let health = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        github.set_hook_url(&format!("{public_url}/api/github/webhooks"));
        let s = SetUp {
            dir,
            github,
            public_url,
            _health: health,
        };
        // A migrated database, as `serve` leaves it.
        let out =
            tokio::task::block_in_place(|| s.doctor_command(&[]).arg("migrate").output()).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with a healthy environment, `overrides` applied (an
    /// empty value removes the variable).
    fn doctor_command(&self, overrides: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_taskmaster"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", self.path("t.db").display()),
            )
            .env("GITHUB_WEBHOOK_SECRET", "doctor-secret")
            .env("TASKMASTER_CONFIG", self.path("agents.yml"))
            .env("TASKMASTER_WORKFLOWS", self.path("workflows"))
            .env("TASKMASTER_DATA_DIR", self.path("data"))
            .env("GITHUB_API_URL", &self.github.url)
            .env("GITHUB_APP_ID", support::fake_github::APP_ID.to_string())
            .env("GITHUB_PRIVATE_KEY_PATH", self.path("app.pem"))
            .env("GITHUB_APP_SLUG", "taskmaster-test")
            .env("PUBLIC_URL", &self.public_url);
        for (k, v) in overrides {
            if v.is_empty() {
                c.env_remove(k);
            } else {
                c.env(k, v);
            }
        }
        c
    }

    /// `taskmaster doctor`: (exit success, stdout).
    fn doctor(&self, overrides: &[(&str, &str)]) -> (bool, String) {
        let out = self
            .doctor_command(overrides)
            .arg("doctor")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

fn line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l[l.find(' ').map_or(0, |i| i + 1)..].starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("no `{check}` line in:\n{report}"))
}

fn assert_mark(report: &str, check: &str, mark: &str, needle: &str) {
    let l = line(report, check);
    assert!(
        l.starts_with(mark) && l.contains(needle),
        "`{check}` should be {mark} with `{needle}`:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_set_up_passes_every_check() {
    let s = SetUp::new().await;
    // GitHub's newest delivery reached the service.
    s.github
        .set_hook_deliveries(&[("pull_request", 202), ("ping", 0)]);
    // The binary blocks this worker; the fake GitHub and the health server
    // answer on the other.
    let (ok, report) = tokio::task::block_in_place(|| s.doctor(&[]));
    assert!(ok, "{report}");
    assert_mark(&report, "webhook secret", "✓", "set");
    assert_mark(&report, "configuration", "✓", "tests");
    assert_mark(&report, "workflows", "✓", "1 loaded");
    assert_mark(&report, "workflows", "✓", "they use tests");
    assert_mark(&report, "database", "✓", "migrations applied");
    assert_mark(
        &report,
        "github app",
        "✓",
        "App 12345 (`taskmaster-test`) accepts its JWT",
    );
    assert_mark(&report, "github webhook", "✓", "/api/github/webhooks");
    assert_mark(
        &report,
        "github deliveries",
        "✓",
        "got 202 from the service",
    );
    assert_mark(&report, "public url", "✓", "/api/health answers 200");
    assert_mark(&report, "agent tests", "✓", "answers");
    assert_mark(&report, "git", "✓", "git version");
    assert_mark(&report, "disk", "✓", "MB free");
    assert!(report.contains("0 failed"), "{report}");
    assert!(
        !report.contains("doctor-secret"),
        "the secret is never printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_part_is_named_with_its_fix() {
    let s = SetUp::new().await;
    let bad_workflow = s.path("bad-workflows");
    std::fs::create_dir(&bad_workflow).unwrap();
    std::fs::write(
        bad_workflow.join("broken.yml"),
        "name: broken\non: { pull_request: {} }\nsteps:\n  a: { agent: nobody }\n",
    )
    .unwrap();
    let unreachable_agent = s.path("unreachable.yml");
    std::fs::write(
        &unreachable_agent,
        "agents:\n  tests:\n    kind: agentapi\n    endpoint: http://127.0.0.1:9\n",
    )
    .unwrap();
    // (environment changes, the check that fails, what it says, what its fix names)
    type Case<'a> = (Vec<(&'a str, String)>, &'a str, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("GITHUB_WEBHOOK_SECRET", String::new())],
            "webhook secret",
            "not set",
            "GITHUB_WEBHOOK_SECRET",
        ),
        (
            vec![("TASKMASTER_WORKFLOWS", bad_workflow.display().to_string())],
            "workflows",
            "broken.yml",
            "taskmaster validate",
        ),
        (
            vec![(
                "DATABASE_URL",
                "postgres://nobody:pw@127.0.0.1:9/none".to_owned(),
            )],
            "database",
            "postgres://nobody:***@127.0.0.1:9/none",
            "DATABASE_URL",
        ),
        (
            vec![("GITHUB_APP_ID", "999".to_owned())],
            "github app",
            "GET /app answered 401: Integration not found",
            "GITHUB_APP_ID (999)",
        ),
        (
            vec![("PUBLIC_URL", "https://elsewhere.example".to_owned())],
            "github webhook",
            "not to https://elsewhere.example/api/github/webhooks",
            "webhook URL",
        ),
        (
            vec![("TASKMASTER_CONFIG", unreachable_agent.display().to_string())],
            "agent tests",
            "does not answer",
            "endpoint",
        ),
        (
            vec![("TASKMASTER_MIN_FREE_DISK_MB", "999999999999".to_owned())],
            "disk",
            "under the 999999999999 MB",
            "TASKMASTER_DATA_DIR",
        ),
    ];
    for (env, check, seen, fix) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ok, report) = tokio::task::block_in_place(|| s.doctor(&env));
        assert!(!ok, "{check}: a failure exits 1:\n{report}");
        assert_mark(&report, check, "✗", seen);
        let l = report
            .lines()
            .skip_while(|l| !l.contains(&format!("{check}:")))
            .find(|l| l.trim_start().starts_with('→'))
            .unwrap_or_default();
        assert!(
            l.trim_start().starts_with('→') && l.contains(fix),
            "`{check}`'s fix should mention `{fix}`:\n{report}"
        );
        assert_eq!(
            report.lines().filter(|l| l.starts_with('✗')).count(),
            1,
            "only `{check}` fails:\n{report}"
        );
        assert!(
            !report.contains("doctor-secret"),
            "the secret is never printed"
        );
    }
    // GitHub's own record says it cannot reach the service, or that the
    // service refuses its signature.
    for (code, seen, fix) in [
        (0, "did not reach the service", "Reaching the service"),
        (401, "got 401", "webhook secret"),
        (502, "got 502", "proxy or tunnel"),
    ] {
        s.github
            .set_hook_deliveries(&[("pull_request", code), ("ping", 200)]);
        let (ok, report) = tokio::task::block_in_place(|| s.doctor(&[]));
        assert!(!ok, "{report}");
        assert_mark(&report, "github deliveries", "✗", seen);
        assert!(report.contains(fix), "{fix}: {report}");
        assert_eq!(
            report.lines().filter(|l| l.starts_with('✗')).count(),
            1,
            "{report}"
        );
    }
    s.github.set_hook_deliveries(&[]);

    // An App registered from the browser: its stored credentials and secret
    // are the ones checked.
    let app = taskmaster::tools::ManifestConversion {
        id: support::fake_github::APP_ID,
        slug: "taskmaster-test".into(),
        pem: PRIVATE_KEY.into(),
        webhook_secret: Some("registered-secret".into()),
        html_url: None,
        client_id: None,
        client_secret: None,
    };
    taskmaster::setup::store_credentials(&s.path("data"), &app).unwrap();
    let (ok, report) = tokio::task::block_in_place(|| {
        s.doctor(&[
            ("GITHUB_APP_ID", ""),
            ("GITHUB_PRIVATE_KEY_PATH", ""),
            ("GITHUB_WEBHOOK_SECRET", ""),
            ("GITHUB_APP_SLUG", ""),
        ])
    });
    assert!(ok, "{report}");
    assert_mark(&report, "webhook secret", "✓", "the registered App's");
    assert_mark(&report, "github app", "✓", "accepts its JWT");
    assert!(!report.contains("registered-secret"), "{report}");
    std::fs::remove_file(s.path("data").join("github-app.env")).unwrap();

    // Not failures: no App credentials is a dry run; a database not yet
    // migrated is migrated by `serve`.
    let (ok, report) = tokio::task::block_in_place(|| {
        s.doctor(&[("GITHUB_APP_ID", ""), ("GITHUB_PRIVATE_KEY_PATH", "")])
    });
    assert!(ok, "{report}");
    assert_mark(&report, "github app", "!", "dry run");
    let fresh = format!("sqlite://{}", s.path("fresh.db").display());
    let (ok, report) = tokio::task::block_in_place(|| s.doctor(&[("DATABASE_URL", &fresh)]));
    assert!(!ok, "no file yet is a failure: {report}");
    assert_mark(&report, "database", "✗", "taskmaster migrate");
    assert!(
        !Path::new(&s.path("fresh.db")).exists(),
        "the doctor creates nothing"
    );
}
