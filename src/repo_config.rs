//! Per-repository configuration: `.github/taskmaster.yml` on the default
//! branch (the Probot convention), read with the installation's token.
//!
//! ```yaml
//! # .github/taskmaster.yml
//! workflows:
//!   pr_processing: { enabled: false }   # this repository opts out
//!   review:
//!     pull_request:                     # trigger overrides (each optional)
//!       actions: [opened, synchronize]
//!       branches: [main, "release/*"]
//!       drafts: false
//!       forks: false
//!       bots: false
//!     agents: { claude-code: aider }    # use another configured agent
//!     inputs: { test_command: "cargo test --all" }  # how this repository is tested
//!     verdicts: { fail: neutral }       # a fail verdict gives a neutral check here
//!   triage:
//!     issues: { actions: [opened, labeled], bots: false, untrusted: true }  # anyone's issue runs unasked
//! verdicts:                             # every workflow here (each key optional)
//!   review_comments: true               # findings on changed lines as a PR review
//!   min_severity: warning               # failure | warning | notice
//! approve_label: ok-to-run              # adding it (by someone who may /approve) approves
//! budgets:                              # spend limits here; only tighter than the service's
//!   run: { usd: 2 }
//!   repository_day: { usd: 10, attempts: 100 }
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
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::command::CommandKind;
use crate::github::{GitHub, InstallationId, Permission, RepoName};
use crate::store::{AppRecords, RepoConfigRecord, now_ms};
use crate::workflow::WorkflowSet;
use crate::workflow::schema::OrderedMap;

/// Where the file lives in a repository.
pub const PATH: &str = ".github/taskmaster.yml";

/// A repository's overrides of the service-wide settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoConfig {
    /// `workflows.<name>.enabled`: `false` turns a workflow off here, `true`
    /// turns on one that is disabled service-wide.
    pub enabled: BTreeMap<String, bool>,
    /// `commands.<name>`: the permission a command needs here.
    pub commands: BTreeMap<String, Permission>,
    /// `workflows.<name>.pull_request` / `.issues`: trigger overrides.
    pub triggers: BTreeMap<String, TriggerOverride>,
    /// `workflows.<name>.agents`: agent substitutions (`from → to`), applied
    /// to each step's agent and fallbacks.
    pub agents: BTreeMap<String, BTreeMap<String, String>>,
    /// `workflows.<name>.inputs`: values of the workflow's declared inputs
    /// for runs in this repository (e.g. `test_command: "cargo test"`).
    pub inputs: BTreeMap<String, BTreeMap<String, String>>,
    /// `verdicts:`: changes of every workflow's verdict rules here.
    pub verdicts: VerdictOverride,
    /// `approve_label:`: adding this label to a pull request or issue, by
    /// someone who may `/approve`, approves its waiting runs (and the runs
    /// the labeling itself starts).
    pub approve_label: Option<String>,
    /// `workflows.<name>.verdicts`: changes of one workflow's verdict rules
    /// (applied after the file's `verdicts:`).
    pub workflow_verdicts: BTreeMap<String, VerdictOverride>,
    /// `budgets:`: this repository's spend limits, in the service's shape
    /// ([`crate::budget::Budgets`]); they only tighten the service's (the
    /// engine checks the tighter of each).
    pub budgets: crate::budget::Budgets,
}

/// Changes of a workflow's [`VerdictRules`](crate::verdict::VerdictRules);
/// `None` keeps its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictOverride {
    /// `fail`: the check run's conclusion for a `fail` verdict.
    #[serde(default)]
    pub fail: Option<crate::verdict::FailConclusion>,
    /// `review_comments`: post findings on changed lines as a review.
    #[serde(default)]
    pub review_comments: Option<bool>,
    /// `min_severity`: the least severity posted as a review comment.
    #[serde(default)]
    pub min_severity: Option<crate::verdict::Severity>,
}

impl VerdictOverride {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn apply(&self, rules: &mut crate::verdict::VerdictRules) {
        rules.fail = self.fail.unwrap_or(rules.fail);
        rules.review_comments = self.review_comments.unwrap_or(rules.review_comments);
        rules.min_severity = self.min_severity.unwrap_or(rules.min_severity);
    }
}

/// A repository's changes to one workflow's triggers; `None` keeps the
/// workflow's own value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerOverride {
    /// `pull_request.actions`.
    pub pr_actions: Option<Vec<String>>,
    /// `pull_request.branches` (base branch globs).
    pub branches: Option<Vec<String>>,
    /// `pull_request.drafts`.
    pub drafts: Option<bool>,
    /// `pull_request.forks`.
    pub forks: Option<bool>,
    /// `pull_request.bots`.
    pub pr_bots: Option<bool>,
    /// `issues.actions`.
    pub issue_actions: Option<Vec<String>>,
    /// `issues.bots`.
    pub issue_bots: Option<bool>,
    /// `issues.untrusted`: issues by anyone start at once (no `/approve`).
    pub issue_untrusted: Option<bool>,
}

impl RepoConfig {
    /// `set` with this repository's trigger and agent overrides applied, or
    /// `None` when it has none (use `set` as it is).
    pub fn apply(&self, set: &WorkflowSet) -> Option<WorkflowSet> {
        if self.triggers.is_empty()
            && self.agents.is_empty()
            && self.inputs.is_empty()
            && self.verdicts.is_empty()
            && self.workflow_verdicts.is_empty()
            && self.budgets.is_empty()
        {
            return None;
        }
        let mut changed = Vec::new();
        for wf in set.iter() {
            let trigger = self.triggers.get(&wf.name);
            let agents = self.agents.get(&wf.name);
            let inputs = self.inputs.get(&wf.name);
            let verdicts = self.workflow_verdicts.get(&wf.name);
            if trigger.is_none()
                && agents.is_none()
                && inputs.is_none()
                && verdicts.is_none()
                && self.verdicts.is_empty()
                && self.budgets.is_empty()
            {
                continue;
            }
            let mut wf = wf.clone();
            wf.budgets = self.budgets;
            self.verdicts.apply(&mut wf.verdicts);
            if let Some(v) = verdicts {
                v.apply(&mut wf.verdicts);
            }
            if let Some(values) = inputs {
                // Runs take an input's value from its default at creation
                // (`Workflow::input_values`): here, the repository's value.
                for input in &mut wf.inputs {
                    if let Some(v) = values.get(&input.name) {
                        input.default = v.clone();
                    }
                }
            }
            if let Some(t) = trigger {
                if let Some(pr) = wf.triggers.pull_request.as_mut() {
                    if let Some(actions) = &t.pr_actions {
                        pr.actions = actions.clone();
                    }
                    if let Some(branches) = &t.branches {
                        pr.set_branches(branches.clone());
                    }
                    pr.drafts = t.drafts.unwrap_or(pr.drafts);
                    pr.forks = t.forks.unwrap_or(pr.forks);
                    pr.bots = t.pr_bots.unwrap_or(pr.bots);
                }
                if let Some(issues) = wf.triggers.issues.as_mut() {
                    if let Some(actions) = &t.issue_actions {
                        issues.actions = actions.clone();
                    }
                    issues.bots = t.issue_bots.unwrap_or(issues.bots);
                    issues.untrusted = t.issue_untrusted.unwrap_or(issues.untrusted);
                }
            }
            if let Some(map) = agents {
                let swap = |a: &mut String| {
                    if let Some(to) = map.get(a.as_str()) {
                        *a = to.clone();
                    }
                };
                for step in &mut wf.steps {
                    swap(&mut step.agent);
                    step.fallback.iter_mut().for_each(swap);
                }
            }
            changed.push(wf);
        }
        Some(set.with_replaced(changed))
    }

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
    #[serde(default)]
    verdicts: VerdictOverride,
    #[serde(default)]
    approve_label: Option<Spanned<String>>,
    #[serde(default)]
    budgets: crate::budget::Budgets,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    pull_request: Option<Spanned<RawPullRequest>>,
    #[serde(default)]
    issues: Option<Spanned<RawIssues>>,
    #[serde(default)]
    agents: OrderedMap<Spanned<String>>,
    #[serde(default)]
    inputs: OrderedMap<Spanned<String>>,
    #[serde(default)]
    verdicts: Option<VerdictOverride>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPullRequest {
    #[serde(default)]
    actions: Option<Vec<String>>,
    #[serde(default)]
    branches: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    drafts: Option<bool>,
    #[serde(default)]
    forks: Option<bool>,
    #[serde(default)]
    bots: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssues {
    #[serde(default)]
    actions: Option<Vec<String>>,
    #[serde(default)]
    bots: Option<bool>,
    #[serde(default)]
    untrusted: Option<bool>,
}

const LEVELS: &[&str] = &["none", "read", "triage", "write", "maintain", "admin"];

/// Parses `.github/taskmaster.yml`. `workflows` is the service's workflow
/// set and `agents` its agents' names: naming a workflow or agent it does
/// not have is an error (a typo would otherwise silently change nothing).
///
/// # Errors
/// [`ConfigError`] with the line and column of the first problem.
pub fn parse(
    text: &str,
    workflows: &WorkflowSet,
    agents: &[String],
) -> Result<RepoConfig, ConfigError> {
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
    let at_loc = |l: &serde_saphyr::Location, message: String| ConfigError {
        line: l.line(),
        column: l.column(),
        message,
    };
    if let Some(label) = &raw.approve_label
        && (label.value.trim().is_empty() || label.value.chars().count() > 50)
    {
        return Err(at(
            label,
            "`approve_label` must name a label (1 to 50 characters)".into(),
        ));
    }
    let mut config = RepoConfig {
        verdicts: raw.verdicts,
        budgets: raw.budgets,
        approve_label: raw.approve_label.map(|l| l.value.trim().to_owned()),
        ..RepoConfig::default()
    };
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
        let Some(def) = workflows.get(&name.value) else {
            continue;
        };
        if let Some(enabled) = wf.enabled {
            config.enabled.insert(name.value.clone(), enabled);
        }
        let mut trigger = TriggerOverride::default();
        let mut has_trigger = false;
        if let Some(pr) = wf.pull_request {
            if def.triggers.pull_request.is_none() {
                return Err(at_loc(
                    &pr.referenced,
                    format!(
                        "workflow `{}` has no pull_request trigger to change",
                        name.value
                    ),
                ));
            }
            let pr_at = pr.referenced;
            let pr = pr.value;
            if let Some(branches) = &pr.branches {
                for b in branches {
                    if let Err(e) = globset::Glob::new(&b.value) {
                        return Err(at(
                            b,
                            format!("`{}` is not a valid branch glob: {}", b.value, e.kind()),
                        ));
                    }
                }
            }
            if let Some(actions) = &pr.actions
                && actions.is_empty()
            {
                return Err(at_loc(
                    &pr_at,
                    "`actions` must list at least one action".into(),
                ));
            }
            trigger.pr_actions = pr.actions;
            trigger.branches = pr
                .branches
                .map(|b| b.into_iter().map(|s| s.value).collect());
            trigger.drafts = pr.drafts;
            trigger.forks = pr.forks;
            trigger.pr_bots = pr.bots;
            has_trigger = true;
        }
        if let Some(issues) = wf.issues {
            if def.triggers.issues.is_none() {
                return Err(at_loc(
                    &issues.referenced,
                    format!("workflow `{}` has no issues trigger to change", name.value),
                ));
            }
            trigger.issue_actions = issues.value.actions;
            trigger.issue_bots = issues.value.bots;
            trigger.issue_untrusted = issues.value.untrusted;
            has_trigger = true;
        }
        if has_trigger {
            config.triggers.insert(name.value.clone(), trigger);
        }
        let mut swaps = BTreeMap::new();
        for (from, to) in wf.agents.entries {
            for a in [&from, &to] {
                if !agents.iter().any(|x| x == &a.value) {
                    return Err(at(
                        a,
                        format!(
                            "no agent named `{}` (agents: {})",
                            a.value,
                            agents.join(", ")
                        ),
                    ));
                }
            }
            swaps.insert(from.value, to.value);
        }
        let mut values = BTreeMap::new();
        if let Some(dup) = wf.inputs.duplicates.first() {
            return Err(at(dup, format!("input `{}` is given twice", dup.value)));
        }
        for (input, value) in wf.inputs.entries {
            if !def.inputs.iter().any(|i| i.name == input.value) {
                let known: Vec<&str> = def.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(at(
                    &input,
                    format!(
                        "workflow `{}` has no input `{}` (its inputs: {})",
                        name.value,
                        input.value,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            values.insert(input.value, value.value);
        }
        if !values.is_empty() {
            config.inputs.insert(name.value.clone(), values);
        }
        if let Some(v) = wf.verdicts.filter(|v| !v.is_empty()) {
            config.workflow_verdicts.insert(name.value.clone(), v);
        }
        if !swaps.is_empty() {
            config.agents.insert(name.value, swaps);
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The overrides in force (defaults when the file is absent or invalid).
    pub config: RepoConfig,
    /// Why the file was rejected, when it was (to report to the repository).
    pub error: Option<ConfigError>,
}

/// Reads repository configurations through a store-backed cache.
pub struct RepoConfigs {
    store: Arc<dyn AppRecords>,
    github: Arc<dyn GitHub>,
    workflows: Arc<WorkflowSet>,
    agents: Vec<String>,
    ttl: Duration,
}

impl RepoConfigs {
    /// A cache whose entries are fetched again after `ttl`;
    /// files are checked against `workflows` and the agent names `agents`.
    pub fn new(
        store: Arc<dyn AppRecords>,
        github: Arc<dyn GitHub>,
        workflows: Arc<WorkflowSet>,
        agents: Vec<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            store,
            github,
            workflows,
            agents,
            ttl,
        }
    }

    /// The configuration of `repository` (`owner/name`), fetched with
    /// `installation`'s token when the cached copy is older than the TTL.
    /// Never fails: errors fall back to the cached copy, else the defaults.
    pub async fn get(&self, installation: Option<InstallationId>, repository: &RepoName) -> Loaded {
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
            .is_some_and(|c| now - c.fetched_at < self.ttl.as_millis() as i64);
        if !fresh && let Some(installation) = installation {
            match self.fetch(installation, repository).await {
                Ok(body) => {
                    let loaded = self.load(body.as_deref());
                    let record = RepoConfigRecord {
                        body,
                        error: loaded.error.as_ref().map(ToString::to_string),
                        fetched_at: now,
                    };
                    if let Err(e) = self.store.set_repo_config(repository, &record).await {
                        tracing::warn!(%repository, error = %e, "cannot cache the repository configuration");
                    }
                    return loaded;
                }
                Err(e) => {
                    tracing::warn!(%repository, error = %e,
                        "cannot fetch {PATH}; using the last copy or the defaults");
                }
            }
        }
        cached
            .map(|c| self.load(c.body.as_deref()))
            .unwrap_or_default()
    }

    /// Drops the cached copy (a push to the default branch touched the file).
    pub async fn forget(&self, repository: &RepoName) {
        if let Err(e) = self.store.forget_repo_config(repository).await {
            tracing::warn!(%repository, error = %e, "cannot drop the cached repository configuration");
        }
    }

    async fn fetch(
        &self,
        installation: InstallationId,
        repository: &RepoName,
    ) -> Result<Option<String>, crate::github::GitHubError> {
        self.github
            .file_contents(installation, repository, PATH, None)
            .await
    }

    /// The configuration a file's text (`None`: no file) gives.
    fn load(&self, body: Option<&str>) -> Loaded {
        match body.map(|b| parse(b, &self.workflows, &self.agents)) {
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
