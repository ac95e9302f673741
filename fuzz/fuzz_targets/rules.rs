//! A rule file of arbitrary bytes: parsing never panics; a refused file's errors point into the
//! text; an accepted file's rules are usable (positive limits and windows, JSON and summary render,
//! lookups with the file's own words never panic and return rules with a positive window).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::Snapshot;

const FILE: &str = "rules.yaml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Snapshot::parse(FILE, &text) {
        Err(errors) => check_errors(&text, &errors),
        Ok(snapshot) => check_snapshot(&text, &snapshot),
    }
});

fn check_errors(text: &str, errors: &[tollgate::config::ConfigError]) {
    assert!(
        !errors.is_empty(),
        "a refused file reports at least one error"
    );
    let lines = yaml_lines(text);
    for e in errors {
        assert_eq!(e.file.to_str(), Some(FILE), "{e}");
        assert!(
            e.line >= 1 && e.line <= lines.len() + 1,
            "line out of the text: {e}"
        );
        let width = lines.get(e.line - 1).map_or(0, |l| l.chars().count());
        assert!(
            e.column >= 1 && e.column <= width + 1,
            "column out of line {}: {e}",
            e.line
        );
        assert!(!e.message.is_empty(), "{e}");
    }
}

/// The text's lines as YAML counts them: `\r\n`, `\r`, `\n`, NEL, LS and PS each end a line.
fn yaml_lines(text: &str) -> Vec<String> {
    text.replace("\r\n", "\n")
        .split(['\r', '\n', '\u{85}', '\u{2028}', '\u{2029}'])
        .map(str::to_owned)
        .collect()
}

fn check_snapshot(text: &str, snapshot: &Snapshot) {
    let _ = snapshot.to_json();
    let _ = snapshot.summary();
    let mut count = 0;
    for domain in snapshot.domains() {
        assert!(!domain.is_empty());
        assert!(snapshot.source(domain).is_some());
        for rule in snapshot.rules(domain) {
            count += 1;
            if let Some(q) = &rule.quota {
                assert!(q.limit() > 0 && !q.window().is_zero(), "{rule:?}");
            }
            assert!(!(rule.unlimited && rule.quota.is_some()), "{rule:?}");
        }
    }
    assert_eq!(count, snapshot.rule_count());

    // Look up descriptors made of the file's own words, one to three levels deep.
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || ":{}[],'\"#".contains(c))
        .filter(|w| !w.is_empty())
        .take(16)
        .collect();
    for domain in snapshot.domains() {
        for depth in 1..=3 {
            for pair in words.windows(2 * depth) {
                let entries: Vec<(&str, &str)> = pair.chunks(2).map(|c| (c[0], c[1])).collect();
                if let Some(m) = snapshot.find(domain, &entries) {
                    assert_eq!(m.parts.len(), entries.len());
                    if let Some(q) = &m.rule.quota {
                        assert!(!q.window().is_zero(), "{:?}", m.rule);
                    }
                    let _ = m.metric_key();
                }
            }
        }
    }
}
