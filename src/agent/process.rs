//! Running one local process for an attempt: shared by the `cli` and
//! `command` adapters.
//!
//! The child gets its own process group (`setpgid(0, 0)`), so that a timeout
//! or a cancel can stop it *and everything it started* with one `killpg`:
//! first `SIGTERM`, then, after a grace period, `SIGKILL`. After the child
//! exits on its own the group is killed too, so a straggler left running in
//! the background (`make &`) does not outlive the attempt. A process that
//! moves itself to another group or session escapes this; the `bwrap`
//! sandbox (pid namespace, `--die-with-parent`) of the stricter policies
//! does not let it.
//!
//! Between `fork` and `exec` (`pre_exec`) the child lowers its resource
//! limits with `setrlimit` and, when configured, drops to another user with
//! `setgroups`/`setgid`/`setuid`: only async-signal-safe system calls run
//! there. `RLIMIT_NPROC` counts every process of the *user*, and the kernel
//! does not enforce it for root, which is why `run_as` exists.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::command::{ResourceLimits, RunAs};
use super::output::CappedBuffer;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct ProcessSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub workdir: Option<PathBuf>,
    /// The whole environment (the child starts from an empty one).
    pub env: BTreeMap<String, String>,
    /// Written to the child's stdin, which is then closed; `None`: /dev/null.
    pub stdin: Option<Vec<u8>>,
    pub limits: ResourceLimits,
    pub run_as: Option<RunAs>,
    pub deadline: Instant,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Cap per stream, in bytes.
    pub output_limit: usize,
}

/// How the process ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// It exited (or was killed by a signal we did not send).
    Exited(ExitStatus),
    /// The deadline passed; we killed it.
    TimedOut,
    /// The token fired; we killed it.
    Cancelled,
    /// It could not be started.
    SpawnFailed(std::io::Error),
}

#[derive(Debug)]
pub(crate) struct ProcessResult {
    pub ended: Ended,
    pub stdout: CappedBuffer,
    pub stderr: CappedBuffer,
}

impl ProcessResult {
    /// The signal that ended the process, if it exited by one we did not send.
    pub fn signal(&self) -> Option<i32> {
        match &self.ended {
            Ended::Exited(status) => status.signal(),
            _ => None,
        }
    }
}

/// Runs `spec` to its end, the deadline or cancellation.
pub(crate) async fn run(spec: ProcessSpec, cancel: &CancellationToken) -> ProcessResult {
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.workdir {
        command.current_dir(dir);
    }
    let limits = spec.limits;
    let run_as = spec.run_as;
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setrlimit, setgroups, setgid, setuid);
    // it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(move || {
            apply_limits(&limits)?;
            if let Some(user) = run_as
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(user.gid) != 0
                    || libc::setuid(user.uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let empty = || CappedBuffer::new(spec.output_limit);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return ProcessResult {
                ended: Ended::SpawnFailed(e),
                stdout: empty(),
                stderr: empty(),
            };
        }
    };
    let pgid = child.id().map(|id| id as libc::pid_t);
    // If this future is dropped mid-run (the engine aborted the task), the
    // whole group still goes, not only the direct child.
    let _group = GroupGuard(pgid);
    if let (Some(input), Some(mut stdin)) = (spec.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // A child that does not read its stdin is not an error.
            let _ = stdin.write_all(&input).await;
        });
    }
    let stdout = tokio::spawn(read_capped(child.stdout.take(), spec.output_limit));
    let stderr = tokio::spawn(read_capped(child.stderr.take(), spec.output_limit));

    let ended = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => Ended::Exited(status),
            Err(e) => Ended::SpawnFailed(e),
        },
        _ = tokio::time::sleep_until(spec.deadline) => Ended::TimedOut,
        _ = cancel.cancelled() => Ended::Cancelled,
    };
    if matches!(ended, Ended::TimedOut | Ended::Cancelled) {
        signal_group(pgid, libc::SIGTERM);
        if tokio::time::timeout(spec.kill_grace, child.wait())
            .await
            .is_err()
        {
            signal_group(pgid, libc::SIGKILL);
            let _ = child.wait().await;
        }
    }
    // Stragglers: whatever is left of the group goes too.
    signal_group(pgid, libc::SIGKILL);

    // A process that left the group may still hold the pipes open: do not
    // wait for it for long.
    let collect = |task: tokio::task::JoinHandle<CappedBuffer>| async move {
        match tokio::time::timeout(Duration::from_secs(2), task).await {
            Ok(Ok(buffer)) => buffer,
            _ => CappedBuffer::new(spec.output_limit),
        }
    };
    ProcessResult {
        ended,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
    }
}

/// Kills the process group when dropped.
struct GroupGuard(Option<libc::pid_t>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        signal_group(self.0, libc::SIGKILL);
    }
}

fn signal_group(pgid: Option<libc::pid_t>, signal: libc::c_int) {
    if let Some(pgid) = pgid.filter(|p| *p > 1) {
        // SAFETY: killpg has no memory-safety preconditions; ESRCH (group
        // already gone) is expected and ignored.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, limit: usize) -> CappedBuffer {
    let mut buffer = CappedBuffer::new(limit);
    let Some(mut reader) = reader else {
        return buffer;
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.push(&chunk[..n]),
        }
    }
    buffer
}

/// Lowers the calling process's limits, hard limits included, so the child
/// cannot raise them again. Runs in `pre_exec`.
fn apply_limits(limits: &ResourceLimits) -> std::io::Result<()> {
    let set = |resource, value: Option<u64>, hard_extra: u64| -> std::io::Result<()> {
        if let Some(value) = value {
            let limit = libc::rlimit {
                rlim_cur: value as libc::rlim_t,
                rlim_max: value.saturating_add(hard_extra) as libc::rlim_t,
            };
            // SAFETY: setrlimit reads the struct we pass and nothing else.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // The CPU hard limit is one second above the soft one, so the process
    // gets SIGXCPU (which says why) before the kernel's SIGKILL.
    set(libc::RLIMIT_CPU, limits.cpu_seconds, 1)?;
    set(libc::RLIMIT_AS, limits.memory_bytes, 0)?;
    set(libc::RLIMIT_NOFILE, limits.open_files, 0)?;
    set(libc::RLIMIT_NPROC, limits.processes, 0)?;
    Ok(())
}

/// Whether a program can be found: an absolute or relative path that exists,
/// or a bare name found in `path` (a `PATH`-style list).
pub(crate) fn find_program(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = path
        .map(str::to_owned)
        .or_else(|| std::env::var("PATH").ok())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
