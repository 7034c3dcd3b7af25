//! Per-repository configuration: `.github/taskmaster.yml` on the default
//! branch (the Probot convention), read with the installation's token.
//!
//! ```yaml
//! # .github/taskmaster.yml
//! workflows:
//!   pr_processing: { enabled: false }   # this repository opts out
//! commands:                             # who may use each command
//!   retry: triage                       # none | read | triage | write | maintain | admin
//!   run: maintain
//! ```
//!
//! The file is cached in the store with a time-to-live and dropped when a
//! push to the default branch touches it. An invalid file is reported with
//! its line and column and the defaults are used; a failure to fetch it
//! (GitHub down, rate limited) never blocks a run: the last good copy, or the
//! defaults, apply.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::command::CommandKind;
use crate::github::{GitHub, InstallationId, Permission, RepoName};
use crate::store::{RepoConfigRecord, RunStore, now_ms};
use crate::workflow::WorkflowSet;
use crate::workflow::schema::OrderedMap;

/// Where the file lives in a repository.
pub const PATH: &str = ".github/taskmaster.yml";

/// A repository's overrides of the service-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoConfig {
    /// `workflows.<name>.enabled`: `false` turns a workflow off here, `true`
    /// turns on one that is disabled service-wide.
    pub enabled: BTreeMap<String, bool>,
    /// `commands.<name>`: the permission a command needs here.
    pub commands: BTreeMap<String, Permission>,
}

impl RepoConfig {
    /// Whether `workflow` runs in this repository, given its service-wide
    /// `enabled` flag.
    pub fn workflow_enabled(&self, workflow: &str, default: bool) -> bool {
        self.enabled.get(workflow).copied().unwrap_or(default)
    }

    /// The permission `command` needs: the file's level, else the command's
    /// default ([`CommandKind::default_permission`]).
    pub fn permission_for(&self, command: CommandKind) -> Permission {
        self.commands
            .get(command.name())
            .copied()
            .unwrap_or_else(|| Permission::parse(command.default_permission()))
    }
}

/// Why a configuration file was rejected: `path:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{PATH}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// 1-based line (0 when unknown).
    pub line: u64,
    /// 1-based column (0 when unknown).
    pub column: u64,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    workflows: OrderedMap<RawWorkflow>,
    #[serde(default)]
    commands: OrderedMap<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    #[serde(default)]
    enabled: Option<bool>,
}

const LEVELS: &[&str] = &["none", "read", "triage", "write", "maintain", "admin"];

/// Parses `.github/taskmaster.yml`. `workflows` is the service's workflow
/// set: naming a workflow it does not have is an error (a typo would
/// otherwise silently change nothing).
///
/// # Errors
/// [`ConfigError`] with the line and column of the first problem.
pub fn parse(text: &str, workflows: &WorkflowSet) -> Result<RepoConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(RepoConfig::default());
    }
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = e.without_snippet().to_string();
        let message = message
            .rsplit_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m)
            .to_owned();
        ConfigError {
            line,
            column,
            message,
        }
    })?;
    let at = |s: &Spanned<String>, message: String| ConfigError {
        line: s.referenced.line(),
        column: s.referenced.column(),
        message,
    };
    let mut config = RepoConfig::default();
    if let Some(dup) = raw
        .workflows
        .duplicates
        .first()
        .or(raw.commands.duplicates.first())
    {
        return Err(at(dup, format!("`{}` is given twice", dup.value)));
    }
    for (name, wf) in raw.workflows.entries {
        if workflows.get(&name.value).is_none() {
            let known: Vec<&str> = workflows.iter().map(|w| w.name.as_str()).collect();
            return Err(at(
                &name,
                format!(
                    "no workflow named `{}` (known: {})",
                    name.value,
                    known.join(", ")
                ),
            ));
        }
        if let Some(enabled) = wf.enabled {
            config.enabled.insert(name.value, enabled);
        }
    }
    for (name, level) in raw.commands.entries {
        let Some(kind) = CommandKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(&name.value))
        else {
            let known: Vec<&str> = CommandKind::ALL.iter().map(|k| k.name()).collect();
            return Err(at(
                &name,
                format!(
                    "`{}` is not a command (commands: {})",
                    name.value,
                    known.join(", ")
                ),
            ));
        };
        let value = level.value.to_ascii_lowercase();
        if !LEVELS.contains(&value.as_str()) {
            return Err(at(
                &level,
                format!(
                    "`{}` is not a permission level (use one of {})",
                    level.value,
                    LEVELS.join(", ")
                ),
            ));
        }
        config
            .commands
            .insert(kind.name().to_owned(), Permission::parse(&value));
    }
    Ok(config)
}

/// A repository's configuration as it applies now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The overrides in force (defaults when the file is absent or invalid).
    pub config: RepoConfig,
    /// Why the file was rejected, when it was (to report to the repository).
    pub error: Option<ConfigError>,
}

/// Reads repository configurations through a store-backed cache.
pub struct RepoConfigs {
    store: Arc<dyn RunStore>,
    github: Arc<dyn GitHub>,
    workflows: Arc<WorkflowSet>,
    ttl_ms: i64,
}

impl RepoConfigs {
    /// A cache whose entries are fetched again after `ttl_ms` milliseconds.
    pub fn new(
        store: Arc<dyn RunStore>,
        github: Arc<dyn GitHub>,
        workflows: Arc<WorkflowSet>,
        ttl_ms: i64,
    ) -> Self {
        Self {
            store,
            github,
            workflows,
            ttl_ms,
        }
    }

    /// The configuration of `repository` (`owner/name`), fetched with
    /// `installation`'s token when the cached copy is older than the TTL.
    /// Never fails: errors fall back to the cached copy, else the defaults.
    pub async fn get(&self, installation: Option<i64>, repository: &str) -> Loaded {
        let cached = match self.store.repo_config(repository).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%repository, error = %e, "cannot read the cached repository configuration; using the defaults");
                None
            }
        };
        let now = now_ms();
        let fresh = cached
            .as_ref()
            .is_some_and(|c| now - c.fetched_at < self.ttl_ms);
        if !fresh && let Some(installation) = installation {
            match self.fetch(installation, repository).await {
                Ok(body) => {
                    let error = body
                        .as_deref()
                        .and_then(|b| parse(b, &self.workflows).err())
                        .map(|e| e.to_string());
                    let record = RepoConfigRecord {
                        body,
                        error,
                        fetched_at: now,
                    };
                    if let Err(e) = self.store.set_repo_config(repository, &record).await {
                        tracing::warn!(%repository, error = %e, "cannot cache the repository configuration");
                    }
                    return self.load(&record);
                }
                Err(e) => {
                    tracing::warn!(%repository, error = %e,
                        "cannot fetch {PATH}; using the last copy or the defaults");
                }
            }
        }
        cached.map(|c| self.load(&c)).unwrap_or_default()
    }

    /// Drops the cached copy (a push to the default branch touched the file).
    pub async fn forget(&self, repository: &str) {
        if let Err(e) = self.store.forget_repo_config(repository).await {
            tracing::warn!(%repository, error = %e, "cannot drop the cached repository configuration");
        }
    }

    async fn fetch(
        &self,
        installation: i64,
        repository: &str,
    ) -> Result<Option<String>, crate::github::GitHubError> {
        let repo = RepoName::parse(repository)?;
        self.github
            .file_contents(InstallationId(installation as u64), &repo, PATH, None)
            .await
    }

    fn load(&self, record: &RepoConfigRecord) -> Loaded {
        match record.body.as_deref().map(|b| parse(b, &self.workflows)) {
            None => Loaded::default(),
            Some(Ok(config)) => Loaded {
                config,
                error: None,
            },
            Some(Err(error)) => Loaded {
                config: RepoConfig::default(),
                error: Some(error),
            },
        }
    }
}
