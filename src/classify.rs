//! Task classification: from an issue's or PR's title, body, labels (and
//! branch) to a structured task, the way a maintainer would triage it.
//!
//! Deterministic rules, in a fixed precedence, each decision carrying the
//! evidence that made it, so a run can always say *why* it was treated as a
//! hotfix. Explicit signals beat guesses: a label, then the head branch, then
//! a conventional-commit title prefix decide the task type outright; only when
//! none is present do keywords in the text vote. The [`Classifier`] trait
//! leaves room for an agent-backed classifier later, whose result has the same
//! shape and can be stored with the run and used in prompt templates.
//!
//! All input text is untrusted: it is only matched against, never executed,
//! and extracted acceptance criteria are plain data.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What kind of work a task is. Each type has a workflow of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    /// Urgent fix for something broken in production: fast-tracked.
    Hotfix,
    /// A defect to fix.
    Bugfix,
    /// New behaviour.
    Feature,
    /// Restructuring without behaviour change.
    Refactor,
    /// A spike, prototype or proof of concept.
    Experimental,
    /// Nothing more specific is known.
    Default,
}

impl TaskType {
    /// Every task type, in precedence order (when two explicit signals disagree, the first wins).
    pub const ALL: [TaskType; 6] = [
        TaskType::Hotfix,
        TaskType::Bugfix,
        TaskType::Refactor,
        TaskType::Feature,
        TaskType::Experimental,
        TaskType::Default,
    ];

    /// The lowercase name used in YAML, templates and conditions (`hotfix`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Hotfix => "hotfix",
            TaskType::Bugfix => "bugfix",
            TaskType::Feature => "feature",
            TaskType::Refactor => "refactor",
            TaskType::Experimental => "experimental",
            TaskType::Default => "default",
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent a task is. Ordered: `Low < Medium < High < Critical`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Whenever there is time.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Soon: customers are affected.
    High,
    /// Now: production is down, data or security is at stake.
    Critical,
}

impl Priority {
    /// Its rank as stored in `runs.priority`: 0 (low) to 3 (critical);
    /// higher is served first.
    pub fn rank(self) -> i64 {
        match self {
            Priority::Low => 0,
            Priority::Medium => 1,
            Priority::High => 2,
            Priority::Critical => 3,
        }
    }

    /// The priority of a stored rank; `None` outside 0 to 3.
    pub fn from_rank(rank: i64) -> Option<Self> {
        Some(match rank {
            0 => Priority::Low,
            1 => Priority::Medium,
            2 => Priority::High,
            3 => Priority::Critical,
            _ => return None,
        })
    }

    /// The lowercase name (`low`, `medium`, `high`, `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rough size estimate, for budgeting agent time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Complexity {
    /// A one-line or cosmetic change.
    Small,
    /// A typical change touching a few places.
    Medium,
    /// Many parts, a migration, or a long list of requirements.
    Large,
}

/// Something that makes a change riskier than usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskFactor {
    /// Touches or is caused by production.
    Production,
    /// Security-relevant (vulnerabilities, auth, secrets).
    Security,
    /// Changes stored data or schemas.
    DataMigration,
    /// Breaks an interface users rely on.
    BreakingChange,
    /// Performance-sensitive.
    Performance,
    /// Concurrency (races, deadlocks).
    Concurrency,
    /// Dependency upgrades.
    Dependency,
}

/// Where a task-type decision came from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// A label on the issue or PR (e.g. `hotfix`, `bug`).
    Label,
    /// The PR's head branch (e.g. `hotfix/login`).
    Branch,
    /// A conventional-commit title prefix (e.g. `fix:`).
    TitlePrefix,
    /// Keywords in the title and body.
    Keywords,
    /// Nothing matched.
    Fallback,
}

impl Signal {
    /// True for a label, a branch or a title prefix: something a person chose on purpose.
    pub fn is_explicit(self) -> bool {
        matches!(self, Signal::Label | Signal::Branch | Signal::TitlePrefix)
    }
}

/// One acceptance criterion found in the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Criterion {
    /// The criterion's text, without list markers or checkbox.
    pub text: String,
    /// True when written as a checked checkbox (`- [x] …`).
    pub done: bool,
}

/// Why one decision was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Which field the evidence is for: `task_type`, `priority`, `complexity`,
    /// `acceptance_criteria` or `risk`.
    pub field: String,
    /// A sentence a maintainer can read, quoting what matched.
    pub reason: String,
}

/// The structured task: what the classifier decided, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    /// The task type.
    pub task_type: TaskType,
    /// What decided the task type.
    pub task_type_signal: Signal,
    /// The priority.
    pub priority: Priority,
    /// The size estimate.
    pub complexity: Complexity,
    /// Acceptance criteria, in text order, deduplicated.
    pub acceptance_criteria: Vec<Criterion>,
    /// Risk factors, sorted, deduplicated.
    pub risks: Vec<RiskFactor>,
    /// Evidence for every decision above.
    pub evidence: Vec<Evidence>,
    /// Which classifier produced this (`rules/v1`), for stored runs.
    pub classifier: String,
}

/// What a classifier reads. All text is untrusted user input.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskInput<'a> {
    /// The issue or PR title.
    pub title: &'a str,
    /// The body (markdown); empty when GitHub sent `null`.
    pub body: &'a str,
    /// Label names.
    pub labels: &'a [String],
    /// The PR's head branch, for PRs.
    pub branch: Option<&'a str>,
}

/// Something that turns a [`TaskInput`] into a [`Classification`].
pub trait Classifier: Send + Sync {
    /// Classifies one task. Must not fail: an unknown task is `default`/`medium`.
    fn classify(&self, input: &TaskInput<'_>) -> Classification;
}

/// The deterministic rule-based classifier (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleClassifier;

impl Classifier for RuleClassifier {
    fn classify(&self, input: &TaskInput<'_>) -> Classification {
        classify(input)
    }
}

/// Normalises a label for matching: lowercase, without `type:`, `kind/`, `priority:` … prefixes.
fn normalise_label(label: &str) -> String {
    let l = label.trim().to_lowercase();
    let l = l.trim_start_matches(|c: char| !c.is_alphanumeric()); // emoji prefixes
    for prefix in [
        "type:",
        "type/",
        "kind:",
        "kind/",
        "t-",
        "priority:",
        "priority/",
        "prio:",
        "severity:",
        "severity/",
        "sev:",
    ] {
        if let Some(rest) = l.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
    l.to_owned()
}

fn label_task_type(label: &str) -> Option<TaskType> {
    Some(match normalise_label(label).as_str() {
        "hotfix" | "hot-fix" | "hot fix" => TaskType::Hotfix,
        "bug" | "bugfix" | "bug-fix" | "fix" | "defect" | "regression" => TaskType::Bugfix,
        "feature" | "enhancement" | "feature request" | "feature-request" | "feat" => {
            TaskType::Feature
        }
        "refactor" | "refactoring" | "tech debt" | "tech-debt" | "techdebt" | "cleanup"
        | "clean-up" => TaskType::Refactor,
        "experimental" | "experiment" | "spike" | "poc" | "prototype" => TaskType::Experimental,
        _ => return None,
    })
}

/// The task type a label selects (`hotfix`, `bug`, `enhancement`, …), if any.
/// Used by the router to decide whether a `labeled` event is a task signal.
pub fn task_type_for_label(label: &str) -> Option<TaskType> {
    label_task_type(label)
}

fn label_priority(label: &str) -> Option<Priority> {
    Some(match normalise_label(label).as_str() {
        "critical" | "p0" | "sev1" | "sev-1" | "s1" | "blocker" | "urgent" | "emergency" => {
            Priority::Critical
        }
        "high" | "p1" | "sev2" | "sev-2" | "important" => Priority::High,
        "medium" | "p2" | "sev3" | "normal" => Priority::Medium,
        "low" | "p3" | "p4" | "sev4" | "nice to have" | "nice-to-have" | "minor" => Priority::Low,
        _ => return None,
    })
}

/// The task type a head branch selects (`hotfix/*`, `fix/*`, `feat/*`, …).
pub fn task_type_for_branch(branch: &str) -> Option<(TaskType, &'static str)> {
    let b = branch.to_lowercase();
    let table: [(&str, TaskType); 11] = [
        ("hotfix/", TaskType::Hotfix),
        ("hotfix-", TaskType::Hotfix),
        ("bugfix/", TaskType::Bugfix),
        ("fix/", TaskType::Bugfix),
        ("bug/", TaskType::Bugfix),
        ("feature/", TaskType::Feature),
        ("feat/", TaskType::Feature),
        ("refactor/", TaskType::Refactor),
        ("experiment/", TaskType::Experimental),
        ("experimental/", TaskType::Experimental),
        ("spike/", TaskType::Experimental),
    ];
    table
        .into_iter()
        .find(|(prefix, _)| b.starts_with(prefix))
        .map(|(prefix, t)| (t, prefix))
}

static TITLE_PREFIX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:\[(?P<bracket>[A-Za-z]+)\]|(?P<kind>[A-Za-z]+)(?:\([^)]*\))?(?P<bang>!)?:)")
        .expect("valid regex")
});

/// The task type a conventional-commit title prefix selects (`fix:`, `feat(ui):`,
/// `refactor!:`, `[hotfix]`), with the prefix as written and whether it is
/// marked breaking (`!`). See <https://www.conventionalcommits.org/en/v1.0.0/>.
pub fn task_type_for_title(title: &str) -> Option<(TaskType, String, bool)> {
    let caps = TITLE_PREFIX.captures(title)?;
    let word = caps
        .name("bracket")
        .or_else(|| caps.name("kind"))?
        .as_str()
        .to_lowercase();
    let t = match word.as_str() {
        "hotfix" => TaskType::Hotfix,
        "fix" | "bugfix" | "bug" => TaskType::Bugfix,
        "feat" | "feature" => TaskType::Feature,
        "refactor" => TaskType::Refactor,
        "exp" | "experiment" | "experimental" | "spike" | "poc" => TaskType::Experimental,
        "chore" | "docs" | "style" | "test" | "ci" | "build" | "perf" | "revert" => {
            TaskType::Default
        }
        _ => return None,
    };
    Some((t, caps[0].trim().to_owned(), caps.name("bang").is_some()))
}

/// A keyword rule: a case-insensitive pattern and the phrase shown as evidence.
struct Rule {
    re: Regex,
}

fn words(patterns: &[&str]) -> Rule {
    // Word boundaries for Latin-script words; CJK patterns match as substrings.
    let alts: Vec<String> = patterns
        .iter()
        .map(|p| {
            if p.chars()
                .all(|c| c.is_ascii() || c.is_alphabetic() && !is_cjk(c))
            {
                format!(r"\b{p}\b")
            } else {
                (*p).to_owned()
            }
        })
        .collect();
    Rule {
        re: Regex::new(&format!("(?i)(?:{})", alts.join("|"))).expect("valid keyword regex"),
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xAC00..=0xD7AF)
}

impl Rule {
    /// Distinct matches (lowercased), in order.
    fn matches(&self, text: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.re.find_iter(text) {
            let s = m.as_str().to_lowercase();
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

static HOTFIX_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "hotfix",
        "production (?:is )?down",
        "prod (?:is )?down",
        "outage",
        "site is down",
        "emergency",
        "sev ?1",
        "p0",
        "incident",
    ])
});
static BUG_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "bug",
        "bugs",
        "crash(?:es|ed|ing)?",
        "error",
        "errors",
        "exception",
        "broken",
        "fails?",
        "failing",
        "failure",
        "regression",
        "not working",
        "doesn't work",
        "does not work",
        "panic(?:s|ked)?",
        "fix",
        "wrong",
        "incorrect",
        "500",
        "fehler",
        "absturz",
        "stürzt",
        "erreur",
        "plantage",
        "bogue",
        "falla",
        "erro",
        "ошибка",
        "баг",
        "バグ",
        "エラー",
        "错误",
        "崩溃",
        "缺陷",
    ])
});
static FEATURE_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "feature",
        "add",
        "adds",
        "support",
        "implement",
        "introduce",
        "allow",
        "enable",
        "would be nice",
        "it would be great",
        "new feature",
        "request",
        "as a user",
        "funktion",
        "hinzufügen",
        "fonctionnalité",
        "ajouter",
        "agregar",
        "añadir",
        "新功能",
        "機能",
        "追加",
    ])
});
static REFACTOR_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "refactor(?:ing)?",
        "clean ?up",
        "restructure",
        "simplify",
        "extract",
        "deduplicate",
        "tech(?:nical)? debt",
        "rename",
        "reorgani[sz]e",
        "split (?:up )?(?:the )?(?:module|file|function|class)",
        "move .* into",
        "umbauen",
        "重构",
        "リファクタ",
    ])
});
static EXPERIMENT_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "experiment(?:al)?",
        "prototype",
        "spike",
        "proof of concept",
        "poc",
        "explore",
        "try out",
        "evaluate whether",
        "investigate whether",
    ])
});

static CRITICAL_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "production (?:is )?down",
        "prod (?:is )?down",
        "outage",
        "site is down",
        "data loss",
        "losing data",
        "security vulnerability",
        "cve-\\d{4}-\\d+",
        "sev ?1",
        "p0",
        "emergency",
        "urgent",
        "asap",
        "all users",
        "every user",
        "dringend",
        "urgente",
        "緊急",
        "紧急",
        "срочно",
    ])
});
static HIGH_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "crash(?:es|ed|ing)?",
        "regression",
        "blocker",
        "blocking",
        "customers?",
        "production",
        "prod",
        "security",
        "vulnerability",
        "data corruption",
        "important",
        "high priority",
        "p1",
    ])
});
static LOW_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "typo",
        "typos",
        "nice to have",
        "minor",
        "cosmetic",
        "someday",
        "low priority",
        "when you have time",
        "no rush",
        "spelling",
        "wording",
        "p3",
    ])
});

static RISK_RULES: LazyLock<Vec<(RiskFactor, Rule)>> = LazyLock::new(|| {
    vec![
        (
            RiskFactor::Production,
            words(&[
                "production",
                "prod",
                "live site",
                "outage",
                "customers?",
                "deploy(?:ed|ment)?",
            ]),
        ),
        (
            RiskFactor::Security,
            words(&[
                "security",
                "vulnerabilit(?:y|ies)",
                "cve-\\d{4}-\\d+",
                "xss",
                "csrf",
                "sql injection",
                "injection",
                "auth(?:entication|orization)? bypass",
                "privilege escalation",
                "secrets?",
                "leak(?:s|ed)? (?:the )?(?:token|password|credential)s?",
                "passwords?",
            ]),
        ),
        (
            RiskFactor::DataMigration,
            words(&[
                "migrations?",
                "migrate",
                "schema change",
                "alter table",
                "backfill",
                "data loss",
                "drop (?:the )?(?:table|column)",
            ]),
        ),
        (
            RiskFactor::BreakingChange,
            words(&[
                "breaking change",
                "breaking",
                "backwards?[- ]incompatible",
                "deprecat(?:e|ed|ion)",
                "remove (?:the )?(?:public )?api",
            ]),
        ),
        (
            RiskFactor::Performance,
            words(&[
                "performance",
                "slow(?:er|ness)?",
                "latency",
                "memory leak",
                "timeouts?",
                "cpu",
            ]),
        ),
        (
            RiskFactor::Concurrency,
            words(&[
                "race condition",
                "deadlock",
                "concurren(?:cy|t)",
                "thread[- ]safe(?:ty)?",
            ]),
        ),
        (
            RiskFactor::Dependency,
            words(&[
                "upgrade",
                "bump",
                "dependenc(?:y|ies)",
                "cargo update",
                "npm update",
            ]),
        ),
    ]
});

static LARGE_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "rewrite",
        "architecture",
        "redesign",
        "across (?:the|all|every|multiple)",
        "multiple (?:services|modules|crates|packages|components)",
        "migration",
        "end-to-end",
        "overhaul",
    ])
});
static SMALL_WORDS: LazyLock<Rule> = LazyLock::new(|| {
    words(&[
        "typo",
        "one[- ]line",
        "one[- ]liner",
        "small",
        "simple",
        "trivial",
        "quick",
        "spelling",
        "wording",
        "bump",
    ])
});

/// Classifies a task with the deterministic rules (see the module docs).
pub fn classify(input: &TaskInput<'_>) -> Classification {
    let mut evidence = Vec::new();
    let mut ev = |field: &str, reason: String| {
        evidence.push(Evidence {
            field: field.to_owned(),
            reason,
        })
    };
    let text_for_keywords = strip_code(input.body);
    let title = input.title.trim();

    // ---- task type: label > branch > title prefix > keywords > default ----
    let mut breaking_prefix = false;
    let (task_type, signal) = 'decided: {
        let mut best: Option<(TaskType, &String)> = None;
        for label in input.labels {
            if let Some(t) = label_task_type(label)
                && best.is_none_or(|(b, _)| rank(t) < rank(b))
            {
                best = Some((t, label));
            }
        }
        if let Some((t, label)) = best {
            ev("task_type", format!("label `{label}` selects {t}"));
            break 'decided (t, Signal::Label);
        }
        if let Some(branch) = input.branch
            && let Some((t, prefix)) = task_type_for_branch(branch)
        {
            ev(
                "task_type",
                format!("branch `{branch}` starts with `{prefix}`, which selects {t}"),
            );
            break 'decided (t, Signal::Branch);
        }
        if let Some((t, prefix, bang)) = task_type_for_title(title) {
            breaking_prefix = bang;
            ev(
                "task_type",
                format!("title prefix `{prefix}` (conventional commit) selects {t}"),
            );
            break 'decided (t, Signal::TitlePrefix);
        }
        // Keywords: title counts double.
        let mut scores: Vec<(TaskType, usize, Vec<String>)> = Vec::new();
        for (t, rule) in [
            (TaskType::Hotfix, &*HOTFIX_WORDS),
            (TaskType::Bugfix, &*BUG_WORDS),
            (TaskType::Refactor, &*REFACTOR_WORDS),
            (TaskType::Feature, &*FEATURE_WORDS),
            (TaskType::Experimental, &*EXPERIMENT_WORDS),
        ] {
            let in_title = rule.matches(title);
            let in_body = rule.matches(&text_for_keywords);
            let score = in_title.len() * 2 + in_body.len();
            if score > 0 {
                let mut found = in_title;
                for word in in_body {
                    if !found.contains(&word) {
                        found.push(word);
                    }
                }
                scores.push((t, score, found));
            }
        }
        // A hotfix needs a production/urgency word *and* a defect word.
        let has_bug = scores.iter().any(|(t, _, _)| *t == TaskType::Bugfix);
        scores.retain(|(t, _, _)| *t != TaskType::Hotfix || has_bug);
        if let Some(hot) = scores.iter().find(|(t, _, _)| *t == TaskType::Hotfix) {
            ev(
                "task_type",
                format!(
                    "the text reports a defect and says {}, which makes it a hotfix",
                    quote_list(&hot.2)
                ),
            );
            break 'decided (TaskType::Hotfix, Signal::Keywords);
        }
        scores.sort_by(|a, b| b.1.cmp(&a.1).then(rank(a.0).cmp(&rank(b.0))));
        if let Some((t, score, found)) = scores.into_iter().next() {
            ev(
                "task_type",
                format!(
                    "keywords {} (score {score}, title counts double) suggest {t}",
                    quote_list(&found)
                ),
            );
            break 'decided (t, Signal::Keywords);
        }
        ev(
            "task_type",
            "no label, branch, title prefix or keyword matched: default".to_owned(),
        );
        (TaskType::Default, Signal::Fallback)
    };

    // ---- priority: label > critical/low/high words > type default ----
    let whole = format!("{title}\n{text_for_keywords}");
    let priority = 'decided: {
        let mut best: Option<(Priority, &String)> = None;
        for label in input.labels {
            if let Some(p) = label_priority(label)
                && best.is_none_or(|(b, _)| p > b)
            {
                best = Some((p, label));
            }
        }
        if let Some((p, label)) = best {
            ev("priority", format!("label `{label}` sets priority {p}"));
            break 'decided p;
        }
        let critical = CRITICAL_WORDS.matches(&whole);
        if !critical.is_empty() {
            ev(
                "priority",
                format!("{} make it critical", quote_list(&critical)),
            );
            break 'decided Priority::Critical;
        }
        let high = HIGH_WORDS.matches(&whole);
        let low = LOW_WORDS.matches(&whole);
        if !low.is_empty() && high.is_empty() {
            ev("priority", format!("{} make it low", quote_list(&low)));
            break 'decided Priority::Low;
        }
        if !high.is_empty() {
            ev("priority", format!("{} make it high", quote_list(&high)));
            break 'decided Priority::High;
        }
        let p = match task_type {
            TaskType::Hotfix => Priority::Critical,
            TaskType::Bugfix | TaskType::Feature | TaskType::Default => Priority::Medium,
            TaskType::Refactor | TaskType::Experimental => Priority::Low,
        };
        ev(
            "priority",
            format!("no priority label or urgency words: {p}, the usual for a {task_type}"),
        );
        p
    };
    // A hotfix is never below high, whatever the text says.
    let priority = if task_type == TaskType::Hotfix && priority < Priority::High {
        ev(
            "priority",
            "raised to high: hotfixes are fast-tracked".to_owned(),
        );
        Priority::High
    } else {
        priority
    };

    // ---- acceptance criteria ----
    let acceptance_criteria = extract_criteria(input.body);
    if !acceptance_criteria.is_empty() {
        ev(
            "acceptance_criteria",
            format!(
                "{} criteria from checkbox lists and acceptance-criteria sections",
                acceptance_criteria.len()
            ),
        );
    }

    // ---- risks ----
    let labels_text = input.labels.join("\n");
    let risk_text = format!("{whole}\n{labels_text}");
    let mut risks = Vec::new();
    for (risk, rule) in RISK_RULES.iter() {
        let found = rule.matches(&risk_text);
        if !found.is_empty() {
            risks.push(*risk);
            ev(
                "risk",
                format!("{} point to {}", quote_list(&found), risk_name(*risk)),
            );
        }
    }
    if breaking_prefix && !risks.contains(&RiskFactor::BreakingChange) {
        risks.push(RiskFactor::BreakingChange);
        ev("risk", "the title's `!` marks a breaking change".to_owned());
    }
    if !input.body.is_empty()
        && input.body.contains("BREAKING CHANGE")
        && !risks.contains(&RiskFactor::BreakingChange)
    {
        risks.push(RiskFactor::BreakingChange);
    }
    risks.sort();
    risks.dedup();

    // ---- complexity ----
    let mut score: i32 = 0;
    let body_words = text_for_keywords.split_whitespace().count();
    let mut reasons = Vec::new();
    if body_words > 300 {
        score += 2;
        reasons.push(format!("a long description ({body_words} words)"));
    } else if body_words > 80 {
        score += 1;
        reasons.push(format!("a detailed description ({body_words} words)"));
    }
    if acceptance_criteria.len() >= 6 {
        score += 2;
        reasons.push(format!("{} acceptance criteria", acceptance_criteria.len()));
    } else if acceptance_criteria.len() >= 3 {
        score += 1;
        reasons.push(format!("{} acceptance criteria", acceptance_criteria.len()));
    }
    let large = LARGE_WORDS.matches(&whole);
    if !large.is_empty() {
        score += 2;
        reasons.push(quote_list(&large));
    }
    if risks.contains(&RiskFactor::DataMigration) || risks.contains(&RiskFactor::BreakingChange) {
        score += 1;
        reasons.push("a migration or breaking-change risk".to_owned());
    }
    let small = SMALL_WORDS.matches(&whole);
    if !small.is_empty() {
        score -= 2;
        reasons.push(quote_list(&small));
    }
    let complexity = match score {
        i32::MIN..=-1 => Complexity::Small,
        0..=1 => Complexity::Medium,
        _ => Complexity::Large,
    };
    let complexity = if score == 0 && body_words < 15 && acceptance_criteria.is_empty() {
        reasons.push("a short description".to_owned());
        Complexity::Small
    } else {
        complexity
    };
    ev(
        "complexity",
        if reasons.is_empty() {
            format!("{complexity:?}: nothing suggests more or less").to_lowercase()
        } else {
            format!(
                "{}: {}",
                format!("{complexity:?}").to_lowercase(),
                reasons.join(", ")
            )
        },
    );

    Classification {
        task_type,
        task_type_signal: signal,
        priority,
        complexity,
        acceptance_criteria,
        risks,
        evidence,
        classifier: "rules/v1".to_owned(),
    }
}

fn rank(t: TaskType) -> usize {
    TaskType::ALL
        .iter()
        .position(|x| *x == t)
        .unwrap_or(usize::MAX)
}

fn risk_name(r: RiskFactor) -> &'static str {
    match r {
        RiskFactor::Production => "a production risk",
        RiskFactor::Security => "a security risk",
        RiskFactor::DataMigration => "a data-migration risk",
        RiskFactor::BreakingChange => "a breaking change",
        RiskFactor::Performance => "a performance risk",
        RiskFactor::Concurrency => "a concurrency risk",
        RiskFactor::Dependency => "a dependency change",
    }
}

fn quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().take(5).map(|s| format!("`{s}`")).collect();
    quoted.join(", ")
}

/// The body without fenced code blocks and quoted lines: logs and stack
/// traces pasted into an issue must not vote on its type or priority.
fn strip_code(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut in_fence = false;
    for line in body.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || t.starts_with('>') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

static CHECKBOX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:[-*+]|\d+[.)])\s+\[(?P<mark>[ xX])\]\s+(?P<text>.+?)\s*$").expect("valid")
});
static LIST_ITEM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\s*(?:[-*+]|\d+[.)])\s+(?P<text>.+?)\s*$").expect("valid"));
static AC_HEADING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\s*(?:#{1,6}\s*)?(?:\*\*|__)?\s*(?:acceptance criteria|acceptance criterion|definition of done|done when|akzeptanzkriterien|crit[èe]res d'acceptation|criterios de aceptaci[óo]n|受け入れ基準|验收标准)\s*:?\s*(?:\*\*|__)?\s*:?\s*$",
    )
    .expect("valid")
});
static HEADING: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(?:#{1,6}\s+\S|(?:\*\*|__)[^*_]+(?:\*\*|__)\s*:?\s*$)").expect("valid")
});

/// Acceptance criteria: every checkbox item (`- [ ] …`, `1. [x] …`) anywhere
/// outside code, plus every list item (or, failing that, every line) under an
/// "Acceptance criteria" / "Definition of done" heading, until the next heading.
pub fn extract_criteria(body: &str) -> Vec<Criterion> {
    let mut out: Vec<Criterion> = Vec::new();
    let mut push = |text: &str, done: bool| {
        let text = text.trim().to_owned();
        if !text.is_empty() && !out.iter().any(|c| c.text == text) {
            out.push(Criterion { text, done });
        }
    };
    let mut in_fence = false;
    let mut in_section = false;
    let mut section_plain: Vec<String> = Vec::new();
    let mut section_had_items = false;
    let flush = |plain: &mut Vec<String>, had_items: bool, push: &mut dyn FnMut(&str, bool)| {
        if !had_items {
            for line in plain.iter() {
                push(line, false);
            }
        }
        plain.clear();
    };
    for line in body.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || t.starts_with('>') || t.starts_with("<!--") {
            continue;
        }
        if AC_HEADING.is_match(line) {
            flush(&mut section_plain, section_had_items, &mut push);
            in_section = true;
            section_had_items = false;
            continue;
        }
        if in_section && HEADING.is_match(line) {
            flush(&mut section_plain, section_had_items, &mut push);
            in_section = false;
        }
        if let Some(c) = CHECKBOX.captures(line) {
            push(&c["text"], !c["mark"].eq(" "));
            section_had_items |= in_section;
            continue;
        }
        if in_section {
            if let Some(c) = LIST_ITEM.captures(line) {
                push(&c["text"], false);
                section_had_items = true;
            } else if !t.is_empty() {
                section_plain.push(t.trim_end().to_owned());
            }
        }
    }
    if in_section {
        flush(&mut section_plain, section_had_items, &mut push);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_priority_is_its_stored_rank_and_back() {
        for p in [
            Priority::Low,
            Priority::Medium,
            Priority::High,
            Priority::Critical,
        ] {
            assert_eq!(Priority::from_rank(p.rank()), Some(p));
        }
        assert!(Priority::Low.rank() < Priority::Critical.rank());
        assert_eq!(Priority::from_rank(4), None);
        assert_eq!(Priority::from_rank(-1), None);
    }

    #[test]
    fn labels_normalise_prefixes_and_emoji() {
        assert_eq!(label_task_type("type: bug"), Some(TaskType::Bugfix));
        assert_eq!(label_task_type("kind/feature"), Some(TaskType::Feature));
        assert_eq!(label_task_type("🔥 hotfix"), Some(TaskType::Hotfix));
        assert_eq!(label_task_type("documentation"), None);
        assert_eq!(
            label_priority("priority: critical"),
            Some(Priority::Critical)
        );
        assert_eq!(label_priority("P1"), Some(Priority::High));
    }

    #[test]
    fn title_prefixes_follow_conventional_commits() {
        assert_eq!(
            task_type_for_title("fix(auth): expire tokens"),
            Some((TaskType::Bugfix, "fix(auth):".into(), false))
        );
        assert_eq!(
            task_type_for_title("feat!: drop v1 API"),
            Some((TaskType::Feature, "feat!:".into(), true))
        );
        assert_eq!(
            task_type_for_title("[HOTFIX] login broken"),
            Some((TaskType::Hotfix, "[HOTFIX]".into(), false))
        );
        assert_eq!(task_type_for_title("Fixes the login"), None);
        assert_eq!(task_type_for_title("note: something"), None);
    }
}
