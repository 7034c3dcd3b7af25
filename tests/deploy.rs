//! The deployment files against the code they deploy: `fly.toml` and the
//! Kubernetes Deployment name settings the binary reads, commands it has,
//! the port it serves and paths it answers (asked of the real binary), and
//! the data directory on the volume. `scripts/check-deploy.sh` lints the
//! same files against their own schemas (hadolint, kubernetes-validate).

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use harness::ChildService;
use taskmaster::config::{Cli, Command};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every environment variable the binary reads: its flags' (clap) and the
/// GitHub App's (read by `GitHubSettings` and the set-up).
fn known_env() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for name in [
        "GITHUB_API_URL",
        "GITHUB_APP_ID",
        "GITHUB_PRIVATE_KEY",
        "GITHUB_PRIVATE_KEY_PATH",
        "GITHUB_CLIENT_ID",
        "GITHUB_CLIENT_SECRET",
    ] {
        names.insert(name.to_owned());
    }
    names
}

/// The subcommand a command line (`taskmaster migrate`) runs, or the parse
/// error.
fn parse_command(line: &[&str]) -> Result<Option<Command>, clap::Error> {
    assert_eq!(line[0], "taskmaster", "{line:?}");
    Cli::try_parse_from(line).map(|cli| cli.command)
}

/// The Dockerfile's `ENV` value of `name`.
fn docker_env(name: &str) -> String {
    let dockerfile = read("Dockerfile");
    let at = dockerfile
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("the Dockerfile sets no {name}"));
    dockerfile[at + name.len() + 1..]
        .split(|c: char| c.is_whitespace() || c == '\\')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_toml_matches_the_binary() {
    let fly: toml::Value = toml::from_str(&read("fly.toml")).expect("fly.toml parses");
    let env = fly["env"].as_table().expect("[env]");
    let known = known_env();
    for name in env.keys() {
        assert!(
            known.contains(name),
            "fly.toml sets {name}, which taskmaster does not read"
        );
    }

    // The port Fly sends traffic to is the one the service listens on.
    let port = fly["http_service"]["internal_port"].as_integer().unwrap();
    assert_eq!(env["PORT"].as_str(), Some(port.to_string().as_str()));

    // The release command is a real subcommand: `migrate`.
    let release = fly["deploy"]["release_command"].as_str().unwrap();
    let words: Vec<&str> = release.split_whitespace().collect();
    assert!(
        matches!(parse_command(&words), Ok(Some(Command::Migrate))),
        "release_command `{release}`"
    );

    // The SQLite file and the data directory are on the volume.
    let mounts = fly["mounts"].as_array().expect("[[mounts]]");
    let volume = mounts[0]["destination"].as_str().unwrap();
    let database = env["DATABASE_URL"].as_str().unwrap();
    assert!(
        database.starts_with(&format!("sqlite://{volume}/")),
        "{database} is not on the volume at {volume}"
    );
    let data_dir = docker_env("TASKMASTER_DATA_DIR");
    assert!(data_dir.starts_with(&format!("{volume}/")), "{data_dir}");
    assert!(docker_env("DATABASE_URL").starts_with(&format!("sqlite://{volume}/")));

    // Each health check's path answers 200 on the real binary.
    let db_dir = tempfile::tempdir().unwrap();
    let service = ChildService::start(&db_dir.path().join("fly.db"), &[]);
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    for check in fly["http_service"]["checks"].as_array().unwrap() {
        let path = check["path"].as_str().unwrap();
        let method = check["method"].as_str().unwrap_or("GET");
        assert_eq!(method, "GET");
        let answer = client
            .get(format!("{}{path}", service.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "fly.toml's check {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_deployment_matches_the_binary() {
    let deployment: serde_json::Value =
        serde_saphyr::from_str(&read("deploy/kubernetes/deployment.yaml")).unwrap();
    let config_map: serde_json::Value =
        serde_saphyr::from_str(&read("deploy/kubernetes/configmap.yaml")).unwrap();
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64().unwrap() >= 2, "several replicas");
    let container = &spec["template"]["spec"]["containers"][0];

    // Its arguments are a real command line: `serve`.
    let mut line = vec!["taskmaster"];
    line.extend(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap()),
    );
    assert!(
        matches!(parse_command(&line), Ok(Some(Command::Serve))),
        "{line:?}"
    );

    // Every variable it sets is one taskmaster reads.
    let known = known_env();
    let mut set: BTreeMap<String, Option<String>> = BTreeMap::new();
    for e in container["env"].as_array().unwrap() {
        set.insert(
            e["name"].as_str().unwrap().to_owned(),
            e["value"].as_str().map(str::to_owned),
        );
    }
    for (k, v) in config_map["data"].as_object().unwrap() {
        set.insert(k.clone(), v.as_str().map(str::to_owned));
    }
    for name in set.keys() {
        assert!(
            known.contains(name),
            "the Deployment sets {name}, which taskmaster does not read"
        );
    }
    // PostgreSQL (several replicas) and one session key for all of them.
    for needed in [
        "DATABASE_URL",
        "GITHUB_WEBHOOK_SECRET",
        "TASKMASTER_SESSION_KEY",
    ] {
        assert!(set.contains_key(needed), "{needed}");
    }

    // The port it names is the one the service listens on.
    let port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(set["PORT"].as_deref(), Some(port.to_string().as_str()));

    // The private key's path is inside the secret's mount.
    let key_path = set["GITHUB_PRIVATE_KEY_PATH"].clone().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(
            |m| key_path.starts_with(m["mountPath"].as_str().unwrap()) && m["readOnly"] == true
        ),
        "{key_path} is not on a read-only mount"
    );
    let data_dir = set["TASKMASTER_DATA_DIR"].clone().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| data_dir.starts_with(m["mountPath"].as_str().unwrap())),
        "{data_dir} is not on a volume (the root file system is read-only)"
    );

    // Liveness on /api/health, readiness on /api/ready: each answers 200
    // on the real binary once it is up.
    let db_dir = tempfile::tempdir().unwrap();
    let service = ChildService::start(&db_dir.path().join("k8s.db"), &[]);
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let probes = ["startupProbe", "livenessProbe", "readinessProbe"];
    let paths: Vec<&str> = probes
        .iter()
        .map(|p| container[*p]["httpGet"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/api/health", "/api/health", "/api/ready"]);
    for path in paths {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let status = client
                .get(format!("{}{path}", service.base_url))
                .send()
                .await
                .unwrap()
                .status();
            if status == 200 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{path}: {status}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// `GET /api/ready` answers 503 until the engine's start-up recovery is
/// done, 200 while it runs, and 503 again once it stops; `/api/health`
/// stays 200 throughout (a replica that is starting is alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_engine() {
    use taskmaster::agent::{AgentRegistry, AgentsConfig};
    use taskmaster::engine::{Engine, EngineConfig};
    use tower::ServiceExt as _;
    let dir = tempfile::tempdir().unwrap();
    let lookup = |_: &str| None;
    let config = AgentsConfig::load(None, &lookup).unwrap();
    let registry = AgentRegistry::new(&config, &lookup).unwrap();
    std::fs::write(
        dir.path().join("checks.yml"),
        "name: checks\non: { pull_request: {} }\nsteps:\n  test: { agent: command, with: { run: [\"true\"] } }\n",
    )
    .unwrap();
    let workflows =
        Arc::new(taskmaster::workflow::WorkflowSet::load_dir(dir.path(), &["command"]).unwrap());
    let store = taskmaster::store::connect_runs(&format!(
        "sqlite://{}",
        dir.path().join("ready.db").display()
    ))
    .await
    .unwrap();
    let engine = Engine::new(
        store,
        workflows,
        Arc::new(registry),
        EngineConfig {
            poll: Duration::from_millis(50),
            shutdown_grace: Duration::from_millis(100),
            ..EngineConfig::default()
        },
    );
    let api = taskmaster::api::service(taskmaster::api::ApiState::new(engine.clone(), false));
    let get = |path: &'static str| {
        let api = api.clone();
        async move {
            let answer = api
                .oneshot(
                    axum::http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let (status, body) = get("/api/ready").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("starting")),
        "{body}"
    );
    assert_eq!(get("/api/health").await.0, 200);

    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(engine.clone().run(stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get("/api/ready").await;
        if status == 200 {
            assert_eq!(body["status"], "ready");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    let (status, body) = get("/api/ready").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("stopping")),
        "{body}"
    );
}
