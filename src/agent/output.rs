//! Capped, redacted attempt output.
//!
//! An agent can print without end (a test suite in a loop, a terminal that
//! redraws forever), and whatever we keep ends up in SQLite and in a GitHub
//! comment. So each attempt keeps at most [`DEFAULT_OUTPUT_LIMIT`] bytes:
//! the first half and the last half of what was printed (the start says what
//! ran, the end says how it ended), with a marker line where the middle was
//! cut that says how many bytes were left out.
//!
//! Redaction happens *before* the cut is made, on a little more than will be
//! kept ([`SLACK`] bytes on each side of the cut), so that a token which
//! straddles the cut is recognised whole and never survives as a fragment.

use std::collections::VecDeque;

use crate::redact::Redactor;

/// Default cap on the stored output of one attempt: 1 MiB (bytes, not
/// characters).
pub const DEFAULT_OUTPUT_LIMIT: usize = 1024 * 1024;

/// Extra bytes captured beyond each half of the limit, so that redaction sees
/// secrets that straddle the cut whole.
const SLACK: usize = 16 * 1024;

/// Output kept from one attempt, already redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// The text (UTF-8; invalid bytes replaced by U+FFFD). At most the
    /// configured limit in bytes plus the length of the cut marker.
    pub text: String,
    /// How many bytes were cut from the middle (0 when nothing was cut).
    pub truncated_bytes: u64,
}

impl Output {
    /// Redacts `raw` and caps it at `limit` bytes.
    pub fn from_text(raw: &str, redactor: &Redactor, limit: usize) -> Self {
        let mut buffer = CappedBuffer::new(limit);
        buffer.push(raw.as_bytes());
        buffer.finish(redactor)
    }

    /// Whether part of the output was cut.
    pub fn is_truncated(&self) -> bool {
        self.truncated_bytes > 0
    }
}

/// A byte sink that keeps the head and the tail of a stream, for output read
/// from a process pipe chunk by chunk. Memory use is bounded by about
/// `limit + 2 × 16 KiB` whatever is pushed.
#[derive(Debug)]
pub struct CappedBuffer {
    limit: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl CappedBuffer {
    /// A buffer that will keep at most `limit` bytes (see [`Output`]).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    fn head_cap(&self) -> usize {
        self.limit / 2 + SLACK
    }

    fn tail_cap(&self) -> usize {
        self.limit - self.limit / 2 + SLACK
    }

    /// Appends bytes.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap().saturating_sub(self.head.len());
        let into_head = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        if bytes.is_empty() {
            return;
        }
        let cap = self.tail_cap();
        if bytes.len() >= cap {
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - cap..]);
        } else {
            let overflow = (self.tail.len() + bytes.len()).saturating_sub(cap);
            self.tail.drain(..overflow);
            self.tail.extend(bytes);
        }
    }

    /// Total bytes pushed so far.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Redacts what was kept, cuts it to the limit and marks the cut.
    pub fn finish(self, redactor: &Redactor) -> Output {
        let limit = self.limit;
        if self.tail.is_empty() {
            // Everything pushed is in `head`: redact it whole, then cut.
            let text = redactor.redact(&String::from_utf8_lossy(&self.head));
            if text.len() <= limit {
                return Output {
                    text,
                    truncated_bytes: 0,
                };
            }
            let total = text.len() as u64;
            return cut(&text, limit, total);
        }
        let head = redactor.redact(&String::from_utf8_lossy(&self.head));
        let tail_bytes: Vec<u8> = self.tail.into_iter().collect();
        let tail = redactor.redact(&String::from_utf8_lossy(&tail_bytes));
        let keep_head = floor_char_boundary(&head, limit / 2);
        let tail_keep = limit - limit / 2;
        let tail_start = ceil_char_boundary(&tail, tail.len().saturating_sub(tail_keep));
        let kept = keep_head + (tail.len() - tail_start);
        let omitted = self.total.saturating_sub(kept as u64);
        Output {
            text: format!(
                "{}{}{}",
                &head[..keep_head],
                marker(omitted, limit),
                &tail[tail_start..]
            ),
            truncated_bytes: omitted.max(1),
        }
    }
}

fn cut(text: &str, limit: usize, total: u64) -> Output {
    let keep_head = floor_char_boundary(text, limit / 2);
    let tail_start = ceil_char_boundary(text, text.len() - (limit - limit / 2));
    let omitted = total - (keep_head + text.len() - tail_start) as u64;
    Output {
        text: format!(
            "{}{}{}",
            &text[..keep_head],
            marker(omitted, limit),
            &text[tail_start..]
        ),
        truncated_bytes: omitted.max(1),
    }
}

/// The line that marks a cut.
fn marker(omitted: u64, limit: usize) -> String {
    format!(
        "\n[… output truncated by taskmaster: {omitted} bytes omitted (limit {limit} bytes per attempt) …]\n"
    )
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_untouched() {
        let out = Output::from_text("hello", &Redactor::default(), 100);
        assert_eq!(out.text, "hello");
        assert!(!out.is_truncated());
    }

    #[test]
    fn large_output_keeps_head_and_tail_and_marks_the_cut() {
        let mut buffer = CappedBuffer::new(1000);
        buffer.push(b"START");
        for _ in 0..10_000 {
            buffer.push(&[b'x'; 100]);
        }
        buffer.push(b"END");
        let out = buffer.finish(&Redactor::default());
        assert!(out.text.starts_with("START"));
        assert!(out.text.ends_with("END"));
        assert!(out.text.contains("output truncated by taskmaster"));
        assert!(out.text.len() < 1000 + 200, "{}", out.text.len());
        assert_eq!(out.truncated_bytes, 1_000_008 - 1000);
    }

    #[test]
    fn a_token_straddling_the_cut_is_redacted_whole() {
        let token = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
        let mut text = "a".repeat(495);
        text.push_str(token);
        text.push_str(&"b".repeat(5000));
        let out = Output::from_text(&text, &Redactor::default(), 1000);
        assert!(!out.text.contains("ghp_"), "{}", &out.text[..600]);
        assert!(!out.text.contains("0123456789abcdefghij"));
    }

    #[test]
    fn cuts_on_char_boundaries() {
        let text = "é".repeat(3000);
        let out = Output::from_text(&text, &Redactor::default(), 1001);
        assert!(out.is_truncated());
        assert!(out.text.starts_with('é') && out.text.ends_with('é'));
    }
}
