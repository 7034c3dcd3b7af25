//! From parsed files to a checked [`WorkflowSet`]: every semantic check, the
//! DAG (petgraph) and template compilation, collecting *all* errors.
//!
//! Positions: serde-saphyr gives each [`Spanned`] value the line and column
//! (1-based, in characters) where its node starts. For an error *inside* a
//! value (a bad token in an `if:` condition, a template syntax error) the
//! offset within the value is mapped back to the file: past the opening quote
//! of a quoted scalar, or onto the right line and indentation of a `|` / `>`
//! block scalar.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use regex::Regex;
use serde_saphyr::{DuplicateKeyPolicy, Location, Spanned};

use super::expr::Condition;
use super::schema::{OrderedMap, RawStep, RawWorkflow, StringList};
use super::template::{self, new_environment};
use super::*;
use minijinja::Environment;

/// `pull_request` actions GitHub sends (webhook docs, "pull_request").
const PULL_REQUEST_ACTIONS: &[&str] = &[
    "assigned",
    "auto_merge_disabled",
    "auto_merge_enabled",
    "closed",
    "converted_to_draft",
    "demilestoned",
    "dequeued",
    "edited",
    "enqueued",
    "labeled",
    "locked",
    "milestoned",
    "opened",
    "ready_for_review",
    "reopened",
    "review_request_removed",
    "review_requested",
    "synchronize",
    "unassigned",
    "unlabeled",
    "unlocked",
];

/// `issues` actions GitHub sends (webhook docs, "issues").
const ISSUES_ACTIONS: &[&str] = &[
    "assigned",
    "closed",
    "deleted",
    "demilestoned",
    "edited",
    "labeled",
    "locked",
    "milestoned",
    "opened",
    "pinned",
    "reopened",
    "transferred",
    "typed",
    "unassigned",
    "unlabeled",
    "unlocked",
    "unpinned",
    "untyped",
];

/// Default `on.pull_request.actions`.
const DEFAULT_PR_ACTIONS: &[&str] = &["opened", "reopened", "synchronize", "ready_for_review"];

/// Roots an `if:` condition may read.
const CONDITION_ROOTS: &[&str] = &[
    "steps",
    "task",
    "event",
    "pr",
    "issue",
    "inputs",
    "repository",
];

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]*$").expect("valid regex"));

/// Collects errors for one file.
struct FileCheck<'a> {
    file: PathBuf,
    text: &'a str,
    errors: Vec<ValidationError>,
}

impl FileCheck<'_> {
    fn err_at(&mut self, line: u64, column: u64, message: impl Into<String>) {
        self.errors.push(ValidationError {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        });
    }

    fn err<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        let (l, c) = pos(&at.referenced);
        self.err_at(l, c, message);
    }

    /// An error at byte `offset` inside the string value `at`.
    fn err_inside(&mut self, at: &Spanned<String>, offset: usize, message: impl Into<String>) {
        let (l, c) = self.position_inside(&at.referenced, &at.value, offset);
        self.err_at(l, c, message);
    }

    /// Maps a byte offset inside a scalar's value to a file line and column.
    fn position_inside(&self, loc: &Location, value: &str, offset: usize) -> (u64, u64) {
        let (line, col) = pos(loc);
        let Some(src_line) = self.text.lines().nth(line.saturating_sub(1) as usize) else {
            return (line, col);
        };
        let start: String = src_line
            .chars()
            .skip(col.saturating_sub(1) as usize)
            .take(1)
            .collect();
        let offset = offset.min(value.len());
        let before = &value[..offset];
        let prev = self
            .text
            .lines()
            .nth(line.saturating_sub(2) as usize)
            .filter(|_| line >= 2)
            .unwrap_or("");
        let is_block = BLOCK_INDICATOR.is_match(prev)
            && src_line.len() - src_line.trim_start().len() + 1 == col as usize;
        if is_block {
            return multi_line(line, col, before);
        }
        match start.as_str() {
            "'" | "\"" => (line, col + 1 + before.chars().count() as u64),
            _ => multi_line(line, col, before),
        }
    }
}

/// serde-saphyr places a block scalar (`|`, `>`) at its first content line;
/// every content line starts at that column.
fn multi_line(line: u64, col: u64, before: &str) -> (u64, u64) {
    let line_idx = before.matches('\n').count() as u64;
    let col_in_line = before.rsplit('\n').next().unwrap_or("").chars().count() as u64;
    (line + line_idx, col + col_in_line)
}

static BLOCK_INDICATOR: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[|>][-+1-9]*\s*(?:#.*)?$").expect("valid regex"));

fn pos(loc: &Location) -> (u64, u64) {
    (loc.line(), loc.column())
}

static LOCATION_SUFFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r" at line \d+, column \d+$").expect("valid regex"));
static DUP_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?:duplicate mapping key: (?P<a>.+?), set DuplicateKeyPolicy.*|duplicate field `(?P<b>[^`]+)`)$")
        .expect("valid regex")
});

/// Parses one file. Duplicate keys of user-keyed maps pass through to our
/// visitors (reported later with both positions); duplicate struct fields
/// come back from serde without a position, so the text is parsed again with
/// serde-saphyr's own duplicate check, which has one.
fn parse(text: &str) -> Result<RawWorkflow, (u64, u64, String)> {
    let opts = serde_saphyr::options! { duplicate_keys: DuplicateKeyPolicy::PassThrough };
    let err = match serde_saphyr::from_str_with_options::<RawWorkflow>(text, opts) {
        Ok(w) => return Ok(w),
        Err(e) => e,
    };
    let err = if err.location().is_none() || err.to_string().contains("duplicate field") {
        serde_saphyr::from_str::<RawWorkflow>(text)
            .err()
            .unwrap_or(err)
    } else {
        err
    };
    let (line, col) = err.location().map_or((0, 0), |l| pos(&l));
    let raw = err.without_snippet().to_string();
    let msg = LOCATION_SUFFIX.replace(&raw, "").into_owned();
    let msg = match DUP_KEY.captures(&msg) {
        Some(c) => {
            let key = c
                .name("a")
                .or_else(|| c.name("b"))
                .map_or("", |m| m.as_str());
            format!("duplicate key `{key}`: each key may appear only once in a mapping")
        }
        None => msg,
    };
    let msg = if msg.contains("unknown field") {
        format!("{msg} (see workflows/README.md for the schema)")
    } else {
        match msg.as_str() {
            "invalid u32" | "invalid u64" | "invalid i64" => {
                "expected a whole number, e.g. `2`".to_owned()
            }
            "expected mapping start" => "expected a mapping (`key: value` entries)".to_owned(),
            "expected sequence start" => "expected a list, e.g. `[a, b]`".to_owned(),
            "expected string scalar" => "expected a string".to_owned(),
            _ => msg,
        }
    };
    Err((line, col, msg))
}

pub(crate) fn build_set(
    sources: Vec<(PathBuf, String)>,
    agents: &[&str],
    kinds: Option<&HashMap<String, crate::agent::AgentKind>>,
) -> Result<WorkflowSet, ValidationErrors> {
    let mut env = new_environment();
    let mut errors = Vec::new();
    let mut workflows: Vec<Workflow> = Vec::new();
    let mut seen_names: HashMap<String, (PathBuf, u64, u64)> = HashMap::new();
    for (file, text) in &sources {
        let mut check = FileCheck {
            file: file.clone(),
            text,
            errors: Vec::new(),
        };
        match parse(text) {
            Err((l, c, msg)) => check.err_at(l, c, msg),
            Ok(raw) => {
                let name_at = raw.name.referenced;
                if let Some(wf) = check_workflow(&mut check, raw, agents, kinds, &mut env) {
                    if let Some((f, l, c)) = seen_names.get(&wf.name) {
                        let (nl, nc) = pos(&name_at);
                        check.err_at(
                            nl,
                            nc,
                            format!(
                                "a workflow named `{}` is already defined in {}:{l}:{c}; \
workflow names must be unique",
                                wf.name,
                                f.display()
                            ),
                        );
                    } else {
                        let (l, c) = pos(&name_at);
                        seen_names.insert(wf.name.clone(), (file.clone(), l, c));
                        workflows.push(wf);
                    }
                }
            }
        }
        errors.extend(check.errors);
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        return Err(ValidationErrors(errors));
    }
    workflows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(WorkflowSet {
        workflows: workflows.into_iter().map(Arc::new).collect(),
        templates: Arc::new(env),
    })
}

fn check_name(check: &mut FileCheck<'_>, at: &Spanned<String>, what: &str) {
    if !NAME.is_match(&at.value) {
        check.err(
            at,
            format!(
                "{what} `{}` is not a valid name: use lowercase letters, digits, `_` and `-`, \
starting with a letter or digit",
                at.value
            ),
        );
    }
}

/// `with:` keys the `command` agent reads ([`crate::agent::command`]).
pub const COMMAND_WITH_KEYS: &[&str] = &["run", "command", "shell", "policy", "env"];
/// `with:` keys the `cli` agents read ([`crate::agent::cli`]).
pub const CLI_WITH_KEYS: &[&str] = &[
    "model",
    "max_turns",
    "allowed_tools",
    "permission_mode",
    "append_system_prompt",
    "files",
];
/// `with:` keys the Codegen agent reads ([`crate::agent::codegen`]).
pub const CODEGEN_WITH_KEYS: &[&str] = &["repo_id", "model", "agent_type"];
/// The `with:` keys agents of `kind` read (AgentAPI agents read none).
pub fn with_keys(kind: crate::agent::AgentKind) -> &'static [&'static str] {
    use crate::agent::AgentKind;
    match kind {
        AgentKind::Command => COMMAND_WITH_KEYS,
        AgentKind::Cli => CLI_WITH_KEYS,
        AgentKind::Codegen => CODEGEN_WITH_KEYS,
        AgentKind::Agentapi => &[],
    }
}

/// Every key some agent kind reads: a step whose agent's kind is not known
/// here (agents are configured by name) may use any of them.
const ALL_WITH_KEYS: &[&str] = &[
    "run",
    "command",
    "shell",
    "policy",
    "env",
    "model",
    "max_turns",
    "allowed_tools",
    "permission_mode",
    "append_system_prompt",
    "files",
    "repo_id",
    "agent_type",
];

fn check_agent(check: &mut FileCheck<'_>, at: &Spanned<String>, agents: &[&str]) {
    if !agents.contains(&at.value.as_str()) {
        check.err(
            at,
            format!(
                "unknown agent `{}`; configured agents are: {}",
                at.value,
                agents.join(", ")
            ),
        );
    }
}

fn check_duration(check: &mut FileCheck<'_>, at: &Option<Spanned<String>>) -> Option<Duration> {
    let at = at.as_ref()?;
    match parse_duration(&at.value) {
        Ok(d) => Some(d),
        Err(e) => {
            check.err(at, e);
            None
        }
    }
}

fn check_actions(
    check: &mut FileCheck<'_>,
    given: Option<StringList>,
    allowed: &[&str],
    default: &[&str],
    event: &str,
) -> Vec<String> {
    let Some(list) = given else {
        return default.iter().map(|s| (*s).to_owned()).collect();
    };
    let mut out = Vec::new();
    for a in list.0 {
        if allowed.contains(&a.value.as_str()) {
            out.push(a.value);
        } else {
            check.err(
                &a,
                format!(
                    "`{}` is not a `{event}` action; expected one of: {}",
                    a.value,
                    allowed.join(", ")
                ),
            );
        }
    }
    out
}

fn check_globs(
    check: &mut FileCheck<'_>,
    list: StringList,
) -> (Vec<String>, Option<globset::GlobSet>) {
    if list.0.is_empty() {
        return (Vec::new(), None);
    }
    let mut builder = globset::GlobSetBuilder::new();
    let mut out = Vec::new();
    for g in list.0 {
        match globset::GlobBuilder::new(&g.value)
            .literal_separator(false)
            .build()
        {
            Ok(glob) => {
                builder.add(glob);
                out.push(g.value);
            }
            Err(e) => check.err(
                &g,
                format!("`{}` is not a valid branch glob: {}", g.value, e.kind()),
            ),
        }
    }
    (out, builder.build().ok())
}

fn check_regexes(check: &mut FileCheck<'_>, list: StringList) -> (Vec<String>, Vec<Regex>) {
    let mut texts = Vec::new();
    let mut res = Vec::new();
    for r in list.0 {
        match regex::RegexBuilder::new(&r.value)
            .size_limit(1 << 20)
            .build()
        {
            Ok(re) => {
                res.push(re);
                texts.push(r.value);
            }
            Err(e) => {
                let first = e.to_string();
                let last = first.lines().last().unwrap_or("").trim();
                let detail = last.strip_prefix("error: ").unwrap_or(last).to_owned();
                check.err(
                    &r,
                    format!("`{}` is not a valid title regex: {detail}", r.value),
                );
            }
        }
    }
    (texts, res)
}

/// Compiles a template into `env` under `name`; reports syntax errors and
/// unknown top-level variables at their position in the file.
fn check_template(
    check: &mut FileCheck<'_>,
    env: &mut Environment<'static>,
    name: String,
    at: &Spanned<String>,
    what: &str,
) {
    if let Err(e) = env.add_template_owned(name.clone(), at.value.clone()) {
        let offset = e.range().map(|r| r.start).unwrap_or_else(|| {
            // Fall back to the start of the reported template line.
            let line = e.line().unwrap_or(1).saturating_sub(1);
            at.value
                .split_inclusive('\n')
                .take(line)
                .map(str::len)
                .sum()
        });
        let detail = e.detail().unwrap_or("syntax error");
        check.err_inside(
            at,
            offset,
            format!(
                "{what} does not compile: {detail} ({}); templates use minijinja (Jinja2) syntax",
                e.kind()
            ),
        );
        return;
    }
    for var in template::unknown_roots(env, &name) {
        let offset = find_word(&at.value, &var).unwrap_or(0);
        check.err_inside(
            at,
            offset,
            format!(
                "{what} uses unknown variable `{var}`; templates can read: {}",
                template::TEMPLATE_ROOTS.join(", ")
            ),
        );
    }
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    text.match_indices(word).map(|(i, _)| i).find(|&i| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

fn check_workflow(
    check: &mut FileCheck<'_>,
    raw: RawWorkflow,
    agents: &[&str],
    kinds: Option<&HashMap<String, crate::agent::AgentKind>>,
    env: &mut Environment<'static>,
) -> Option<Workflow> {
    let before = check.errors.len();
    check_name(check, &raw.name, "workflow name");
    let wf_name = raw.name.value.clone();

    // ---- inputs ----
    let mut inputs = Vec::new();
    for dup in &raw.inputs.duplicates {
        check.err(dup, format!("input `{}` is declared twice", dup.value));
    }
    for (name, input) in raw.inputs.entries {
        check_name(check, &name, "input");
        inputs.push(Input {
            name: name.value,
            description: input.description,
            default: input.default,
        });
    }
    let input_names: BTreeSet<&str> = inputs.iter().map(|i| i.name.as_str()).collect();

    // ---- triggers ----
    let on = raw.on;
    let on_at = pos(&on.referenced);
    for key in &on.value.unsupported {
        check.err(
            key,
            format!(
                "taskmaster does not receive `{}` events; a trigger is one of: pull_request, \
issues, issue_comment (a `/run` command), task (a task type), manual (no event)",
                key.value
            ),
        );
    }
    for key in &on.value.duplicates {
        check.err(
            key,
            format!("trigger `{}` is given twice under `on`", key.value),
        );
    }
    let mut triggers = Triggers::default();
    let mut any_trigger = false;
    if on.value.manual.is_some() {
        any_trigger = true;
        triggers.manual = true;
    }
    if let Some((_, t)) = on.value.pull_request {
        any_trigger = true;
        let actions = check_actions(
            check,
            t.actions,
            PULL_REQUEST_ACTIONS,
            DEFAULT_PR_ACTIONS,
            "pull_request",
        );
        let (branches, branch_globs) = check_globs(check, t.branches);
        let (head_branches, head_branch_globs) = check_globs(check, t.head_branches);
        let (titles, title_regexes) = check_regexes(check, t.titles);
        triggers.pull_request = Some(PullRequestTrigger {
            actions,
            branches,
            head_branches,
            labels: LabelFilter {
                any: t.labels.any,
                all: t.labels.all,
                none: t.labels.none,
            },
            titles,
            drafts: t.drafts,
            forks: t.forks,
            bots: t.bots,
            branch_globs,
            head_branch_globs,
            title_regexes,
        });
    }
    if let Some((_, t)) = on.value.issues {
        any_trigger = true;
        let actions = check_actions(check, t.actions, ISSUES_ACTIONS, &["opened"], "issues");
        let (titles, title_regexes) = check_regexes(check, t.titles);
        triggers.issues = Some(IssuesTrigger {
            actions,
            labels: LabelFilter {
                any: t.labels.any,
                all: t.labels.all,
                none: t.labels.none,
            },
            titles,
            bots: t.bots,
            untrusted: t.untrusted,
            title_regexes,
        });
    }
    if let Some((_, t)) = on.value.issue_comment {
        any_trigger = true;
        let command = match t.command {
            Some(c) => {
                check_name(check, &c, "command");
                c.value
            }
            None => wf_name.clone(),
        };
        triggers.issue_comment = Some(CommentTrigger {
            command,
            pull_requests: t.pull_requests,
            issues: t.issues,
        });
    }
    if let Some((key, t)) = on.value.task {
        any_trigger = true;
        if t.types.is_empty() {
            check.err(
                &key,
                "`task` needs `types`: the task types this workflow handles, e.g. `types: [bugfix]`",
            );
        }
        // Issues only unless asked: code is written when someone asks for
        // it, never because of how a pull request's title starts.
        let events = check_actions(
            check,
            t.events,
            &["pull_request", "issues"],
            &["issues"],
            "task",
        );
        triggers.task = Some(TaskTrigger {
            types: t.types,
            events,
            drafts: t.drafts,
            forks: t.forks,
            bots: t.bots,
            untrusted: t.untrusted,
        });
    }
    if !any_trigger && on.value.unsupported.is_empty() {
        check.err_at(
            on_at.0,
            on_at.1,
            "`on` has no trigger: add pull_request, issues, issue_comment or task \
             (or `manual: true` for a workflow only the API, `taskmaster run` or the service starts)",
        );
    }

    // ---- run-level settings ----
    let timeout = check_duration(check, &raw.timeout);
    let max_parallel = raw.max_parallel.as_ref().map(|m| {
        if m.value == 0 {
            check.err(m, "`max_parallel` must be at least 1");
        }
        m.value
    });
    let concurrency = raw.concurrency.map(|c| {
        check_template(
            check,
            env,
            template::concurrency_name(&wf_name),
            &c.group,
            "`concurrency.group`",
        );
        Concurrency {
            group: c.group.value,
            cancel_in_progress: c.cancel_in_progress,
        }
    });

    // ---- steps ----
    let workflow_changes = raw.changes;
    let allow_workflow_changes = raw.allow_workflow_changes;
    let adaptive_agents = raw.adaptive_agents;
    let verdicts = raw.verdicts;
    let steps_at = raw.steps;
    let raw_steps: OrderedMap<RawStep> = steps_at.value;
    if raw_steps.entries.is_empty() && raw_steps.duplicates.is_empty() {
        check.err_at(
            steps_at.referenced.line(),
            steps_at.referenced.column(),
            "`steps` is empty: a workflow needs at least one step",
        );
    }
    for dup in &raw_steps.duplicates {
        let first = raw_steps
            .entries
            .iter()
            .find(|(k, _)| k.value == dup.value)
            .map(|(k, _)| pos(&k.referenced))
            .unwrap_or((0, 0));
        check.err(
            dup,
            format!(
                "duplicate step id `{}`: already defined at line {}, column {}; give each step a \
unique id",
                dup.value, first.0, first.1
            ),
        );
    }
    let index: HashMap<&str, usize> = raw_steps
        .entries
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.value.as_str(), i))
        .collect();
    let all_ids: Vec<&str> = raw_steps
        .entries
        .iter()
        .map(|(k, _)| k.value.as_str())
        .collect();

    // `pull_request: true`: one step at most, in a workflow that changes files.
    let pr_steps: Vec<&Spanned<String>> = raw_steps
        .entries
        .iter()
        .filter(|(_, s)| s.pull_request)
        .map(|(k, _)| k)
        .collect();
    if let [_, second, ..] = pr_steps.as_slice() {
        check.err(
            second,
            format!(
                "`pull_request: true` is also set on step `{}`: one step's output is the pull \
request's text; keep it on one",
                pr_steps[0].value
            ),
        );
    }
    let any_changes = workflow_changes || raw_steps.entries.iter().any(|(_, s)| s.changes);
    if let (Some(first), false) = (pr_steps.first(), any_changes) {
        check.err(
            first,
            "`pull_request: true` needs a change to propose: give the step that edits files \
`changes: true`",
        );
    }

    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..raw_steps.entries.len())
        .map(|i| graph.add_node(i))
        .collect();
    let mut edge_at: HashMap<(usize, usize), Spanned<String>> = HashMap::new();
    let mut needs_of: Vec<Vec<usize>> = vec![Vec::new(); raw_steps.entries.len()];

    for (i, (id, step)) in raw_steps.entries.iter().enumerate() {
        check_name(check, id, "step id");
        check_agent(check, &step.agent, agents);
        for f in &step.fallback.0 {
            check_agent(check, f, agents);
        }
        for need in &step.needs.0 {
            match index.get(need.value.as_str()) {
                Some(&j) => {
                    if !needs_of[i].contains(&j) {
                        needs_of[i].push(j);
                        // Edge need -> step: the need runs first.
                        graph.add_edge(nodes[j], nodes[i], ());
                        edge_at.insert((i, j), need.clone());
                    }
                }
                None => check.err(
                    need,
                    format!(
                        "`needs` names unknown step `{}`; steps in this workflow: {}",
                        need.value,
                        all_ids.join(", ")
                    ),
                ),
            }
        }
    }

    // Cycles: each strongly connected component with more than one step, or a
    // step that needs itself, is one cycle to report.
    let mut acyclic = true;
    for scc in tarjan_scc(&graph) {
        let members: BTreeSet<usize> = scc.iter().map(|n| graph[*n]).collect();
        let first = *members.iter().next().expect("non-empty scc");
        let self_loop = needs_of[first].contains(&first);
        if members.len() < 2 && !self_loop {
            continue;
        }
        acyclic = false;
        let cycle = find_cycle(first, &needs_of, &members);
        let names: Vec<&str> = cycle.iter().map(|&i| all_ids[i]).collect();
        let at = edge_at
            .get(&(cycle[0], cycle[1]))
            .cloned()
            .expect("cycle edges were recorded");
        check.err(
            &at,
            format!(
                "dependency cycle: {} (each step needs the next); remove one of these `needs`",
                names.join(" -> ")
            ),
        );
    }

    // Ancestors (for conditions that read `steps.<id>`), once acyclic.
    let ancestors: Vec<BTreeSet<usize>> = (0..needs_of.len())
        .map(|i| {
            let mut seen = BTreeSet::new();
            if acyclic {
                let mut stack = needs_of[i].clone();
                while let Some(n) = stack.pop() {
                    if seen.insert(n) {
                        stack.extend(needs_of[n].iter().copied());
                    }
                }
            }
            seen
        })
        .collect();

    let mut steps = Vec::new();
    for (i, (id, step)) in raw_steps.entries.iter().enumerate() {
        let what = format!("the prompt of step `{}`", id.value);
        // A step that names a program (`with.run`) runs a command, whatever
        // its agent is called (operators may configure several command
        // agents); every other step needs a prompt.
        let runs_a_program = step.with.entries.iter().any(|(k, _)| k.value == "run");
        match &step.prompt {
            Some(p) => check_template(
                check,
                env,
                template::prompt_name(&wf_name, &id.value),
                p,
                &what,
            ),
            None if step.agent.value != COMMAND_AGENT && !runs_a_program => check.err(
                &step.agent,
                format!(
                    "step `{}` uses agent `{}` but has no `prompt`: tell the agent what to do \
(or give `with.run` if it is a command agent)",
                    id.value, step.agent.value
                ),
            ),
            None => {}
        }
        if step.agent.value == COMMAND_AGENT && !runs_a_program {
            check.err(
                &step.agent,
                format!(
                    "step `{}` uses the `command` agent but has no `with.run` (the program and \
its arguments, e.g. `run: [make, test]`)",
                    id.value
                ),
            );
        }
        for dup in &step.with.duplicates {
            check.err(dup, format!("`with.{}` is given twice", dup.value));
        }
        let mut with = BTreeMap::new();
        for (k, v) in &step.with.entries {
            // The keys the step's agents read: every kind's when a kind is
            // not known here (validation by agent names only).
            let chain_kinds: Option<Vec<crate::agent::AgentKind>> = kinds.and_then(|k| {
                std::iter::once(&step.agent.value)
                    .chain(step.fallback.0.iter().map(|f| &f.value))
                    .map(|name| k.get(name.as_str()).copied())
                    .collect()
            });
            let chain_keys: Vec<&str> = chain_kinds
                .iter()
                .flatten()
                .flat_map(|kind| with_keys(*kind).iter().copied())
                .collect();
            let known: &[&str] = if runs_a_program || step.agent.value == COMMAND_AGENT {
                COMMAND_WITH_KEYS
            } else if chain_kinds.is_some() {
                &chain_keys
            } else {
                ALL_WITH_KEYS
            };
            if !known.contains(&k.value.as_str()) {
                let hint = if k.value == "checkout" {
                    " (every run works on a checkout of its commit already: the step's working \
directory is the run's workspace, `workspace.path`)"
                        .to_owned()
                } else {
                    String::new()
                };
                check.err(
                    k,
                    format!(
                        "unknown key `with.{}` for step `{}`{hint}; {}",
                        k.value,
                        id.value,
                        if known == COMMAND_WITH_KEYS {
                            format!("a command step reads {}", COMMAND_WITH_KEYS.join(", "))
                        } else if chain_kinds.is_some() {
                            if known.is_empty() {
                                format!(
                                    "agent `{}` ({}) reads no `with:` keys",
                                    step.agent.value,
                                    chain_kinds
                                        .iter()
                                        .flatten()
                                        .map(|k| k.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            } else {
                                format!("the step's agents read {}", known.join(", "))
                            }
                        } else {
                            format!(
                                "agents read: command {}; cli {}; codegen {}",
                                COMMAND_WITH_KEYS.join(", "),
                                CLI_WITH_KEYS.join(", "),
                                CODEGEN_WITH_KEYS.join(", ")
                            )
                        }
                    ),
                );
            }
            compile_with_value(check, env, &wf_name, &id.value, &k.value, v, &v.value);
            with.insert(k.value.clone(), v.value.clone());
        }

        let condition = match &step.condition {
            None => Condition::default(),
            Some(c) => match Condition::parse(&c.value) {
                Err(e) => {
                    check.err_inside(
                        c,
                        e.offset,
                        format!("the `if` condition does not parse: {}", e.message),
                    );
                    Condition::default()
                }
                Ok(cond) => {
                    check_condition_paths(check, c, &cond, &index, &ancestors[i], i, &input_names);
                    cond
                }
            },
        };
        let step_timeout = check_duration(check, &step.timeout);
        let retry = match &step.retry {
            None => RetryPolicy::default(),
            Some(r) => {
                let mut policy = RetryPolicy {
                    max_attempts: r.max_attempts.value,
                    backoff: r.backoff,
                    ..RetryPolicy::default()
                };
                if !(1..=20).contains(&r.max_attempts.value) {
                    check.err(
                        &r.max_attempts,
                        format!(
                            "`max_attempts` is {}; expected 1 to 20 (attempts in total, \
including the first)",
                            r.max_attempts.value
                        ),
                    );
                }
                if let Some(d) = check_duration(check, &r.initial_delay) {
                    policy.initial_delay = d;
                }
                if let Some(d) = check_duration(check, &r.max_delay) {
                    policy.max_delay = d;
                }
                if policy.initial_delay > policy.max_delay
                    && let Some(at) = r.max_delay.as_ref().or(r.initial_delay.as_ref())
                {
                    check.err(
                        at,
                        format!(
                            "`max_delay` ({}) is shorter than `initial_delay` ({})",
                            format_duration(policy.max_delay),
                            format_duration(policy.initial_delay)
                        ),
                    );
                }
                policy
            }
        };
        let validation = match &step.validation {
            None => None,
            Some(v) => match crate::store::ValidationKind::parse(&v.value) {
                Some(kind) => Some(kind),
                None => {
                    check.err(
                        v,
                        format!(
                            "`{}` is not a validation kind (use code_review, tests, security_audit or other)",
                            v.value
                        ),
                    );
                    None
                }
            },
        };
        steps.push(Step {
            id: id.value.clone(),
            name: step.name.clone().unwrap_or_else(|| id.value.clone()),
            agent: step.agent.value.clone(),
            fallback: step.fallback.0.iter().map(|f| f.value.clone()).collect(),
            prompt: step.prompt.as_ref().map(|p| p.value.clone()),
            with,
            needs: needs_of[i].iter().map(|&j| all_ids[j].to_owned()).collect(),
            condition,
            continue_on_error: step.continue_on_error,
            validation,
            changes: step.changes || workflow_changes,
            pull_request: step.pull_request,
            reports: step
                .reports
                .iter()
                .flat_map(|m| m.iter())
                .filter_map(|(format, glob)| {
                    if format != "junit" && format != "sarif" {
                        check.err(
                            glob,
                            format!(
                                "`reports` takes `junit: <glob>` (JUnit XML) or `sarif: <glob>` \
(SARIF 2.1.0); `{format}` is not a report format taskmaster reads"
                            ),
                        );
                        return None;
                    }
                    let g = &glob.value;
                    if g.is_empty()
                        || g.starts_with('/')
                        || g.split('/').any(|s| s == "..")
                        || globset::Glob::new(g).is_err()
                    {
                        check.err(
                            glob,
                            format!(
                                "`{g}` is not a glob inside the workspace (relative, no `..`), \
e.g. `target/**/junit.xml`"
                            ),
                        );
                        return None;
                    }
                    Some(super::TestReport {
                        format: format.clone(),
                        glob: g.clone(),
                    })
                })
                .collect(),
            timeout: step_timeout,
            retry,
            order: 0,
            depth: 0,
        });
    }

    if check.errors.len() > before {
        return None;
    }

    // Topological order (petgraph), then depth = longest chain of needs.
    let order = toposort(&graph, None).expect("cycles were reported above");
    let mut ordered: Vec<Step> = Vec::with_capacity(steps.len());
    let mut depth = vec![0usize; steps.len()];
    for (pos, node) in order.iter().enumerate() {
        let i = graph[*node];
        depth[i] = needs_of[i].iter().map(|&j| depth[j] + 1).max().unwrap_or(0);
        let mut s = steps[i].clone();
        s.order = pos;
        s.depth = depth[i];
        ordered.push(s);
    }

    Some(Workflow {
        name: wf_name,
        description: raw.description.unwrap_or_default().trim().to_owned(),
        enabled: raw.enabled,
        file: check.file.clone(),
        triggers,
        priority: raw.priority.unwrap_or_default(),
        timeout,
        max_parallel,
        concurrency,
        inputs,
        steps: ordered,
        allow_workflow_changes,
        adaptive_agents,
        verdicts,
        budgets: crate::budget::Budgets::default(),
    })
}

/// Follows `needs` edges inside `members` from `start` back to `start`;
/// returns the cycle with `start` at both ends.
fn find_cycle(start: usize, needs_of: &[Vec<usize>], members: &BTreeSet<usize>) -> Vec<usize> {
    // Iterative DFS keeping the path.
    let mut path = vec![start];
    let mut next_child = vec![0usize];
    let mut visited = BTreeSet::from([start]);
    while let Some(&node) = path.last() {
        let k = next_child.last_mut().expect("parallel stacks");
        let children: Vec<usize> = needs_of[node]
            .iter()
            .copied()
            .filter(|c| members.contains(c))
            .collect();
        if *k >= children.len() {
            path.pop();
            next_child.pop();
            continue;
        }
        let child = children[*k];
        *k += 1;
        if child == start {
            path.push(start);
            return path;
        }
        if visited.insert(child) {
            path.push(child);
            next_child.push(0);
        }
    }
    vec![start, start]
}

fn compile_with_value(
    check: &mut FileCheck<'_>,
    env: &mut Environment<'static>,
    workflow: &str,
    step: &str,
    path: &str,
    at: &Spanned<serde_json::Value>,
    v: &serde_json::Value,
) {
    match v {
        serde_json::Value::String(s) => {
            let spanned = Spanned::new(s.clone(), at.referenced, at.defined);
            check_template(
                check,
                env,
                template::with_name(workflow, step, path),
                &spanned,
                &format!("`with.{}` of step `{step}`", path.replace('/', ".")),
            );
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                compile_with_value(check, env, workflow, step, &format!("{path}/{i}"), at, item);
            }
        }
        _ => {}
    }
}

fn check_condition_paths(
    check: &mut FileCheck<'_>,
    at: &Spanned<String>,
    cond: &Condition,
    index: &HashMap<&str, usize>,
    ancestors: &BTreeSet<usize>,
    me: usize,
    inputs: &BTreeSet<&str>,
) {
    for (parts, offset) in cond.paths() {
        let root = parts[0].as_str();
        if !CONDITION_ROOTS.contains(&root) {
            check.err_inside(
                at,
                offset,
                format!(
                    "the `if` condition reads `{}`, which does not exist; conditions can read: {}",
                    parts.join("."),
                    CONDITION_ROOTS.join(", ")
                ),
            );
            continue;
        }
        match root {
            "steps" => {
                let Some(id) = parts.get(1) else {
                    check.err_inside(
                        at,
                        offset,
                        "`steps` needs a step id and a field, e.g. `steps.build.outcome`",
                    );
                    continue;
                };
                match index.get(id.as_str()) {
                    None => check.err_inside(
                        at,
                        offset,
                        format!("the `if` condition reads unknown step `{id}`"),
                    ),
                    Some(&j) if j == me || !ancestors.contains(&j) => check.err_inside(
                        at,
                        offset,
                        format!(
                            "the `if` condition reads `steps.{id}`, but `{id}` is not in this \
step's `needs` (directly or indirectly), so its outcome is not known yet"
                        ),
                    ),
                    Some(_) => {}
                }
                if let Some(field) = parts.get(2)
                    && field != "outcome"
                    && field != "output"
                    && field != "verdict"
                {
                    check.err_inside(
                        at,
                        offset,
                        format!(
                            "`steps.{id}.{field}` does not exist; a step has `outcome`, `output` and `verdict`"
                        ),
                    );
                }
            }
            "inputs" => {
                if let Some(name) = parts.get(1)
                    && !inputs.contains(name.as_str())
                {
                    check.err_inside(
                        at,
                        offset,
                        format!("the `if` condition reads undeclared input `{name}`; declare it under `inputs:`"),
                    );
                }
            }
            _ => {}
        }
    }
}
