//! The workflow file as written: serde types with source positions.
//!
//! These types mirror `workflows/README.md` one to one and are only the first
//! half of loading: they reject unknown keys and wrong types (serde-saphyr
//! gives the line and column), and keep a [`Spanned`] position on every value
//! a later check may need to point at (a `needs` entry, an agent name, a
//! duration, a template). `validate.rs` turns them into the checked
//! [`Workflow`](super::Workflow).
//!
//! Mappings whose keys are user-chosen (steps, `with`, `inputs`, `on`) are read
//! with hand-written visitors, in file order, so that duplicate keys are
//! recorded (with both positions) instead of aborting the parse, and so that
//! an unsupported trigger is reported alongside every other error.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::classify::{Priority, TaskType};

/// A user-keyed mapping read in file order; repeated keys are kept in
/// `duplicates` (the later occurrence) for the validator to report.
#[derive(Debug)]
pub(crate) struct OrderedMap<V> {
    pub entries: Vec<(Spanned<String>, V)>,
    pub duplicates: Vec<Spanned<String>>,
}

impl<V> Default for OrderedMap<V> {
    fn default() -> Self {
        OrderedMap {
            entries: Vec::new(),
            duplicates: Vec::new(),
        }
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(OrderedMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = OrderedMap::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value::<V>()?;
                    if out.entries.iter().any(|(k, _)| k.value == key.value) {
                        out.duplicates.push(key);
                    } else {
                        out.entries.push((key, value));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// One string or a list of strings (`needs: build` or `needs: [build, lint]`).
#[derive(Debug, Default)]
pub(crate) struct StringList(pub Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The whole value is spanned so that a lone scalar (`needs: build`)
        // still gets a position: it borrows the outer span.
        enum Inner {
            One(String),
            Many(Vec<Spanned<String>>),
        }
        impl<'de> Deserialize<'de> for Inner {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ListVisitor;
                impl<'de> Visitor<'de> for ListVisitor {
                    type Value = Inner;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a name or a list of names")
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<Inner, E> {
                        Ok(Inner::Many(Vec::new()))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<Inner, E> {
                        Ok(Inner::One(v.to_owned()))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inner, A::Error> {
                        let mut out = Vec::new();
                        while let Some(item) = seq.next_element::<Spanned<String>>()? {
                            out.push(item);
                        }
                        Ok(Inner::Many(out))
                    }
                }
                d.deserialize_any(ListVisitor)
            }
        }
        let spanned = Spanned::<Inner>::deserialize(d)?;
        Ok(StringList(match spanned.value {
            Inner::One(s) => vec![Spanned::new(s, spanned.referenced, spanned.defined)],
            Inner::Many(v) => v,
        }))
    }
}

/// The top of a workflow file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkflow {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(rename = "on")]
    pub on: Spanned<RawTriggers>,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub max_parallel: Option<Spanned<u32>>,
    #[serde(default)]
    pub changes: bool,
    #[serde(default)]
    pub allow_workflow_changes: bool,
    #[serde(default)]
    pub adaptive_agents: bool,
    #[serde(default)]
    pub verdicts: crate::verdict::VerdictRules,
    #[serde(default)]
    pub concurrency: Option<RawConcurrency>,
    #[serde(default)]
    pub inputs: OrderedMap<RawInput>,
    pub steps: Spanned<OrderedMap<RawStep>>,
}

fn yes() -> bool {
    true
}

/// `concurrency:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrency {
    pub group: Spanned<String>,
    #[serde(default)]
    pub cancel_in_progress: bool,
}

/// One entry of `inputs:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub default: String,
}

/// `on:` — read by hand so unsupported events are collected, not fatal.
#[derive(Debug, Default)]
pub(crate) struct RawTriggers {
    pub pull_request: Option<(Spanned<String>, RawPullRequestTrigger)>,
    pub issues: Option<(Spanned<String>, RawIssuesTrigger)>,
    pub issue_comment: Option<(Spanned<String>, RawCommentTrigger)>,
    pub task: Option<(Spanned<String>, RawTaskTrigger)>,
    /// `manual:` — started only by the API, `taskmaster run` or the service.
    pub manual: Option<Spanned<String>>,
    /// Keys naming events taskmaster does not receive.
    pub unsupported: Vec<Spanned<String>>,
    pub duplicates: Vec<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawTriggers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TriggerVisitor;
        impl<'de> Visitor<'de> for TriggerVisitor {
            type Value = RawTriggers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a mapping of triggers (pull_request, issues, issue_comment, task, manual), \
e.g. `pull_request: {actions: [opened]}`",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = RawTriggers::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let taken = match key.value.as_str() {
                        "pull_request" => out.pull_request.is_some(),
                        "issues" => out.issues.is_some(),
                        "issue_comment" => out.issue_comment.is_some(),
                        "task" => out.task.is_some(),
                        "manual" => out.manual.is_some(),
                        _ => false,
                    };
                    if taken {
                        map.next_value::<IgnoredAny>()?;
                        out.duplicates.push(key);
                        continue;
                    }
                    match key.value.as_str() {
                        "pull_request" => {
                            let v = map.next_value::<Option<_>>()?.unwrap_or_default();
                            out.pull_request = Some((key, v));
                        }
                        "issues" => {
                            let v = map.next_value::<Option<_>>()?.unwrap_or_default();
                            out.issues = Some((key, v));
                        }
                        "issue_comment" => {
                            let v = map.next_value::<Option<_>>()?.unwrap_or_default();
                            out.issue_comment = Some((key, v));
                        }
                        "task" => {
                            let v = map.next_value::<Option<_>>()?.unwrap_or_default();
                            out.task = Some((key, v));
                        }
                        "manual" => {
                            map.next_value::<IgnoredAny>()?;
                            out.manual = Some(key);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            out.unsupported.push(key);
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(TriggerVisitor)
    }
}

/// `labels:` filter of a trigger.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLabels {
    #[serde(default)]
    pub any: Vec<String>,
    #[serde(default)]
    pub all: Vec<String>,
    #[serde(default)]
    pub none: Vec<String>,
}

/// `on.pull_request`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPullRequestTrigger {
    #[serde(default)]
    pub actions: Option<StringList>,
    #[serde(default)]
    pub branches: StringList,
    #[serde(default)]
    pub head_branches: StringList,
    #[serde(default)]
    pub labels: RawLabels,
    #[serde(default)]
    pub titles: StringList,
    #[serde(default)]
    pub drafts: bool,
    #[serde(default)]
    pub forks: bool,
    #[serde(default)]
    pub bots: bool,
}

/// `on.issues`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuesTrigger {
    #[serde(default)]
    pub actions: Option<StringList>,
    #[serde(default)]
    pub labels: RawLabels,
    #[serde(default)]
    pub titles: StringList,
    #[serde(default)]
    pub bots: bool,
    #[serde(default)]
    pub untrusted: bool,
}

/// `on.issue_comment`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCommentTrigger {
    #[serde(default)]
    pub command: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub pull_requests: bool,
    #[serde(default = "yes")]
    pub issues: bool,
}

/// `on.task`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTaskTrigger {
    #[serde(default)]
    pub types: Vec<TaskType>,
    #[serde(default)]
    pub events: Option<StringList>,
    #[serde(default)]
    pub drafts: bool,
    #[serde(default)]
    pub forks: bool,
    #[serde(default)]
    pub bots: bool,
    #[serde(default)]
    pub untrusted: bool,
}

/// One step.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    #[serde(default)]
    pub name: Option<String>,
    pub agent: Spanned<String>,
    #[serde(default)]
    pub fallback: StringList,
    #[serde(default)]
    pub prompt: Option<Spanned<String>>,
    #[serde(default, rename = "with")]
    pub with: OrderedMap<Spanned<serde_json::Value>>,
    #[serde(default)]
    pub needs: StringList,
    #[serde(default, rename = "if")]
    pub condition: Option<Spanned<String>>,
    #[serde(default)]
    pub continue_on_error: bool,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub validation: Option<Spanned<String>>,
    #[serde(default)]
    pub changes: bool,
    #[serde(default)]
    pub pull_request: bool,
    #[serde(default)]
    pub reports: Vec<std::collections::BTreeMap<String, Spanned<String>>>,
}

/// `retry:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub max_attempts: Spanned<u32>,
    #[serde(default)]
    pub backoff: super::Backoff,
    #[serde(default)]
    pub initial_delay: Option<Spanned<String>>,
    #[serde(default)]
    pub max_delay: Option<Spanned<String>>,
}
