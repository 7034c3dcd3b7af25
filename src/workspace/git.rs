//! The hardened git runner: every git process taskmaster starts on the host.
//!
//! A repository's own configuration can name programs that run for whoever
//! runs git in it (`core.fsmonitor`, `core.pager`, hooks, `diff.external`),
//! and the machine's `/etc/gitconfig` or `~/.gitconfig` can carry credential
//! helpers or URL rewrites nobody meant for this service. So each git process
//! starts from an **empty environment** with:
//!
//! * `GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`: no system or
//!   user configuration;
//! * `GIT_TERMINAL_PROMPT=0` and an empty `core.askPass` / `credential.helper`:
//!   a missing credential fails at once instead of waiting for a keyboard;
//! * `core.hooksPath=/dev/null`, `core.fsmonitor=false`, `gc.auto=0`,
//!   `maintenance.auto=false`: nothing of the repository runs, and nothing
//!   prunes objects a workspace borrows; `checkout.workers=0` (a worker per
//!   core: most of a large checkout is creating files);
//! * `protocol.allow=never` with `https`, `file` (the mirror) and, only when
//!   the configured remote is `http://`, `http` allowed;
//! * the token, when there is one, only as one more `GIT_CONFIG_KEY_n` /
//!   `GIT_CONFIG_VALUE_n` pair: `http.<remote base>/.extraHeader` =
//!   `AUTHORIZATION: basic base64(x-access-token:<token>)`. It is never in
//!   argv (readable by anyone in `/proc/*/cmdline`), never in a repository's
//!   `.git/config`, and never in an error message (stderr is scrubbed of it).
//!
//! Git reads `GIT_CONFIG_COUNT` since 2.31.
//! Sources: <https://git-scm.com/docs/git-config#ENVIRONMENT>,
//! <https://git-scm.com/docs/git-config#Documentation/git-config.txt-protocolallow>.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

use super::WorkspaceError;

/// Longest time one git command may take before it is killed.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs git with the hardened environment described in the module docs.
#[derive(Debug, Clone)]
pub struct Git {
    binary: PathBuf,
    /// The remote base (`https://github.com`), for the token's header scope
    /// and to decide whether `http` is allowed.
    remote_base: String,
    path: OsString,
}

/// What a finished git command printed.
#[derive(Debug)]
pub struct GitOutput {
    /// Standard output, as bytes (diffs may not be UTF-8).
    pub stdout: Vec<u8>,
}

impl Git {
    /// A runner for `binary` (a path, or `git` looked up in `PATH`) against
    /// remotes under `remote_base`.
    pub fn new(binary: impl Into<PathBuf>, remote_base: &str) -> Self {
        Self {
            binary: binary.into(),
            remote_base: remote_base.trim_end_matches('/').to_owned(),
            path: std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        }
    }

    /// The `GIT_CONFIG_*` pairs every command gets, plus the token header.
    fn config_pairs(&self, token: Option<&SecretString>) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = vec![
            ("core.hooksPath".into(), "/dev/null".into()),
            ("core.fsmonitor".into(), "false".into()),
            ("core.askPass".into(), String::new()),
            ("credential.helper".into(), String::new()),
            ("gc.auto".into(), "0".into()),
            ("maintenance.auto".into(), "false".into()),
            ("advice.detachedHead".into(), "false".into()),
            // Parallel checkout, one worker per core: most of a large
            // checkout is creating files.
            ("checkout.workers".into(), "0".into()),
            ("protocol.allow".into(), "never".into()),
            ("protocol.https.allow".into(), "always".into()),
            ("protocol.file.allow".into(), "always".into()),
        ];
        if self.remote_base.starts_with("http://") {
            pairs.push(("protocol.http.allow".into(), "always".into()));
        }
        if let Some(token) = token {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("x-access-token:{}", token.expose_secret()));
            pairs.push((
                format!("http.{}/.extraHeader", self.remote_base),
                format!("AUTHORIZATION: basic {basic}"),
            ));
        }
        pairs
    }

    /// Runs `git <args>` in `dir` (or the current directory), with `token`
    /// (if any) as the remote's header, and returns its stdout.
    ///
    /// # Errors
    /// [`WorkspaceError::Git`] when git cannot start, exits non-zero (with
    /// its stderr, scrubbed of the token, and whether retrying may help), or
    /// runs past [`GIT_TIMEOUT`].
    pub async fn run(
        &self,
        dir: Option<&Path>,
        args: &[&str],
        token: Option<&SecretString>,
    ) -> Result<GitOutput, WorkspaceError> {
        self.run_with_input(dir, args, token, None).await
    }

    /// [`Git::run`] with `input` written to git's standard input.
    ///
    /// # Errors
    /// As [`Git::run`].
    pub async fn run_with_input(
        &self,
        dir: Option<&Path>,
        args: &[&str],
        token: Option<&SecretString>,
        input: Option<Vec<u8>>,
    ) -> Result<GitOutput, WorkspaceError> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(args)
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", "/nonexistent")
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let pairs = self.config_pairs(token);
        cmd.env("GIT_CONFIG_COUNT", pairs.len().to_string());
        for (i, (key, value)) in pairs.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), key);
            cmd.env(format!("GIT_CONFIG_VALUE_{i}"), value);
        }
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        // A git that outlived a killed service would go on writing into a
        // mirror whose lock died with the service: it dies with it.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let what = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
        let output = async {
            let mut child = cmd.spawn()?;
            if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
                use tokio::io::AsyncWriteExt as _;
                // Written beside the reads below so a large answer cannot
                // block git while its input is still being written.
                let writer = tokio::spawn(async move {
                    let _ = stdin.write_all(&bytes).await;
                });
                let out = child.wait_with_output().await;
                let _ = writer.await;
                return out;
            }
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(GIT_TIMEOUT, output).await {
            Err(_) => {
                return Err(WorkspaceError::Git {
                    command: what,
                    message: format!("timed out after {} s", GIT_TIMEOUT.as_secs()),
                    transient: true,
                });
            }
            Ok(Err(e)) => {
                return Err(WorkspaceError::Git {
                    command: what,
                    message: format!(
                        "cannot run `{}`: {e} (install git, Debian package `git`)",
                        self.binary.display()
                    ),
                    transient: false,
                });
            }
            Ok(Ok(output)) => output,
        };
        if output.status.success() {
            return Ok(GitOutput {
                stdout: output.stdout,
            });
        }
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if let Some(token) = token
            && !token.expose_secret().is_empty()
        {
            stderr = stderr.replace(token.expose_secret(), "[REDACTED]");
        }
        let transient = is_transient(&stderr);
        Err(WorkspaceError::Git {
            command: what,
            message: if stderr.is_empty() {
                format!("exited with {}", output.status)
            } else {
                stderr
            },
            transient,
        })
    }

    /// `git <args>` with stdout as trimmed text.
    pub async fn text(&self, dir: Option<&Path>, args: &[&str]) -> Result<String, WorkspaceError> {
        let out = self.run(dir, args, None).await?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// Whether git's error text names a condition that passes (the network, the
/// server's load) rather than one that retrying cannot fix (a missing
/// repository or commit, refused credentials). Unknown errors count as
/// transient: the step's retry policy bounds them.
fn is_transient(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    const PERMANENT: &[&str] = &[
        "repository not found",
        "not found",
        "returned error: 404",
        "returned error: 403",
        "returned error: 401",
        "authentication failed",
        "couldn't find remote ref",
        "not our ref",
        "unadvertised object",
        "not a valid object name",
        "reference is not a tree",
        "unable to read tree",
        "pathspec",
        "transport '",
        "is not allowed",
    ];
    !PERMANENT.iter().any(|p| s.contains(p))
}

/// Whether `name` is a branch name git and GitHub accept, checked before it
/// reaches a refspec: no `..`, no control characters, spaces or any of
/// `~^:?*[\`, no leading `-` or `/`, no trailing `/` or `.lock`, no `@{`.
/// Source: <https://git-scm.com/docs/git-check-ref-format>.
pub fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name != "@"
        && !name
            .chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c))
        && !name.split('/').any(|part| part.starts_with('.'))
}

/// Whether `sha` is a full hex object id (40 for SHA-1, 64 for SHA-256).
pub fn valid_sha(sha: &str) -> bool {
    (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_are_checked_like_git_does() {
        for ok in ["main", "feature/x-1", "release-2.0", "fix_é"] {
            assert!(valid_branch(ok), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "a:b", "x.lock", "a/", "/a", ".hidden", "a/.b", "a@{1}",
            "a\nb", "*",
        ] {
            assert!(!valid_branch(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_token_goes_into_one_header_pair_scoped_to_the_remote() {
        let git = Git::new("git", "https://github.example/");
        let token = SecretString::from("ghs_secret");
        let pairs = git.config_pairs(Some(&token));
        let (key, value) = pairs.last().unwrap();
        assert_eq!(key, "http.https://github.example/.extraHeader");
        let expected =
            base64::engine::general_purpose::STANDARD.encode("x-access-token:ghs_secret");
        assert_eq!(value, &format!("AUTHORIZATION: basic {expected}"));
        assert!(!pairs.iter().any(|(k, _)| k == "protocol.http.allow"));
        let plain = Git::new("git", "http://127.0.0.1:1");
        assert!(
            plain
                .config_pairs(None)
                .iter()
                .any(|(k, v)| k == "protocol.http.allow" && v == "always")
        );
    }

    #[test]
    fn git_errors_are_classified() {
        assert!(!is_transient(
            "remote: Repository not found.\nfatal: repository 'x' not found"
        ));
        assert!(!is_transient(
            "fatal: couldn't find remote ref refs/pull/9/head"
        ));
        assert!(is_transient(
            "fatal: unable to access 'x': Failed to connect to host"
        ));
        assert!(is_transient("error: RPC failed; HTTP 502"));
    }
}
