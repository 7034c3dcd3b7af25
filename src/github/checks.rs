//! Check-run and comment bodies in the shapes GitHub documents, with its
//! limits enforced where the values are built.
//!
//! GitHub answers 422 to a check run whose `output.summary` or `output.text`
//! exceeds 65,535 **bytes**, with more than 50 annotations in one request, or
//! with more than 3 actions or an action over its length limits — and a 422
//! is final: the report would never land. So the limits are applied here,
//! not hoped for: [`CheckOutput::new`] truncates on a UTF-8 boundary with a
//! visible note, [`CheckAction::new`] refuses over-long buttons,
//! [`CheckRunUpdate::set_actions`] refuses a fourth one, and the client sends
//! annotations 50 at a time ([`CheckRunUpdate::annotation_batches`]).
//!
//! Sources:
//! <https://docs.github.com/en/rest/checks/runs#create-a-check-run>,
//! <https://docs.github.com/en/rest/checks/runs#update-a-check-run>,
//! <https://docs.github.com/en/rest/issues/comments#create-an-issue-comment>.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::GitHubError;

/// Most bytes GitHub accepts in `output.summary` and in `output.text`.
pub const MAX_OUTPUT_BYTES: usize = 65_535;
/// Most annotations GitHub accepts in one create or update request.
pub const MAX_ANNOTATIONS_PER_REQUEST: usize = 50;
/// Most action buttons on one check run.
pub const MAX_ACTIONS: usize = 3;
/// Most characters in an action's `label`.
pub const MAX_ACTION_LABEL_CHARS: usize = 20;
/// Most characters in an action's `description`.
pub const MAX_ACTION_DESCRIPTION_CHARS: usize = 40;
/// Most characters in an action's `identifier`.
pub const MAX_ACTION_IDENTIFIER_CHARS: usize = 20;
/// Most characters GitHub accepts in a comment body.
pub const MAX_COMMENT_CHARS: usize = 65_536;

/// `status` of a check run. Apps may set only these three (`waiting`,
/// `pending` and `requested` are reserved for GitHub Actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Queued,
    InProgress,
    Completed,
}

/// `conclusion` of a completed check run. Sending one completes the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckConclusion {
    Success,
    Failure,
    Neutral,
    Cancelled,
    Skipped,
    TimedOut,
    ActionRequired,
}

/// `annotation_level` of an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationLevel {
    Notice,
    Warning,
    Failure,
}

/// One annotation on a file line. Lines are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    pub annotation_level: AnnotationLevel,
    /// Up to 64 KB; longer messages are cut by [`Annotation::new`].
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Annotation {
    /// An annotation on lines `start_line..=end_line` of `path`.
    pub fn new(
        path: impl Into<String>,
        start_line: u32,
        end_line: u32,
        level: AnnotationLevel,
        message: &str,
    ) -> Self {
        Self {
            path: path.into(),
            start_line,
            end_line: end_line.max(start_line),
            annotation_level: level,
            message: truncate_bytes(message, MAX_OUTPUT_BYTES),
            title: None,
        }
    }
}

/// `output` of a check run: `title` and `summary` are required whenever
/// `output` is sent; `summary` and `text` hold Markdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckOutput {
    pub title: String,
    summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<Annotation>,
}

impl CheckOutput {
    /// Builds an output, truncating `summary` and `text` to
    /// [`MAX_OUTPUT_BYTES`] each, on a UTF-8 boundary, with a visible note at
    /// the end of what remains.
    pub fn new(title: impl Into<String>, summary: &str, text: Option<&str>) -> Self {
        let title: String = title.into();
        Self {
            title: if title.trim().is_empty() {
                "taskmaster".into()
            } else {
                title
            },
            summary: truncate_bytes(summary, MAX_OUTPUT_BYTES),
            text: text.map(|t| truncate_bytes(t, MAX_OUTPUT_BYTES)),
            annotations: Vec::new(),
        }
    }

    /// The summary as it will be sent (≤ 65,535 bytes).
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The text as it will be sent (≤ 65,535 bytes).
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// Adds annotations; any number, the client sends them 50 per request.
    pub fn with_annotations(mut self, annotations: Vec<Annotation>) -> Self {
        self.annotations = annotations;
        self
    }

    /// The annotations, all of them.
    pub fn annotations(&self) -> &[Annotation] {
        &self.annotations
    }
}

/// One button on a completed check run. Clicking it sends a
/// `check_run.requested_action` webhook carrying `identifier`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckAction {
    label: String,
    description: String,
    identifier: String,
}

impl CheckAction {
    /// A button; limits are in characters: `label` ≤ 20, `description` ≤ 40,
    /// `identifier` ≤ 20, none empty.
    ///
    /// # Errors
    /// [`GitHubError::InvalidInput`] naming the field over its limit. Buttons
    /// are taskmaster's own constants, so this is a bug to fix, not a value to
    /// truncate: a cut identifier would no longer match its command.
    pub fn new(label: &str, description: &str, identifier: &str) -> Result<Self, GitHubError> {
        for (field, value, max) in [
            ("label", label, MAX_ACTION_LABEL_CHARS),
            ("description", description, MAX_ACTION_DESCRIPTION_CHARS),
            ("identifier", identifier, MAX_ACTION_IDENTIFIER_CHARS),
        ] {
            let chars = value.chars().count();
            if chars == 0 || chars > max {
                return Err(GitHubError::InvalidInput(format!(
                    "check-run action {field} `{value}` must be 1 to {max} characters"
                )));
            }
        }
        Ok(Self {
            label: label.into(),
            description: description.into(),
            identifier: identifier.into(),
        })
    }

    /// The `identifier` the `requested_action` webhook will carry.
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// The button's label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// The fields of a check run that can be set on creation and on update
/// (`PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}`). `None` fields
/// are left out of the body, so an update changes only what it names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckRunUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Setting a conclusion completes the run (GitHub sets `status` itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckConclusion>,
    /// Required by GitHub when `conclusion` is set; filled with now by
    /// the client if missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckOutput>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    actions: Vec<CheckAction>,
}

impl CheckRunUpdate {
    /// Sets the buttons (replacing any).
    ///
    /// # Errors
    /// [`GitHubError::InvalidInput`] with more than [`MAX_ACTIONS`].
    pub fn set_actions(&mut self, actions: Vec<CheckAction>) -> Result<(), GitHubError> {
        if actions.len() > MAX_ACTIONS {
            return Err(GitHubError::InvalidInput(format!(
                "a check run takes at most {MAX_ACTIONS} actions, got {}",
                actions.len()
            )));
        }
        self.actions = actions;
        Ok(())
    }

    /// The buttons.
    pub fn actions(&self) -> &[CheckAction] {
        &self.actions
    }

    /// Splits this update into request bodies of at most
    /// [`MAX_ANNOTATIONS_PER_REQUEST`] annotations: the first carries every
    /// field and the first 50; each further one repeats only `output`'s
    /// title and summary (required with `output`) with the next 50. GitHub
    /// appends annotations across updates.
    pub fn annotation_batches(&self) -> Vec<CheckRunUpdate> {
        let Some(output) = &self.output else {
            return vec![self.clone()];
        };
        let mut chunks = output.annotations.chunks(MAX_ANNOTATIONS_PER_REQUEST);
        let mut first = self.clone();
        if let Some(o) = first.output.as_mut() {
            o.annotations = chunks.next().map(<[_]>::to_vec).unwrap_or_default();
        }
        let mut batches = vec![first];
        for chunk in chunks {
            batches.push(CheckRunUpdate {
                output: Some(CheckOutput {
                    title: output.title.clone(),
                    summary: output.summary.clone(),
                    text: None,
                    annotations: chunk.to_vec(),
                }),
                ..CheckRunUpdate::default()
            });
        }
        batches
    }
}

/// The body of `POST /repos/{owner}/{repo}/check-runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewCheckRun {
    /// Shown on the PR; taskmaster uses `taskmaster / <workflow>`.
    pub name: String,
    /// The commit the check run is about (a full 40-hex SHA).
    pub head_sha: String,
    #[serde(flatten)]
    pub fields: CheckRunUpdate,
}

/// Cuts `text` to at most `max_bytes` bytes on a UTF-8 boundary, ending
/// with a visible note saying how much was left out. Text that fits is
/// returned unchanged.
pub fn truncate_bytes(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    // The note's length depends on the number of digits of what is cut; a
    // generous estimate first, then the exact note.
    let budget_note = note(text.len(), "bytes");
    let mut cut = max_bytes.saturating_sub(budget_note.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let note = note(text.len() - cut, "bytes");
    let mut out = String::with_capacity(cut + note.len());
    out.push_str(&text[..cut]);
    out.push_str(&note);
    debug_assert!(out.len() <= max_bytes);
    out
}

/// Cuts `text` to at most `max_chars` characters with a visible note (for
/// comment bodies, whose limit GitHub counts in characters).
pub fn truncate_chars(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_owned();
    }
    let budget_note = note(total, "characters");
    let keep = max_chars.saturating_sub(budget_note.chars().count());
    let mut out: String = text.chars().take(keep).collect();
    out.push_str(&note(total - keep, "characters"));
    out
}

fn note(omitted: usize, unit: &str) -> String {
    format!(
        "\n\n---\n**Truncated:** {omitted} {unit} left out to fit GitHub's limit; \
         the full output is on the run's details page.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_utf8_and_limit() {
        let text = "é".repeat(40_000); // 80,000 bytes
        let out = truncate_bytes(&text, MAX_OUTPUT_BYTES);
        assert!(out.len() <= MAX_OUTPUT_BYTES);
        assert!(out.contains("**Truncated:**"));
        assert_eq!(truncate_bytes("short", 10), "short");
    }

    #[test]
    fn chars_truncation_counts_characters() {
        let text = "ü".repeat(70_000);
        let out = truncate_chars(&text, MAX_COMMENT_CHARS);
        assert!(out.chars().count() <= MAX_COMMENT_CHARS);
        assert!(
            out.len() > MAX_COMMENT_CHARS,
            "the limit is characters, not bytes"
        );
    }

    #[test]
    fn actions_are_limited() {
        assert!(CheckAction::new("Retry failed", "Retry the failed steps", "retry").is_ok());
        assert!(CheckAction::new("A label that is too long", "d", "x").is_err());
        assert!(CheckAction::new("ok", &"d".repeat(41), "x").is_err());
        assert!(CheckAction::new("ok", "d", &"i".repeat(21)).is_err());
        let a = CheckAction::new("ok", "d", "x").unwrap();
        let mut u = CheckRunUpdate::default();
        assert!(u.set_actions(vec![a.clone(); 4]).is_err());
        assert!(u.set_actions(vec![a; 3]).is_ok());
    }
}
