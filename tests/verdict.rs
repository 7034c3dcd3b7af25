//! Property tests of the verdict reader: whatever an agent prints — hostile
//! markdown, many blocks, huge blocks, invalid UTF-8 made lossy — reading it
//! never panics, takes time bounded by its size, and what it accepts is
//! within the schema's bounds.

use proptest::prelude::*;
use taskmaster::verdict::{MAX_FINDINGS, last_json_block, parse};

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("```json\n".to_owned()),
        Just("```\n".to_owned()),
        Just("````json\n".to_owned()),
        Just("````\n".to_owned()),
        Just("```rust\n".to_owned()),
        Just("{\"verdict\":\"pass\",\"summary\":\"ok\",\"findings\":[]}\n".to_owned()),
        Just("{\"verdict\":\"fail\",\"summary\":\"x\",\"findings\":[{\"path\":\"a\",\"start_line\":1,\"end_line\":1,\"severity\":\"warning\",\"title\":\"t\",\"message\":\"m\"}]}".to_owned()),
        Just("\r\n".to_owned()),
        Just("   ```json   \n".to_owned()),
        "[^\u{0}]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn reading_any_answer_never_panics_and_accepts_only_bounded_reports(
        parts in proptest::collection::vec(fragment(), 0..30)
    ) {
        let text: String = parts.concat();
        let _ = last_json_block(&text);
        if let Ok(report) = parse(&text) {
            prop_assert!(report.findings.len() <= MAX_FINDINGS);
            for f in &report.findings {
                prop_assert!(f.start_line >= 1 && f.start_line <= f.end_line);
                prop_assert!(!f.path.starts_with('/'));
            }
        }
    }
}

#[test]
fn a_huge_answer_is_read_in_bounded_time() {
    // 20 MB of open fences and junk, then a valid block at the end.
    let mut text = "```json\n{\n".repeat(1_000_000);
    text.push_str(
        "\n```\n```json\n{\"verdict\":\"neutral\",\"summary\":\"s\",\"findings\":[]}\n```\n",
    );
    let started = std::time::Instant::now();
    let report = parse(&text).unwrap();
    assert_eq!(report.verdict.as_str(), "neutral");
    // Only the tail is looked at: far below a second even in debug builds.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Thousands of findings are refused, not stored.
    let finding = r#"{"path":"a.rs","start_line":1,"end_line":1,"severity":"notice","title":"t","message":"m"}"#;
    let many = format!(
        "```json\n{{\"verdict\":\"fail\",\"summary\":\"s\",\"findings\":[{}]}}\n```",
        vec![finding; MAX_FINDINGS + 1].join(",")
    );
    assert!(parse(&many).unwrap_err().contains("more than"));
}
