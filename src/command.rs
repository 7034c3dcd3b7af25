//! Comment commands: the grammar maintainers use to steer taskmaster from a
//! pull request or issue conversation (`/retry`, `/cancel`, …).
//!
//! The rule, as Prow and rust-lang/bors have it: **a command is a line of the
//! comment that begins with the command** — `/name args…`, or the same after
//! `@<app-slug> `, or `@<app-slug> name args…` — case-insensitive, with its
//! arguments running to the end of the line. Leading spaces are allowed; a
//! list marker, table pipe, heading `#` or quote `>` before it is not.
//!
//! Before any line is matched, the comment is parsed as Markdown
//! (pulldown-cmark) and everything a person did not *say* to the bot is set
//! aside: fenced and indented code blocks, inline code, block quotes at any
//! depth, and HTML — block or inline, including `<!-- … -->` comments, which
//! is how PR templates carry example commands. A command quoted in a reply
//! (`> /retry`) or shown in an example (`` `/retry` ``) therefore never fires,
//! and taskmaster's own replies quote every command for the same reason.
//!
//! Several commands in one comment are returned in order. An unknown `/word`
//! is ignored (it may be for another bot or just prose), unless it was
//! addressed to this app with `@<app-slug>`, in which case it is reported as
//! unknown so the reply can show the help.

use std::fmt;
use std::ops::Range;

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// Longest argument text accepted, in bytes. Longer lines are refused with a
/// clear error rather than echoed back.
pub const MAX_ARGUMENT_BYTES: usize = 200;

/// Longest `/fix` instructions on the command's line, in bytes (the
/// workflow reads the whole comment).
pub const MAX_FIX_BYTES: usize = 4_000;

/// One command a maintainer can give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/retry [step]`: retry the failed, cancelled or timed-out steps of the
    /// latest run (or only `step`).
    Retry { step: Option<String> },
    /// `/cancel`: cancel the active runs.
    Cancel,
    /// `/pause`: start no new steps in the active runs.
    Pause,
    /// `/resume`: carry paused runs on.
    Resume,
    /// `/status`: reply with the runs and their steps.
    Status,
    /// `/run <workflow>`: start a workflow by name on this PR or issue.
    Run { workflow: String },
    /// `/approve [sha]`: let the runs waiting for approval (untrusted work)
    /// start — those on `sha` (a prefix of 7 to 40 hex digits) when given,
    /// else those that were waiting when the comment was written.
    Approve { sha: Option<String> },
    /// `/fix [instructions]`: start the repository's fix workflow here, with
    /// the comment as the request (untrusted data in prompts).
    Fix { instructions: String },
    /// `/help`: reply with the commands and who may use them.
    Help,
}

/// The name of each command, without arguments. The help text is generated
/// from [`CommandKind::ALL`] with an exhaustive `match`, so a new command
/// cannot ship without its help line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    Retry,
    Cancel,
    Pause,
    Resume,
    Status,
    Run,
    Approve,
    Fix,
    Help,
}

impl CommandKind {
    /// Every command, in the order the help lists them.
    pub const ALL: [CommandKind; 9] = [
        CommandKind::Retry,
        CommandKind::Cancel,
        CommandKind::Pause,
        CommandKind::Resume,
        CommandKind::Status,
        CommandKind::Run,
        CommandKind::Approve,
        CommandKind::Fix,
        CommandKind::Help,
    ];

    /// The word after `/`.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Retry => "retry",
            CommandKind::Cancel => "cancel",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Status => "status",
            CommandKind::Run => "run",
            CommandKind::Approve => "approve",
            CommandKind::Fix => "fix",
            CommandKind::Help => "help",
        }
    }

    /// Usage and one-line description, for the help reply.
    pub fn help(self) -> (&'static str, &'static str) {
        match self {
            CommandKind::Retry => (
                "/retry [step]",
                "retry the failed, cancelled or timed-out steps of the latest run (or one step)",
            ),
            CommandKind::Cancel => ("/cancel", "cancel this pull request's active runs"),
            CommandKind::Pause => ("/pause", "start no new steps in the active runs"),
            CommandKind::Resume => ("/resume", "carry paused runs on where they stood"),
            CommandKind::Status => ("/status", "show the runs and their steps"),
            CommandKind::Run => ("/run <workflow>", "start a workflow by name here"),
            CommandKind::Approve => (
                "/approve [sha]",
                "let the runs waiting for approval (fork or untrusted author) start: those \
                 waiting when you wrote it, or those on commit `sha`",
            ),
            CommandKind::Fix => (
                "/fix [what to change]",
                "make the change asked for here and propose it (a commit, a pull request, or \
                 suggestions on a fork's pull request)",
            ),
            CommandKind::Help => ("/help", "show this help"),
        }
    }

    /// Who may use it by default (collaborator permission on the repository).
    pub fn default_permission(self) -> &'static str {
        match self {
            CommandKind::Status | CommandKind::Help => "read",
            CommandKind::Retry
            | CommandKind::Cancel
            | CommandKind::Pause
            | CommandKind::Resume
            | CommandKind::Run
            | CommandKind::Approve
            | CommandKind::Fix => "write",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        CommandKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }
}

impl Command {
    /// The command's kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Retry { .. } => CommandKind::Retry,
            Command::Cancel => CommandKind::Cancel,
            Command::Pause => CommandKind::Pause,
            Command::Resume => CommandKind::Resume,
            Command::Status => CommandKind::Status,
            Command::Run { .. } => CommandKind::Run,
            Command::Approve { .. } => CommandKind::Approve,
            Command::Fix { .. } => CommandKind::Fix,
            Command::Help => CommandKind::Help,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Retry { step: Some(step) } => write!(f, "/retry {step}"),
            Command::Run { workflow } => write!(f, "/run {workflow}"),
            Command::Approve { sha: Some(sha) } => write!(f, "/approve {sha}"),
            Command::Fix { instructions } if !instructions.is_empty() => {
                write!(f, "/fix {instructions}")
            }
            other => write!(f, "/{}", other.kind().name()),
        }
    }
}

/// Why a command line could not be understood. Shown to the user in a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Addressed to this app (`@slug`) but not a command it knows.
    #[error("`{name}` is not a command taskmaster knows")]
    Unknown { name: String },
    #[error("`/{command}` takes no arguments")]
    UnexpectedArguments { command: &'static str },
    #[error("`/{command}` needs {what}")]
    MissingArgument {
        command: &'static str,
        what: &'static str,
    },
    #[error("`/{command}` takes one {what}, got several")]
    TooManyArguments {
        command: &'static str,
        what: &'static str,
    },
    #[error("`{value}` is not a valid {what}: use letters, digits, `-`, `_` and `.` (at most 100)")]
    InvalidName { value: String, what: &'static str },
    #[error("the arguments are longer than {MAX_ARGUMENT_BYTES} bytes")]
    ArgumentsTooLong,
}

/// One command line found in a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// 1-based line number in the comment.
    pub line: usize,
    /// The line as written (trimmed, without any trailing HTML comment),
    /// for quoting in a reply with `> `.
    pub text: String,
    /// The command, or why it could not be understood.
    pub parsed: Result<Command, CommandError>,
}

/// Finds every command in a comment `body`, in order.
///
/// `app_slug` is the App's slug (its bot login without `[bot]`), used for the
/// `@slug` forms; matching is case-insensitive. Never panics, whatever the
/// input.
pub fn parse_comment(body: &str, app_slug: &str) -> Vec<CommandLine> {
    let ignored = ignored_ranges(body);
    let mut commands = Vec::new();
    let mut offset = 0;
    for (index, raw_line) in body.split('\n').enumerate() {
        let line_start = offset;
        offset += raw_line.len() + 1;
        let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        let start = line_start + indent;
        if start >= line_start + line.len() || inside(&ignored, start) {
            continue;
        }
        // The command's text ends where the line does, or where ignored
        // content (a trailing `<!-- -->`, inline code) begins.
        let end = ignored
            .iter()
            .filter(|r| r.start > start && r.start < line_start + line.len())
            .map(|r| r.start)
            .min()
            .unwrap_or(line_start + line.len());
        let text = body[start..end].trim_end();
        if let Some(parsed) = parse_line(text, app_slug) {
            commands.push(CommandLine {
                line: index + 1,
                text: text.to_string(),
                parsed,
            });
        }
    }
    commands
}

/// Parses one line that starts at its first non-blank character. `None`
/// when the line is not addressed to taskmaster at all.
fn parse_line(text: &str, app_slug: &str) -> Option<Result<Command, CommandError>> {
    let (addressed, rest) = match strip_mention(text, app_slug) {
        Some(rest) => (true, rest.trim_start()),
        None => (false, text),
    };
    let rest = match rest.strip_prefix('/') {
        Some(rest) => rest,
        None if addressed => rest,
        None => return None,
    };
    let name_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (name, args) = (&rest[..name_end], rest[name_end..].trim());
    if name.is_empty() {
        return addressed.then(|| {
            Err(CommandError::Unknown {
                name: String::new(),
            })
        });
    }
    let Some(kind) = CommandKind::from_name(name) else {
        // `/word` for someone else, a path like `/usr/bin`, or prose.
        return addressed.then(|| {
            Err(CommandError::Unknown {
                name: truncate(name, 50),
            })
        });
    };
    Some(build(kind, args))
}

/// `@slug` (case-insensitive) followed by whitespace or the end; returns the rest.
fn strip_mention<'a>(text: &'a str, app_slug: &str) -> Option<&'a str> {
    let after_at = text.strip_prefix('@')?;
    let slug_len = app_slug.len();
    if slug_len == 0 || after_at.len() < slug_len || !after_at.is_char_boundary(slug_len) {
        return None;
    }
    let (slug, rest) = after_at.split_at(slug_len);
    if !slug.eq_ignore_ascii_case(app_slug) {
        return None;
    }
    match rest.chars().next() {
        None => Some(rest),
        Some(c) if c.is_whitespace() => Some(rest),
        Some(_) => None, // `@slugother`
    }
}

fn build(kind: CommandKind, args: &str) -> Result<Command, CommandError> {
    if kind == CommandKind::Fix {
        // Free text: what to change. The comment itself is the request the
        // workflow sees; this is only echoed back.
        if args.len() > MAX_FIX_BYTES {
            return Err(CommandError::ArgumentsTooLong);
        }
        return Ok(Command::Fix {
            instructions: args.to_owned(),
        });
    }
    if args.len() > MAX_ARGUMENT_BYTES {
        return Err(CommandError::ArgumentsTooLong);
    }
    let words: Vec<&str> = args.split_whitespace().collect();
    let no_args = |command| {
        if words.is_empty() {
            Ok(())
        } else {
            Err(CommandError::UnexpectedArguments { command })
        }
    };
    Ok(match kind {
        CommandKind::Retry => match words.as_slice() {
            [] => Command::Retry { step: None },
            [step] => Command::Retry {
                step: Some(identifier(step, "step id")?),
            },
            _ => {
                return Err(CommandError::TooManyArguments {
                    command: "retry",
                    what: "step id",
                });
            }
        },
        CommandKind::Run => match words.as_slice() {
            [] => {
                return Err(CommandError::MissingArgument {
                    command: "run",
                    what: "a workflow name, e.g. `/run pr_processing`",
                });
            }
            [workflow] => Command::Run {
                workflow: identifier(workflow, "workflow name")?,
            },
            _ => {
                return Err(CommandError::TooManyArguments {
                    command: "run",
                    what: "workflow name",
                });
            }
        },
        CommandKind::Cancel => no_args("cancel").map(|()| Command::Cancel)?,
        CommandKind::Pause => no_args("pause").map(|()| Command::Pause)?,
        CommandKind::Resume => no_args("resume").map(|()| Command::Resume)?,
        CommandKind::Status => no_args("status").map(|()| Command::Status)?,
        CommandKind::Approve => match words.as_slice() {
            [] => Command::Approve { sha: None },
            [sha]
                if (7..=40).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Command::Approve {
                    sha: Some(sha.to_ascii_lowercase()),
                }
            }
            [other] => {
                return Err(CommandError::InvalidName {
                    value: truncate(other, 50),
                    what: "commit SHA (7 to 40 hex digits)",
                });
            }
            _ => {
                return Err(CommandError::TooManyArguments {
                    command: "approve",
                    what: "commit SHA",
                });
            }
        },
        CommandKind::Help => no_args("help").map(|()| Command::Help)?,
        CommandKind::Fix => unreachable!("handled above"),
    })
}

fn identifier(value: &str, what: &'static str) -> Result<String, CommandError> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value.to_string())
    } else {
        Err(CommandError::InvalidName {
            value: truncate(value, 50),
            what,
        })
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Byte ranges of the comment that can never hold a command: code (fenced,
/// indented, inline), block quotes, and HTML (blocks, inline tags, comments).
fn ignored_ranges(body: &str) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    for (event, range) in Parser::new_ext(body, options).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(_))
            | Event::Start(Tag::BlockQuote(_))
            | Event::Start(Tag::HtmlBlock)
            | Event::Code(_)
            | Event::Html(_)
            | Event::InlineHtml(_) => ranges.push(range),
            Event::End(TagEnd::CodeBlock) | Event::End(TagEnd::BlockQuote(_)) => {}
            _ => {}
        }
    }
    ranges
}

fn inside(ranges: &[Range<usize>], offset: usize) -> bool {
    ranges.iter().any(|r| r.contains(&offset))
}

/// The reply to `/help` (and to an unknown command addressed to the app):
/// every command with its usage, description and default permission.
pub fn help_markdown(app_slug: &str) -> String {
    help_markdown_with(app_slug, CommandKind::default_permission)
}

/// `/help` with the permission `level(kind)` each command needs (a
/// repository's `.github/taskmaster.yml` may change the defaults).
pub fn help_markdown_with(app_slug: &str, level: impl Fn(CommandKind) -> &'static str) -> String {
    let mut out = String::from(
        "taskmaster understands these commands, each on a line of its own \
         (also as `@",
    );
    out.push_str(app_slug);
    out.push_str(
        " <command>`):\n\n| command | what it does | who may use it |\n| --- | --- | --- |\n",
    );
    for kind in CommandKind::ALL {
        let (usage, description) = kind.help();
        out.push_str(&format!(
            "| `{usage}` | {description} | {} access or higher |\n",
            level(kind)
        ));
    }
    out.push_str(
        "\nCommands inside code, quotes or HTML comments are ignored, and so are edited comments.\n",
    );
    out
}

/// Quotes `text` as a Markdown block quote, line by line, so that a reply
/// which repeats a command can never be read as one.
pub fn quote(text: &str) -> String {
    text.lines()
        .map(|line| format!("> {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_command_once() {
        let help = help_markdown("taskmaster");
        for kind in CommandKind::ALL {
            let (usage, _) = kind.help();
            assert_eq!(help.matches(&format!("`{usage}`")).count(), 1, "{usage}");
        }
    }

    #[test]
    fn a_quoted_reply_parses_to_nothing() {
        let comment = "/retry\n@taskmaster /cancel\n/run pr_processing";
        assert_eq!(parse_comment(comment, "taskmaster").len(), 3);
        assert!(parse_comment(&quote(comment), "taskmaster").is_empty());
    }

    #[test]
    fn display_round_trips() {
        for command in [
            Command::Retry { step: None },
            Command::Retry {
                step: Some("run_tests".into()),
            },
            Command::Run {
                workflow: "pr_processing".into(),
            },
            Command::Approve { sha: None },
            Command::Approve {
                sha: Some("abc1234".into()),
            },
        ] {
            let parsed = parse_comment(&command.to_string(), "tm");
            assert_eq!(parsed[0].parsed, Ok(command));
        }
    }
}
