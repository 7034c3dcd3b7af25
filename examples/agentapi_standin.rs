//! The test suite's AgentAPI stand-in as a program, for tests of managed
//! AgentAPI servers (one `agentapi server` per run, started by taskmaster):
//!
//! ```sh
//! agentapi_standin server --port=3284 --type=claude -- claude
//! ```
//!
//! It takes `--port=N` (or `--port N`) like `agentapi server`, and
//! `--work-ms=N` (how long a turn works; default 50), and ignores the rest. Its answer names the directory it was started in and its
//! process id (`cwd=… pid=… port=…`), and it writes `agentapi-standin.pid` there,
//! so a test can tell which workspace each server worked in.

#[path = "../tests/support/agentapi.rs"]
#[allow(dead_code)]
mod agentapi;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = args
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            a.strip_prefix("--port=")
                .map(str::to_owned)
                .or_else(|| (a == "--port").then(|| args.get(i + 1).cloned()).flatten())
        })
        .and_then(|p| p.parse::<u16>().ok())
        .expect("--port=N");
    // `--work-ms=N`: how long each turn works before its answer (default 50).
    let work_ms = args
        .iter()
        .find_map(|a| a.strip_prefix("--work-ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(50);
    let cwd = std::env::current_dir().expect("a working directory");
    let pid = std::process::id();
    std::fs::write(cwd.join("agentapi-standin.pid"), pid.to_string()).expect("write the pid file");
    let behavior = agentapi::Behavior {
        work: std::time::Duration::from_millis(work_ms),
        updates: 1,
        answer: format!(
            "cwd={} pid={pid} port={port} answer to: {{prompt}}",
            cwd.display()
        ),
        ..agentapi::Behavior::default()
    };
    let _server = agentapi::StandIn::start_on(behavior, port).await;
    std::future::pending::<()>().await;
}
