//! The bubblewrap sandbox, shared by `command` steps and CLI agents.
//!
//! `bwrap` (Debian package `bubblewrap`) starts the program in new
//! namespaces (user, mount, PID, IPC, UTS, cgroup, and network unless the
//! agent needs it to reach its model), on an empty root where only these are
//! visible:
//!
//! * the system directories, read-only (`/usr`, `/bin`, `/sbin`, `/lib*`,
//!   `/etc`, `/opt`);
//! * the working directory (the run's workspace), read-write;
//! * the paths the attempt names read-only (the mirror a workspace borrows
//!   its objects from) and those the operator configured
//!   (`sandbox_ro_binds`, e.g. a toolchain outside `/usr`);
//! * a private `/tmp`, `/proc` and `/dev`, and for agents a private,
//!   empty `HOME` under `/tmp`.
//!
//! Nothing else of the host: not the data directory (other runs' workspaces,
//! other repositories' mirrors), not the database, not the App's key, not
//! the service's working directory, not the users' home directories.
//! Source: <https://github.com/containers/bubblewrap/blob/main/bwrap.xml>.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What one sandboxed process may see and do.
#[derive(Debug, Clone)]
pub(crate) struct SandboxSpec<'a> {
    /// Bound read-write; the process starts there.
    pub workdir: &'a Path,
    /// Bound read-only at the same paths (skipped when absent).
    pub read_only: Vec<PathBuf>,
    /// Keep the host's network (an agent reaching its model's API).
    pub network: bool,
    /// Drop every capability.
    pub drop_caps: bool,
    /// An empty, private `HOME` (`/tmp/home`) for programs that write their
    /// settings there.
    pub private_home: bool,
}

/// `bwrap` and its arguments that run `argv` under `spec`.
pub(crate) fn wrap(
    bwrap: &Path,
    spec: &SandboxSpec<'_>,
    argv: impl IntoIterator<Item = OsString>,
) -> (OsString, Vec<OsString>) {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
    push(&["--unshare-all", "--die-with-parent", "--new-session"]);
    if spec.network {
        push(&["--share-net"]);
    }
    for dir in [
        "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc", "/opt",
    ] {
        push(&["--ro-bind-try", dir, dir]);
    }
    push(&["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
    if spec.private_home {
        push(&["--dir", "/tmp/home", "--setenv", "HOME", "/tmp/home"]);
    }
    if spec.drop_caps {
        push(&["--cap-drop", "ALL"]);
    }
    for path in &spec.read_only {
        args.push("--ro-bind-try".into());
        args.push(path.into());
        args.push(path.into());
    }
    args.push("--bind".into());
    args.push(spec.workdir.into());
    args.push(spec.workdir.into());
    args.push("--chdir".into());
    args.push(spec.workdir.into());
    args.push("--".into());
    args.extend(argv);
    (bwrap.as_os_str().to_owned(), args)
}

/// The `bwrap` to use: the configured path when it is a file, else `bwrap`
/// from `PATH`; `None` when there is none.
pub(crate) fn find_bwrap(configured: Option<&Path>) -> Option<PathBuf> {
    match configured {
        Some(path) => path.is_file().then(|| path.to_owned()),
        None => super::process::find_program("bwrap", None),
    }
}
