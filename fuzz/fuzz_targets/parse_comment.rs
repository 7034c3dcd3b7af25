//! The comment-command parser never panics, and every command it returns
//! sits at the start of a line of its own (after spaces or tabs only);
//! quoting the whole comment (as replies do) silences every command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskmaster::command::{parse_comment, quote};

const SLUG: &str = "taskmaster";

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let found = parse_comment(body, SLUG);
    let lines: Vec<&str> = body.split('\n').collect();
    for command in &found {
        let line = lines[command.line - 1]
            .trim_end_matches('\r')
            .trim_start_matches([' ', '\t']);
        assert!(
            line.starts_with(&command.text),
            "{:?} is not at the start of its line {:?}",
            command.text,
            line
        );
        assert!(
            command.text.starts_with('/')
                || command.text.to_lowercase().starts_with(&format!("@{SLUG}")),
            "{:?}",
            command.text
        );
    }
    assert!(
        parse_comment(&quote(body), SLUG).is_empty(),
        "a quoted comment still has commands: {:?}",
        quote(body)
    );
});
