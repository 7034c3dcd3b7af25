//! Workflow definitions: the YAML schema, its validation, the step DAG and
//! prompt templates.
//!
//! A workflow file (`workflows/*.yml`, documented in `workflows/README.md`)
//! says when a workflow starts (`on:`) and what its steps are: which agent
//! does each, with which prompt, after which other steps, under which
//! condition, timeout and retry policy.
//!
//! Loading is all-or-nothing and loud. [`WorkflowSet::load_dir`] reads every
//! file, checks everything it can (unknown keys, unknown agents and `needs`
//! targets, cycles, durations, templates, conditions, triggers) and returns
//! *every* error with its file, line and column, so `taskmaster validate`
//! shows the whole list at once and `serve` refuses to start on a broken set
//! rather than failing one run at a time in production. A set that loads is
//! safe for the engine to trust: every step's dependencies exist, the DAG has
//! a topological order ([`Step::order`]), every template compiles and every
//! condition parses.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::classify::{Priority, TaskType};

pub mod duration;
pub mod expr;
pub(crate) mod schema;
pub mod template;
mod validate;

pub use duration::{format_duration, parse_duration};
pub use expr::{Condition, ExprContext, JsonContext};
pub use template::{PromptContext, RenderError};

/// The agent names accepted when no agent configuration says otherwise.
/// `command` runs a plain program (`with.run`); the others are AI coding agents.
pub const DEFAULT_AGENTS: &[&str] = &["claude-code", "codegen", "aider", "goose", "command"];

/// The agent that runs a plain program instead of an AI agent.
pub const COMMAND_AGENT: &str = "command";

/// One problem in a workflow file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// The file, as given to the loader.
    pub file: PathBuf,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column, in characters; 0 when unknown.
    pub column: u64,
    /// What is wrong and what is expected instead.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found while loading a workflow set, in file and line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in the workflow definitions",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ValidationErrors {}

/// How retry delays grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    /// The same delay every time (`initial_delay`).
    Fixed,
    /// Doubling from `initial_delay`, capped at `max_delay` (with jitter, at the engine's choice).
    #[default]
    Exponential,
}

/// A step's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (≥ 1; 1 means no retry).
    pub max_attempts: u32,
    /// How delays grow.
    pub backoff: Backoff,
    /// Delay before the second attempt.
    pub initial_delay: Duration,
    /// Upper bound on any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// One attempt; delays of 10 s growing to 5 min if `max_attempts` is raised.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Exponential,
            initial_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt` (2-based: the first retry is attempt 2).
    /// Attempt 1 and anything past `max_attempts` return zero.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt < 2 || attempt > self.max_attempts {
            return Duration::ZERO;
        }
        let d = match self.backoff {
            Backoff::Fixed => self.initial_delay,
            Backoff::Exponential => {
                let factor = 1u32.checked_shl(attempt - 2).unwrap_or(u32::MAX);
                self.initial_delay.saturating_mul(factor)
            }
        };
        d.min(self.max_delay)
    }
}

/// A label filter: all of `all`, at least one of `any` (when non-empty), none of `none`.
/// Label names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabelFilter {
    /// At least one must be present (ignored when empty).
    pub any: Vec<String>,
    /// All must be present.
    pub all: Vec<String>,
    /// None may be present.
    pub none: Vec<String>,
}

impl LabelFilter {
    /// True when `labels` pass the filter.
    pub fn matches<'a>(&self, labels: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        let has = |want: &String| {
            labels
                .clone()
                .into_iter()
                .any(|l| l.eq_ignore_ascii_case(want))
        };
        (self.any.is_empty() || self.any.iter().any(has))
            && self.all.iter().all(has)
            && !self.none.iter().any(has)
    }

    /// True when the filter checks nothing.
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.all.is_empty() && self.none.is_empty()
    }
}

/// `on.pull_request`: which pull-request events start the workflow.
#[derive(Debug, Clone, Serialize)]
pub struct PullRequestTrigger {
    /// Accepted actions (default: `opened`, `reopened`, `synchronize`, `ready_for_review`).
    pub actions: Vec<String>,
    /// Base-branch globs (empty: any).
    pub branches: Vec<String>,
    /// Head-branch globs (empty: any).
    pub head_branches: Vec<String>,
    /// Label filter on the PR's labels.
    pub labels: LabelFilter,
    /// Title regexes; at least one must match (empty: any).
    pub titles: Vec<String>,
    /// Also start for draft PRs (default false).
    pub drafts: bool,
    /// Also start for PRs from forks (default false: agents must not run untrusted code with secrets).
    pub forks: bool,
    /// Also start when the sender is a bot (default false: no bot loops).
    pub bots: bool,
    #[serde(skip)]
    pub(crate) branch_globs: Option<globset::GlobSet>,
    #[serde(skip)]
    pub(crate) head_branch_globs: Option<globset::GlobSet>,
    #[serde(skip)]
    pub(crate) title_regexes: Vec<regex::Regex>,
}

impl PullRequestTrigger {
    /// Replaces the base-branch globs (invalid globs are skipped; check
    /// them first, as the workflow and repository-config parsers do).
    pub fn set_branches(&mut self, branches: Vec<String>) {
        let mut builder = globset::GlobSetBuilder::new();
        for b in &branches {
            if let Ok(glob) = globset::GlobBuilder::new(b)
                .literal_separator(false)
                .build()
            {
                builder.add(glob);
            }
        }
        self.branch_globs = if branches.is_empty() {
            None
        } else {
            builder.build().ok()
        };
        self.branches = branches;
    }

    /// True when `branch` matches `branches` (or `branches` is empty).
    pub fn base_matches(&self, branch: &str) -> bool {
        self.branch_globs
            .as_ref()
            .is_none_or(|g| g.is_match(branch))
    }
    /// True when `branch` matches `head_branches` (or it is empty).
    pub fn head_matches(&self, branch: &str) -> bool {
        self.head_branch_globs
            .as_ref()
            .is_none_or(|g| g.is_match(branch))
    }
    /// True when the title matches one of `titles` (or it is empty).
    pub fn title_matches(&self, title: &str) -> bool {
        self.title_regexes.is_empty() || self.title_regexes.iter().any(|r| r.is_match(title))
    }
}

/// `on.issues`: which issue events start the workflow.
#[derive(Debug, Clone, Serialize)]
pub struct IssuesTrigger {
    /// Accepted actions (default: `opened`).
    pub actions: Vec<String>,
    /// Label filter on the issue's labels.
    pub labels: LabelFilter,
    /// Title regexes (empty: any).
    pub titles: Vec<String>,
    /// Also start when the sender is a bot.
    pub bots: bool,
    /// `untrusted: true`: issues by authors who are not the repository's
    /// owner, members or collaborators start at once instead of waiting for
    /// a maintainer's `/approve`.
    pub untrusted: bool,
    #[serde(skip)]
    pub(crate) title_regexes: Vec<regex::Regex>,
}

impl IssuesTrigger {
    /// True when the title matches one of `titles` (or it is empty).
    pub fn title_matches(&self, title: &str) -> bool {
        self.title_regexes.is_empty() || self.title_regexes.iter().any(|r| r.is_match(title))
    }
}

/// `on.issue_comment`: the workflow starts on a `/run <command>` comment.
#[derive(Debug, Clone, Serialize)]
pub struct CommentTrigger {
    /// The word after `/run` (default: the workflow's name).
    pub command: String,
    /// Accept the command on pull requests.
    pub pull_requests: bool,
    /// Accept the command on issues.
    pub issues: bool,
}

/// `on.task`: the workflow is the one for these task types, started when an
/// explicit signal (label, branch, title prefix) selects one of them.
#[derive(Debug, Clone, Serialize)]
pub struct TaskTrigger {
    /// Task types this workflow handles.
    pub types: Vec<TaskType>,
    /// `pull_request` and/or `issues` (default both).
    pub events: Vec<String>,
    /// Also for draft PRs.
    pub drafts: bool,
    /// Also for fork PRs.
    pub forks: bool,
    /// Also when the sender is a bot.
    pub bots: bool,
    /// Issues by authors who are not owners, members or collaborators start
    /// at once instead of waiting for `/approve`.
    pub untrusted: bool,
}

/// A test report a step writes (`reports:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestReport {
    /// `junit` (JUnit XML) or `sarif` (SARIF 2.1.0).
    pub format: String,
    /// A glob relative to the workspace, e.g. `target/**/junit.xml`.
    pub glob: String,
}

/// Everything that can start a workflow.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Triggers {
    /// `on.pull_request`.
    pub pull_request: Option<PullRequestTrigger>,
    /// `on.issues`.
    pub issues: Option<IssuesTrigger>,
    /// `on.issue_comment`.
    pub issue_comment: Option<CommentTrigger>,
    /// `on.task`.
    pub task: Option<TaskTrigger>,
    /// `on.manual`: no event starts it; the operator API, `taskmaster run`
    /// or the service itself (the insights report) does.
    pub manual: bool,
}

/// `concurrency:`: at most one run per group; the group is a template.
#[derive(Debug, Clone, Serialize)]
pub struct Concurrency {
    /// A minijinja template rendered against the run's [`PromptContext`], e.g.
    /// `pr-{{ repository }}-{{ pr.number }}`.
    pub group: String,
    /// A new run in the group cancels the one in progress (e.g. a new push cancels the old SHA's run).
    pub cancel_in_progress: bool,
}

/// A declared input: a setting the operator provides (e.g. the deploy command).
#[derive(Debug, Clone, Serialize)]
pub struct Input {
    /// The name, read as `inputs.<name>` in templates and conditions.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The value until configured (often empty, which disables the steps that need it).
    pub default: String,
}

/// One step of a workflow, checked.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The step id (the key under `steps:`).
    pub id: String,
    /// Display name (default: the id).
    pub name: String,
    /// The agent's configured name.
    pub agent: String,
    /// Agents tried in order when `agent` is unavailable.
    pub fallback: Vec<String>,
    /// The prompt template (source); render with [`WorkflowSet::render_prompt`].
    pub prompt: Option<String>,
    /// Agent-specific inputs (for `command`: `run`, a program and arguments).
    /// String values are templates; render with [`WorkflowSet::render_with`].
    pub with: BTreeMap<String, serde_json::Value>,
    /// Steps that must finish first.
    pub needs: Vec<String>,
    /// When to run (default: `success()`).
    #[serde(serialize_with = "condition_source")]
    pub condition: Condition,
    /// A failure of this step does not fail the run (an optional stage).
    pub continue_on_error: bool,
    /// `validation:`: the step is a validation of this kind (a code review,
    /// tests, a security audit); when it ends, its verdict and output are
    /// stored as a validation (`GET /api/validations`).
    pub validation: Option<crate::store::ValidationKind>,
    /// `changes: true` (on the step or its workflow): the step may change
    /// files in the run's workspace. Two such steps of one run never run at
    /// once; steps without it may run beside each other.
    pub changes: bool,
    /// `pull_request: true`: the step's output is the title (its first line)
    /// and description of the pull request the run's change is proposed in.
    pub pull_request: bool,
    /// `reports: [junit: "<glob>"]`: test reports the step writes in the
    /// workspace, read when it ends (failed tests become findings on lines,
    /// and the step's verdict is `fail` on any failure or a non-zero exit).
    pub reports: Vec<TestReport>,
    /// Time limit per attempt.
    pub timeout: Option<Duration>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Position in a topological order of the DAG (0-based): every step's
    /// needs have a smaller order. Steps are stored in this order.
    pub order: usize,
    /// Length of the longest `needs` chain above this step (0 for roots);
    /// steps of the same depth may run in parallel.
    pub depth: usize,
}

fn condition_source<S: serde::Serializer>(c: &Condition, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.source())
}

/// A checked workflow.
#[derive(Debug, Clone, Serialize)]
pub struct Workflow {
    /// Unique name (`pr_processing`), used by `/run <name>` and in reports.
    pub name: String,
    /// What it does.
    pub description: String,
    /// A disabled workflow is loaded and validated but never started.
    pub enabled: bool,
    /// The file it came from.
    pub file: PathBuf,
    /// What starts it.
    pub triggers: Triggers,
    /// Scheduling priority of its steps.
    pub priority: Priority,
    /// Wall-clock limit for the whole run.
    pub timeout: Option<Duration>,
    /// Steps of one run at once (`None`: no limit beyond the scheduler's).
    pub max_parallel: Option<u32>,
    /// One run per group.
    pub concurrency: Option<Concurrency>,
    /// Declared inputs.
    pub inputs: Vec<Input>,
    /// Steps in topological order.
    pub steps: Vec<Step>,
    /// `allow_workflow_changes: true`: a change may edit
    /// `.github/workflows/` (the App must also hold the `workflows`
    /// permission; it is asked for only then).
    pub allow_workflow_changes: bool,
    /// `adaptive_agents: true`: a step whose agent has been failing it
    /// (recent history, [`crate::insights::decide`]) starts on its first
    /// fallback instead, with the reason in the run's timeline. Off by
    /// default: the agents run in the order written.
    pub adaptive_agents: bool,
    /// `verdicts:`: how its verdicts show on GitHub (the check run's
    /// conclusion for `fail`, review comments and their least severity).
    pub verdicts: crate::verdict::VerdictRules,
    /// A repository's own spend limits (`budgets:` in its
    /// `.github/taskmaster.yml`), which can only tighten the service's;
    /// empty in the service's own set. Runs keep them in their context.
    pub budgets: crate::budget::Budgets,
}

impl Workflow {
    /// Whether some step may change files (so the run's change is harvested).
    pub fn changes_files(&self) -> bool {
        self.steps.iter().any(|s| s.changes)
    }

    /// Whether input `name` is used in a command step's `with:` (its
    /// program, arguments or environment): then it runs as a command on the
    /// service's machine, and setting it is an admin's decision.
    pub fn input_reaches_a_command(&self, name: &str) -> bool {
        let needle = regex::Regex::new(&format!(r"inputs\s*\.\s*{}\b", regex::escape(name)))
            .expect("a valid pattern");
        // A command step is the one whose `with:` names a program (`run:`
        // or `command:`, keys only command agents accept).
        self.steps
            .iter()
            .filter(|s| s.with.contains_key("run") || s.with.contains_key("command"))
            .any(|s| s.with.values().any(|v| needle.is_match(&v.to_string())))
    }

    /// The step whose output is the pull request's text, if one says so.
    pub fn pull_request_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.pull_request)
    }
}

impl Workflow {
    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Steps with no `needs`: where a run starts.
    pub fn roots(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.needs.is_empty())
    }

    /// Steps that list `id` in their `needs`.
    pub fn dependents<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Step> + 'a {
        self.steps
            .iter()
            .filter(move |s| s.needs.iter().any(|n| n == id))
    }

    /// Input values with defaults applied over `configured`.
    pub fn input_values(&self, configured: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        self.inputs
            .iter()
            .map(|i| {
                let v = configured
                    .get(&i.name)
                    .cloned()
                    .unwrap_or_else(|| i.default.clone());
                (i.name.clone(), v)
            })
            .collect()
    }
}

/// A loaded, validated set of workflows with their compiled templates.
#[derive(Debug, Clone)]
pub struct WorkflowSet {
    workflows: Vec<Arc<Workflow>>,
    templates: Arc<minijinja::Environment<'static>>,
}

impl WorkflowSet {
    /// Loads every `*.yml` / `*.yaml` file of `dir` (not recursive), validating
    /// agent names against `agents` (see [`DEFAULT_AGENTS`]).
    ///
    /// # Errors
    /// Every problem in every file, with positions; an unreadable directory or
    /// file is reported as an error at line 0.
    pub fn load_dir(dir: &Path, agents: &[&str]) -> Result<WorkflowSet, ValidationErrors> {
        Self::load_dir_for(dir, agents, None)
    }

    /// [`WorkflowSet::load_dir`], also checking each step's `with:` keys
    /// against what its agents' kinds read (`kinds`: agent name → kind; an
    /// agent missing from it is checked against every kind's keys).
    ///
    /// # Errors
    /// As [`WorkflowSet::load_dir`].
    pub fn load_dir_for(
        dir: &Path,
        agents: &[&str],
        kinds: Option<&HashMap<String, crate::agent::AgentKind>>,
    ) -> Result<WorkflowSet, ValidationErrors> {
        let mut sources = Vec::new();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return Err(ValidationErrors(vec![ValidationError {
                    file: dir.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "cannot read the workflow directory: {e}; pass the folder holding the \
workflow `.yml` files"
                    ),
                }]));
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            .collect();
        paths.sort();
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => sources.push((path, text)),
                Err(e) => errors.push(ValidationError {
                    file: path,
                    line: 0,
                    column: 0,
                    message: format!("cannot read the file: {e}"),
                }),
            }
        }
        if sources.is_empty() && errors.is_empty() {
            errors.push(ValidationError {
                file: dir.to_owned(),
                line: 0,
                column: 0,
                message: "no workflow files (`*.yml`) in this directory".to_owned(),
            });
        }
        match validate::build_set(sources, agents, kinds) {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(ValidationErrors(errors)),
            Err(ValidationErrors(more)) => {
                errors.extend(more);
                Err(ValidationErrors(errors))
            }
        }
    }

    /// Validates workflows given as `(file name, YAML text)` pairs (for tests
    /// and for definitions read from elsewhere, such as a repository).
    ///
    /// # Errors
    /// Every problem found, sorted by file, line and column.
    pub fn from_sources(
        sources: Vec<(PathBuf, String)>,
        agents: &[&str],
    ) -> Result<WorkflowSet, ValidationErrors> {
        validate::build_set(sources, agents, None)
    }

    /// This set with some workflows replaced by changed copies of the same
    /// name (a repository's overrides); prompts keep their templates.
    pub fn with_replaced(&self, replaced: Vec<Workflow>) -> WorkflowSet {
        let mut workflows = self.workflows.clone();
        for wf in replaced {
            if let Some(slot) = workflows.iter_mut().find(|w| w.name == wf.name) {
                *slot = Arc::new(wf);
            }
        }
        WorkflowSet {
            workflows,
            templates: self.templates.clone(),
        }
    }

    /// The workflow with this name.
    pub fn get(&self, name: &str) -> Option<&Workflow> {
        self.workflows
            .binary_search_by(|w| w.name.as_str().cmp(name))
            .ok()
            .map(|i| &*self.workflows[i])
    }

    /// The workflow with this name, shared (for runs that outlive a reload).
    pub fn get_arc(&self, name: &str) -> Option<Arc<Workflow>> {
        self.workflows
            .binary_search_by(|w| w.name.as_str().cmp(name))
            .ok()
            .map(|i| self.workflows[i].clone())
    }

    /// All workflows, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Workflow> {
        self.workflows.iter().map(|w| &**w)
    }

    /// Number of workflows.
    pub fn len(&self) -> usize {
        self.workflows.len()
    }

    /// True when the set holds no workflow.
    pub fn is_empty(&self) -> bool {
        self.workflows.is_empty()
    }

    /// Renders a step's prompt. Untrusted text in `ctx` is inserted as data
    /// only (see [`template`]).
    ///
    /// # Errors
    /// [`RenderError::NoSuchStep`] for an unknown workflow or step, or one
    /// without a prompt; [`RenderError::Template`] when rendering fails.
    pub fn render_prompt(
        &self,
        workflow: &str,
        step: &str,
        ctx: &PromptContext,
    ) -> Result<String, RenderError> {
        let name = template::prompt_name(workflow, step);
        template::render(&self.templates, &name, ctx, true)
    }

    /// Renders a step's `with` inputs: every string (also inside lists) is a template.
    ///
    /// # Errors
    /// As [`WorkflowSet::render_prompt`].
    pub fn render_with(
        &self,
        workflow: &str,
        step: &str,
        ctx: &PromptContext,
    ) -> Result<BTreeMap<String, serde_json::Value>, RenderError> {
        let wf = self.get(workflow).ok_or_else(|| RenderError::NoSuchStep {
            workflow: workflow.to_owned(),
            step: step.to_owned(),
        })?;
        let st = wf.step(step).ok_or_else(|| RenderError::NoSuchStep {
            workflow: workflow.to_owned(),
            step: step.to_owned(),
        })?;
        template::render_with_values(&self.templates, workflow, st, ctx)
    }

    /// Renders the workflow's concurrency group; `None` without `concurrency:`.
    ///
    /// # Errors
    /// As [`WorkflowSet::render_prompt`].
    pub fn render_concurrency_group(
        &self,
        workflow: &str,
        ctx: &PromptContext,
    ) -> Option<Result<String, RenderError>> {
        let wf = self.get(workflow)?;
        wf.concurrency.as_ref()?;
        let name = template::concurrency_name(workflow);
        Some(template::render(&self.templates, &name, ctx, false))
    }
}
