use std::path::Path;
use std::time::Duration;

use super::*;
use crate::algorithm::{Algorithm, QuotaError};

fn parse(text: &str) -> Snapshot {
    match Snapshot::parse("t.yaml", text) {
        Ok(s) => s,
        Err(e) => panic!("{e:#?}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match Snapshot::parse("t.yaml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn error(text: &str) -> String {
    let mut e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.remove(0)
}

/// The rule id matched by `entries` in domain `d`.
fn id(s: &Snapshot, entries: &[(&str, &str)]) -> Option<String> {
    s.find("d", entries).map(|m| m.rule.id.clone())
}

fn parts(s: &Snapshot, entries: &[(&str, &str)]) -> Vec<(String, String)> {
    s.find("d", entries)
        .map(|m| {
            m.parts
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn metric(s: &Snapshot, entries: &[(&str, &str)]) -> String {
    s.find("d", entries)
        .map(|m| m.metric_key().into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- validation errors

#[test]
fn malformed_yaml() {
    assert_eq!(
        error("domain: d\ndescriptors:\n  - key: a\n   value: b\n"),
        "t.yaml:4:4: did not find expected '-' indicator, while parsing a block collection at 3:3"
    );
    assert_eq!(
        error("domain: d\ndescriptors: [{key: a}\n"),
        "t.yaml:3:1: did not find expected ',' or ']', while parsing a flow sequence at 2:14"
    );
}

#[test]
fn unknown_fields_anywhere() {
    let e = error("domain: d\nfoo: 1\n");
    assert!(e.starts_with("t.yaml:2:1: unknown field `foo`"), "{e}");
    let e = error("domain: d\ndescriptors:\n  - key: a\n    limit: 3\n");
    assert!(
        e.starts_with("t.yaml:4:5: descriptors[0]: unknown field `limit`"),
        "{e}"
    );
    let e = error(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      requests_per_second: 3\n",
    );
    assert!(
        e.starts_with("t.yaml:6:7: descriptors[0].rate_limit: unknown field `requests_per_second`"),
        "{e}"
    );
    let e = error(
        "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unlimited: true\n      replaces:\n        - nme: x\n",
    );
    assert!(e.starts_with("t.yaml:7:11: "), "{e}");
    assert!(e.contains("unknown field `nme`"), "{e}");
}

#[test]
fn wrong_types() {
    let e = error("domain: d\ndescriptors: nope\n");
    assert!(
        e.starts_with("t.yaml:2:14: descriptors: invalid type"),
        "{e}"
    );
    assert_eq!(
        error("- a\n- b\n"),
        "t.yaml:1:1: invalid type: sequence, expected a mapping with `domain` and `descriptors`"
    );
    assert_eq!(
        error("domain: d\ndescriptors:\n  - just-a-key\n"),
        "t.yaml:3:5: descriptors[0]: invalid type: string \"just-a-key\", expected a descriptor: a mapping with `key`"
    );
    let e = error("domain: d\ndescriptors:\n  - key: a\n    shadow_mode: maybe\n");
    assert!(e.starts_with("t.yaml:4:18: "), "{e}");
}

#[test]
fn empty_or_missing_domain() {
    assert_eq!(
        error("domain: \"\"\n"),
        "t.yaml:1:9: the domain must not be empty (every file needs `domain: <name>`)"
    );
    assert_eq!(
        error("descriptors: []\n"),
        "t.yaml:1:1: the domain must not be empty (every file needs `domain: <name>`)"
    );
    assert_eq!(
        error("# nothing here\n\n"),
        "t.yaml:1:1: the file is empty: it needs at least `domain: <name>`"
    );
}

#[test]
fn missing_or_empty_key() {
    assert_eq!(
        error("domain: d\ndescriptors:\n  - value: a\n"),
        "t.yaml:3:5: the descriptor has an empty key"
    );
    assert_eq!(
        error("domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: ''\n"),
        "t.yaml:5:14: the descriptor has an empty key"
    );
}

const RL: &str = "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n";

fn rl_error(body: &str) -> String {
    error(&format!("{RL}{body}"))
}

#[test]
fn unknown_unit_and_algorithm() {
    assert_eq!(
        rl_error("      unit: fortnight\n      requests_per_unit: 1\n"),
        "t.yaml:5:13: unknown unit `fortnight` (expected second, minute, hour, day, week, month or year)"
    );
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: 1\n      algorithm: gcra\n"),
        format!(
            "t.yaml:7:18: {}",
            QuotaError::UnknownAlgorithm("gcra".into())
        )
    );
}

#[test]
fn bad_requests_per_unit() {
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: -5\n"),
        "t.yaml:6:26: requests_per_unit must be a whole number (0 bans), not `-5`"
    );
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: 2.5\n"),
        "t.yaml:6:26: requests_per_unit must be a whole number (0 bans), not `2.5`"
    );
    assert_eq!(
        rl_error("      unit: second\n"),
        "t.yaml:5:7: a rate limit needs `requests_per_unit` unless it is `unlimited: true`"
    );
    assert_eq!(
        rl_error(
            "      unit: second\n      requests_per_unit: 200000\n      algorithm: sliding_log\n"
        ),
        format!(
            "t.yaml:6:26: {}",
            QuotaError::SlidingLogLimitTooLarge(200_000)
        )
    );
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: 4294967296\n"),
        format!(
            "t.yaml:6:26: {}",
            QuotaError::LimitTooLarge {
                field: "limit",
                value: 1 << 32
            }
        )
    );
}

#[test]
fn unit_and_window() {
    assert_eq!(
        rl_error("      unit: second\n      window: 2s\n      requests_per_unit: 1\n"),
        "t.yaml:6:7: give either `unit` or `window`, not both"
    );
    assert_eq!(
        rl_error("      requests_per_unit: 1\n"),
        "t.yaml:5:7: a rate limit needs `unit` (or `window`) unless it is `unlimited: true`"
    );
    assert_eq!(
        rl_error("      window: 10 parsecs\n      requests_per_unit: 1\n"),
        "t.yaml:5:15: invalid duration `10 parsecs` (expected a whole number and a unit out of ns, us, ms, s, m, h, d, w, e.g. 250ms, 90s, 2h, 1d)"
    );
    assert_eq!(
        rl_error("      window: 0s\n      requests_per_unit: 1\n"),
        format!("t.yaml:5:15: {}", QuotaError::ZeroWindow)
    );
    assert_eq!(
        rl_error("      window: 500d\n      requests_per_unit: 1\n"),
        format!("t.yaml:5:15: {}", QuotaError::WindowTooLong)
    );
}

#[test]
fn burst_only_for_buckets() {
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: 5\n      burst: 10\n"),
        format!(
            "t.yaml:7:14: {}",
            QuotaError::BurstNotApplicable(Algorithm::SlidingWindow)
        )
    );
    assert_eq!(
        rl_error(
            "      unit: second\n      requests_per_unit: 5\n      algorithm: token_bucket\n      burst: 0\n"
        ),
        format!("t.yaml:8:14: {}", QuotaError::ZeroBurst)
    );
    assert_eq!(
        rl_error(
            "      unit: second\n      requests_per_unit: 5\n      algorithm: token_bucket\n      burst: 4294967296\n"
        ),
        format!(
            "t.yaml:8:14: {}",
            QuotaError::LimitTooLarge {
                field: "burst",
                value: 1 << 32
            }
        )
    );
}

#[test]
fn unlimited_takes_no_unit_but_ignores_requests_per_unit() {
    // envoyproxy/ratelimit's unlimited_with_unit.yaml is refused; a requests_per_unit beside
    // `unlimited: true` loads there and here, and limits nothing.
    let s = parse(&format!(
        "{RL}      unlimited: true\n      requests_per_unit: 5\n"
    ));
    let rule = s.rules("d").next().unwrap();
    assert!(rule.unlimited);
    assert_eq!(rule.quota, None);
    assert_eq!(
        rl_error("      unit: SECOND\n      unlimited: true\n"),
        "t.yaml:5:7: an `unlimited: true` rate limit takes no `unit`"
    );
}

#[test]
fn duplicate_descriptors_among_siblings() {
    let text = "domain: d\ndescriptors:\n  - key: a\n    value: x\n    rate_limit: {unit: second, requests_per_unit: 1}\n  - key: a\n    value: x\n    rate_limit: {unit: minute, requests_per_unit: 1}\n";
    assert_eq!(
        error(text),
        "t.yaml:7:12: duplicate descriptor `a_x`: an earlier sibling has the same key and value"
    );
    let text = "domain: d\ndescriptors:\n  - key: a\n  - key: b\n  - key: a\n";
    assert_eq!(
        error(text),
        "t.yaml:5:10: duplicate descriptor `a`: an earlier sibling has the same key and value"
    );
    // The same key and value under different parents is fine.
    parse(
        "domain: d\ndescriptors:\n  - key: p\n    descriptors: [{key: a}]\n  - key: q\n    descriptors: [{key: a}]\n",
    );
}

#[test]
fn replaces_must_name_a_known_limit() {
    let text = "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      name: base\n      unit: second\n      requests_per_unit: 1\n  - key: b\n    rate_limit:\n      unit: second\n      requests_per_unit: 2\n      replaces:\n        - name: base\n        - name: bass\n";
    assert_eq!(
        error(text),
        "t.yaml:14:17: replaces `bass`, but no rate limit in domain `d` has that name"
    );
    assert_eq!(
        rl_error("      name: me\n      unlimited: true\n      replaces:\n        - name: me\n"),
        "t.yaml:8:17: the rate limit `me` cannot replace itself"
    );
    assert_eq!(
        rl_error("      unlimited: true\n      replaces:\n        - name: ''\n"),
        "t.yaml:7:17: a `replaces` entry needs a name"
    );
}

#[test]
fn every_problem_of_a_file_is_reported() {
    let text = "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: eon\n      requests_per_unit: 0\n  - key: ''\n  - key: b\n    rate_limit:\n      window: 1y\n      requests_per_unit: 1\n";
    let e = errors(text);
    assert_eq!(
        e.iter()
            .map(|e| e.split(": ").next().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["t.yaml:5:13", "t.yaml:7:10", "t.yaml:10:15"],
        "{e:#?}"
    );
}

#[test]
fn errors_display_as_file_line_column_message() {
    let e = ConfigError {
        file: "rules/api.yaml".into(),
        line: 3,
        column: 7,
        message: "boom".into(),
    };
    assert_eq!(e.to_string(), "rules/api.yaml:3:7: boom");
}

// ---------------------------------------------------------------- rules as loaded

#[test]
fn rule_fields() {
    let s = parse(
        "domain: d
descriptors:
  - key: a
    shadow_mode: true
    quota_mode: true
    detailed_metric: true
    value_to_metric: true
    rate_limit:
      name: lim
      unit: MINUTE
      requests_per_unit: 30
  - key: b
    rate_limit:
      window: 250ms
      requests_per_unit: 4
      algorithm: token_bucket
      burst: 8
  - key: c
    rate_limit:
      unlimited: true
      replaces: [{name: lim}]
",
    );
    let a = s.find("d", &[("a", "1")]).unwrap().rule;
    assert_eq!(a.id, "d.a");
    assert_eq!(a.name.as_deref(), Some("lim"));
    assert_eq!(a.unit, Some(Unit::Minute));
    let q = a.quota.unwrap();
    assert_eq!(
        (q.algorithm(), q.limit(), q.window(), q.burst()),
        (Algorithm::SlidingWindow, 30, Duration::from_secs(60), 30)
    );
    assert!(a.shadow_mode && a.quota_mode && a.detailed_metric && a.value_to_metric);
    assert!(!a.unlimited);

    let b = s.find("d", &[("b", "1")]).unwrap().rule;
    assert_eq!(b.unit, None);
    let q = b.quota.unwrap();
    assert_eq!(
        (q.algorithm(), q.limit(), q.window(), q.burst()),
        (Algorithm::TokenBucket, 4, Duration::from_millis(250), 8)
    );
    assert!(!b.shadow_mode && !b.quota_mode && !b.detailed_metric);

    let c = s.find("d", &[("c", "1")]).unwrap().rule;
    assert!(c.unlimited);
    assert_eq!(c.quota, None);
    assert_eq!(c.replaces, ["lim"]);

    assert_eq!(s.rule_count(), 3);
    assert_eq!(s.domains().collect::<Vec<_>>(), ["d"]);
    assert_eq!(s.rules("d").count(), 3);
    assert_eq!(s.source("d"), Some(Path::new("t.yaml")));
    assert_eq!(s.summary(), "d: 3 rules (t.yaml)\n");
}

#[test]
fn scalars_of_any_type_are_values() {
    let s = parse(
        "domain: 42\ndescriptors:\n  - key: port\n    value: 8080\n    rate_limit: {unit: second, requests_per_unit: '7'}\n",
    );
    let m = s.find("42", &[("port", "8080")]).unwrap();
    assert_eq!(m.rule.id, "42.port_8080");
    assert_eq!(m.rule.quota.unwrap().limit(), 7);
}

// ---------------------------------------------------------------- matching

const TREE: &str = "domain: d
descriptors:
  - key: path
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: /api/*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: '*'
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: path
    value: /api/health
    rate_limit: {unit: second, requests_per_unit: 4}
  - key: role
    value: '*-admin'
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: tag
    value: 'a*b*c'
    rate_limit: {unit: second, requests_per_unit: 6}
  - key: plan
    value: premium
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 7}
  - key: plan
    descriptors:
      - key: user
        value: root
        rate_limit: {unit: second, requests_per_unit: 8}
      - key: user
  - key: leaf
    value: x
    rate_limit: {unit: second, requests_per_unit: 9}
  - key: leaf
    descriptors:
      - key: more
        rate_limit: {unit: second, requests_per_unit: 10}
";

#[test]
fn exact_beats_wildcard_beats_key_only() {
    let s = parse(TREE);
    assert_eq!(
        id(&s, &[("path", "/api/health")]).unwrap(),
        "d.path_/api/health"
    );
    assert_eq!(id(&s, &[("path", "/api/users")]).unwrap(), "d.path_/api/*");
    // Wildcards are tried in file order: `/api/*` before `*`; `*` catches the rest, so the
    // key-only rule is never reached for this key.
    assert_eq!(id(&s, &[("path", "/web")]).unwrap(), "d.path_*");
    assert_eq!(id(&s, &[("path", "")]).unwrap(), "d.path_*");
}

#[test]
fn wildcard_forms() {
    let s = parse(TREE);
    assert_eq!(id(&s, &[("role", "ops-admin")]).unwrap(), "d.role_*-admin");
    assert_eq!(id(&s, &[("role", "-admin")]).unwrap(), "d.role_*-admin");
    assert_eq!(id(&s, &[("role", "admin")]), None);
    assert_eq!(id(&s, &[("tag", "a1b2c")]).unwrap(), "d.tag_a*b*c");
    assert_eq!(id(&s, &[("tag", "abc")]).unwrap(), "d.tag_a*b*c");
    assert_eq!(id(&s, &[("tag", "acb")]), None);
    assert_eq!(id(&s, &[("tag", "a1b2c3")]), None);
}

#[test]
fn key_only_matches_any_value_with_its_own_counter() {
    let s = parse(TREE);
    assert_eq!(id(&s, &[("plan", "free"), ("user", "bob")]), None);
    assert_eq!(
        id(&s, &[("plan", "premium"), ("user", "bob")]).unwrap(),
        "d.plan_premium.user"
    );
    assert_eq!(
        id(&s, &[("plan", "free"), ("user", "root")]).unwrap(),
        "d.plan.user_root"
    );
    assert_eq!(
        parts(&s, &[("plan", "premium"), ("user", "bob")]),
        [
            ("plan".into(), "premium".into()),
            ("user".into(), "bob".into())
        ]
    );
    assert_ne!(
        parts(&s, &[("plan", "premium"), ("user", "bob")]),
        parts(&s, &[("plan", "premium"), ("user", "eve")])
    );
}

#[test]
fn depth_must_equal_the_number_of_entries() {
    let s = parse(TREE);
    // Longer than the rule.
    assert_eq!(id(&s, &[("path", "/x"), ("user", "bob")]), None);
    // Shorter than the rule: `plan_premium` has no rate_limit of its own.
    assert_eq!(id(&s, &[("plan", "premium")]), None);
    // A node without rate_limit at the final depth.
    assert_eq!(id(&s, &[("plan", "free"), ("user", "alice")]), None);
    assert_eq!(id(&s, &[]), None);
    assert_eq!(
        s.find("other", &[("path", "/x")])
            .map(|m| m.rule.id.clone()),
        None
    );
    assert_eq!(id(&s, &[("nokey", "x")]), None);
}

#[test]
fn the_preferred_node_is_final_as_in_envoyproxy() {
    let s = parse(TREE);
    // `leaf_x` wins level 1 and has no children, so `leaf` + `more` is not tried.
    assert_eq!(id(&s, &[("leaf", "x"), ("more", "1")]), None);
    assert_eq!(
        id(&s, &[("leaf", "y"), ("more", "1")]).unwrap(),
        "d.leaf.more"
    );
}

#[test]
fn share_threshold_counts_all_matching_values_together() {
    let s = parse(
        "domain: d
descriptors:
  - key: file
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: model
    value: models/*
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: path
    value: /v1/*
    share_threshold: true
    descriptors:
      - key: user
        rate_limit: {unit: hour, requests_per_unit: 100}
",
    );
    let a = parts(&s, &[("file", "files/a.pdf")]);
    assert_eq!(a, [("file".into(), "files/*".into())]);
    assert_eq!(a, parts(&s, &[("file", "files/b.csv")]));
    let m = parts(&s, &[("model", "models/x")]);
    assert_eq!(m, [("model".into(), "models/x".into())]);
    assert_ne!(m, parts(&s, &[("model", "models/y")]));
    assert_eq!(
        parts(&s, &[("path", "/v1/a"), ("user", "bob")]),
        [
            ("path".into(), "/v1/*".into()),
            ("user".into(), "bob".into())
        ]
    );
    assert_eq!(metric(&s, &[("file", "files/a.pdf")]), "d.file_files/*");
}

#[test]
fn metric_keys() {
    let s = parse(
        "domain: d
descriptors:
  - key: user
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: ip
    detailed_metric: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        value: GET
        descriptors:
          - key: user_id
            rate_limit: {unit: minute, requests_per_unit: 60}
  - key: path
    value: /api/*
    value_to_metric: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: dir
    value: /d/*
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: team
    descriptors:
      - key: path
        value: /api/*
        detailed_metric: true
        rate_limit: {unit: second, requests_per_unit: 1}
",
    );
    let plain = s.find("d", &[("user", "alice")]).unwrap().metric_key();
    assert!(matches!(plain, Cow::Borrowed("d.user")));
    assert_eq!(metric(&s, &[("ip", "10.0.0.1")]), "d.ip_10.0.0.1");
    assert_eq!(
        metric(
            &s,
            &[("route", "/pay"), ("method", "GET"), ("user_id", "u1")]
        ),
        "d.route_/pay.method_GET.user_id"
    );
    assert_eq!(metric(&s, &[("path", "/api/x")]), "d.path_/api/x");
    assert_eq!(metric(&s, &[("dir", "/d/x")]), "d.dir_/d/*");
    assert_eq!(
        metric(&s, &[("team", "red"), ("path", "/api/x")]),
        "d.team_red.path_/api/x"
    );
    assert_eq!(metric(&s, &[("ip", "")]), "d.ip");
}

#[test]
fn to_json_lists_domains_and_rules() {
    let s = parse(
        "domain: d\ndescriptors:\n  - key: a\n    value: x\n    rate_limit: {unit: second, requests_per_unit: 3, name: n}\n  - key: b\n    rate_limit: {unlimited: true}\n",
    );
    let j = s.to_json();
    let rules = &j["domains"][0]["rules"];
    assert_eq!(j["domains"][0]["domain"], "d");
    assert_eq!(j["domains"][0]["file"], "t.yaml");
    assert_eq!(rules[0]["id"], "d.a_x");
    assert_eq!(rules[0]["name"], "n");
    assert_eq!(rules[0]["unit"], "second");
    assert_eq!(rules[0]["quota"]["requests_per_unit"], 3);
    assert_eq!(rules[0]["quota"]["algorithm"], "sliding_window");
    assert_eq!(rules[0]["quota"]["window_ms"], 1000.0);
    assert_eq!(rules[0]["descriptor"][0]["value"], "x");
    assert_eq!(rules[1]["unlimited"], true);
    assert!(rules[1]["quota"].is_null());
    assert_eq!(
        Snapshot::empty().to_json()["domains"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
}

// ---------------------------------------------------------------- files and directories

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn a_directory_holds_many_domains() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "api.yaml",
        "domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: second, requests_per_unit: 5}\n",
    );
    write(
        dir.path(),
        "web.yml",
        "domain: web\ndescriptors:\n  - key: ip\n    rate_limit: {unit: minute, requests_per_unit: 60}\n",
    );
    write(dir.path(), "notes.txt", "not yaml at all: [");
    write(dir.path(), ".hidden.yaml", "broken: [");
    let s = Snapshot::load(dir.path()).unwrap();
    assert_eq!(s.domains().collect::<Vec<_>>(), ["api", "web"]);
    assert_eq!(s.find("api", &[("user", "u")]).unwrap().rule.id, "api.user");
    assert_eq!(
        s.find("web", &[("ip", "1.2.3.4")]).unwrap().rule.id,
        "web.ip"
    );
    assert_eq!(s.source("web"), Some(dir.path().join("web.yml").as_path()));
    // A single file loads too.
    let one = Snapshot::load(&dir.path().join("api.yaml")).unwrap();
    assert_eq!(one.domains().collect::<Vec<_>>(), ["api"]);
}

#[test]
fn a_domain_defined_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", "domain: api\n");
    write(dir.path(), "b.yaml", "# again\ndomain: api\n");
    let e = Snapshot::load(dir.path()).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        format!(
            "{}:2:9: duplicate domain `api`: already defined in {}",
            dir.path().join("b.yaml").display(),
            dir.path().join("a.yaml").display()
        )
    );
}

#[test]
fn errors_of_every_file_are_returned() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", "domain: a\nbogus: 1\n");
    write(
        dir.path(),
        "b.yaml",
        "domain: b\ndescriptors:\n  - key: ''\n",
    );
    write(dir.path(), "c.yaml", "domain: c\n");
    let e = Snapshot::load(dir.path()).unwrap_err();
    let shown: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    assert!(shown[0].starts_with(&format!("{}:2:1: ", dir.path().join("a.yaml").display())));
    assert!(shown[1].starts_with(&format!("{}:3:10: ", dir.path().join("b.yaml").display())));
}

#[test]
fn a_missing_path_is_an_error() {
    let e = Snapshot::load(Path::new("/nonexistent/tollgate/rules")).unwrap_err();
    assert!(
        e[0].to_string()
            .starts_with("/nonexistent/tollgate/rules:1:1: cannot read")
    );
}

#[cfg(unix)]
#[test]
fn kubernetes_configmap_layout_is_read_once_through_its_symlinks() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2024_01_01_00_00_00.1");
    std::fs::create_dir(&data).unwrap();
    write(&data, "rules.yaml", "domain: api\n");
    symlink("..2024_01_01_00_00_00.1", dir.path().join("..data")).unwrap();
    symlink("..data/rules.yaml", dir.path().join("rules.yaml")).unwrap();
    let s = Snapshot::load(dir.path()).unwrap();
    assert_eq!(s.domains().collect::<Vec<_>>(), ["api"]);
    assert_eq!(
        s.source("api"),
        Some(dir.path().join("rules.yaml").as_path())
    );
}

#[test]
fn visible_subdirectories_are_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("team")).unwrap();
    write(&dir.path().join("team"), "x.yaml", "domain: x\n");
    write(dir.path(), "y.yaml", "domain: y\n");
    let s = Snapshot::load(dir.path()).unwrap();
    assert_eq!(s.domains().collect::<Vec<_>>(), ["x", "y"]);
}

// ---------------------------------------------------------------- shipped files

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_example_config_loads() {
    let s = match Snapshot::load(&repo("config/example.yaml")) {
        Ok(s) => s,
        Err(e) => panic!("{e:#?}"),
    };
    assert_eq!(s.domains().collect::<Vec<_>>(), ["api"]);
    let rule = |entries: &[(&str, &str)]| s.find("api", entries).map(|m| m.rule.clone());
    let user = rule(&[("user_id", "alice")]).unwrap();
    assert_eq!(user.quota.unwrap().algorithm(), Algorithm::SlidingWindow);
    let premium = rule(&[("plan", "premium"), ("user_id", "alice")]).unwrap();
    assert!(premium.quota.unwrap().limit() > user.quota.unwrap().limit());
    let pay = rule(&[("endpoint", "/pay")]).unwrap().quota.unwrap();
    assert_eq!(pay.algorithm(), Algorithm::TokenBucket);
    assert!(pay.burst() > pay.limit());
    let export = rule(&[("user_id", "alice"), ("action", "export")]).unwrap();
    let q = export.quota.unwrap();
    assert_eq!(
        (q.algorithm(), q.limit(), q.window()),
        (Algorithm::LeakyBucket, 1, Duration::from_secs(3600))
    );
    assert!(rule(&[("client", "internal-health")]).unwrap().unlimited);
    assert!(s.rules("api").any(|r| r.shadow_mode));
    assert!(s.rules("api").any(|r| r.detailed_metric));
    assert!(s.rules("api").any(|r| !r.replaces.is_empty()));
    assert!(
        rule(&[("endpoint", "/admin/users")])
            .unwrap()
            .id
            .contains('*')
    );
}

#[test]
fn envoyproxy_ratelimit_readme_configs_load_and_match_as_documented() {
    let s = match Snapshot::load(&repo("tests/fixtures/envoyproxy")) {
        Ok(s) => s,
        Err(e) => panic!("{e:#?}"),
    };
    let limit = |domain: &str, entries: &[(&str, &str)]| {
        s.find(domain, entries)
            .and_then(|m| m.rule.quota)
            .map(|q| (q.limit(), q.window().as_secs()))
    };
    // Example 1: two values of one key, each 500/s.
    assert_eq!(limit("mongo_cps", &[("database", "users")]), Some((500, 1)));
    assert_eq!(
        limit("mongo_cps", &[("database", "default")]),
        Some((500, 1))
    );
    assert_eq!(limit("mongo_cps", &[("database", "other")]), None);
    // Example 2: nested key-only counts per number; the top-level one too.
    assert_eq!(
        limit(
            "messaging",
            &[("message_type", "marketing"), ("to_number", "2061111111")]
        ),
        Some((5, 86_400))
    );
    assert_eq!(
        limit("messaging", &[("to_number", "2061111111")]),
        Some((100, 86_400))
    );
    assert_eq!(limit("messaging", &[("message_type", "marketing")]), None);
    // Example 4: depth must match.
    assert_eq!(
        limit("example4", &[("key", "value"), ("subkey", "subvalue")]),
        Some((300, 1))
    );
    assert_eq!(limit("example4", &[("key", "value")]), None);
    // Example 5: unlimited.
    assert!(s.find("internal", &[("ldap", "x")]).unwrap().rule.unlimited);
    assert_eq!(limit("internal", &[("azure", "x")]), Some((100, 60)));
    // Example 6: shadow mode on one user.
    let a = s
        .find(
            "example6",
            &[("service", "auth-service"), ("user", "user-a")],
        )
        .unwrap();
    assert!(a.rule.shadow_mode);
    let b = s
        .find(
            "example6",
            &[("service", "auth-service"), ("user", "user-b")],
        )
        .unwrap();
    assert!(!b.rule.shadow_mode);
    assert_eq!(b.rule.quota.map(|q| q.limit()), Some(20));
    // Example 7: replaces.
    let r = s
        .find("example7", &[("key_2", "value_2"), ("user", "bkthomps")])
        .unwrap();
    assert_eq!(r.rule.replaces, ["specific_limit"]);
    let n = s
        .find("example7", &[("key_1", "value_1"), ("user", "bkthomps")])
        .unwrap();
    assert_eq!(n.rule.name.as_deref(), Some("specific_limit"));
    // Example 8: detailed metrics for unspecified values.
    let m = s.find("example8", &[("foo", "foo-1")]).unwrap();
    assert_eq!(m.metric_key(), "example8.foo_foo-1");
    // Example 9: wildcard values.
    assert_eq!(limit("example9", &[("foo", "foo-bar")]), Some((10, 60)));
    assert_eq!(limit("example9", &[("foo", "foo-baz")]), Some((10, 60)));
    assert_eq!(limit("example9", &[("foo", "bar")]), Some((20, 60)));
}

#[test]
fn envoyproxy_ratelimit_style_file_loads_and_matches() {
    let s = match Snapshot::load(&repo("tests/fixtures/envoyproxy_ratelimit.yaml")) {
        Ok(s) => s,
        Err(e) => panic!("{e:#?}"),
    };
    let limit = |entries: &[(&str, &str)]| {
        s.find("rl", entries)
            .and_then(|m| m.rule.quota)
            .map(|q| (q.limit(), q.window().as_secs()))
    };
    assert_eq!(limit(&[("foo", "x")]), Some((2, 60)));
    assert_eq!(limit(&[("foo", "x"), ("bar", "y")]), Some((3, 60)));
    assert_eq!(limit(&[("foo", "x"), ("bar", "bkthomps")]), Some((1, 60)));
    assert_eq!(limit(&[("foo", "x"), ("baz", "y")]), Some((1, 1)));
    assert!(
        s.find("rl", &[("foo", "x"), ("baz", "shady")])
            .unwrap()
            .rule
            .shadow_mode
    );
    assert!(
        !s.find("rl", &[("foo", "x"), ("baz", "not-so-shady")])
            .unwrap()
            .rule
            .shadow_mode
    );
    assert!(
        s.find("rl", &[("foo", "x"), ("bay", "y")])
            .unwrap()
            .rule
            .unlimited
    );
    assert!(s.find("rl", &[("qux", "y")]).unwrap().rule.unlimited);
    assert_eq!(limit(&[("foo", "x"), ("bar", "y"), ("baz", "z")]), None);
    let account = s.find("rl", &[("category", "account")]).unwrap().rule;
    assert_eq!(account.replaces, ["bkthomps", "fake_name"]);
    assert_eq!(
        s.find(
            "rl",
            &[("source_cluster", "proxy"), ("destination_cluster", "fake")]
        )
        .unwrap()
        .rule
        .name
        .as_deref(),
        Some("fake_name")
    );
    assert_eq!(
        limit(&[
            ("source_cluster", "proxy"),
            ("destination_cluster", "other")
        ]),
        None
    );
    assert_eq!(
        s.find("rl", &[("remote_address", "1.2.3.4")])
            .unwrap()
            .rule
            .unit,
        Some(Unit::Second)
    );
    let path = s.find("rl", &[("path", "/foo/bar/baz")]).unwrap();
    assert_eq!(path.rule.id, "rl.path_/foo/bar/*");
    assert_eq!(path.parts[0], ("path", "/foo/bar/baz"));
    assert_eq!(
        s.find("rl", &[("path", "/files/a")]).unwrap().parts[0],
        ("path", "/files/*")
    );
    let user = s
        .find("rl", &[("route", "/pay"), ("user_id", "u1")])
        .unwrap();
    assert!(user.rule.quota_mode);
    assert_eq!(user.rule.unit, Some(Unit::Week));
    assert_eq!(user.metric_key(), "rl.route_/pay.user_id");
    let client = s
        .find("rl", &[("route", "/pay"), ("client", "c1")])
        .unwrap();
    assert_eq!(client.metric_key(), "rl.route_/pay.client_c1");
}

#[test]
fn envoyproxy_blocking_with_zero_requests_loads_as_a_ban() {
    // README example 3 blocks one address with `requests_per_unit: 0`: it loads unchanged, as a rule
    // with no quota that is not unlimited (the limiter answers every hit with OVER_LIMIT).
    let text = "domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10

  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
";
    let s = Snapshot::parse("t.yaml", text).unwrap();
    let banned = s
        .find("edge_proxy_per_ip", &[("remote_address", "50.0.0.5")])
        .unwrap();
    assert_eq!(banned.rule.quota, None);
    assert!(!banned.rule.unlimited);
    assert_eq!(banned.rule.unit, Some(Unit::Second));
    let other = s
        .find("edge_proxy_per_ip", &[("remote_address", "50.0.0.1")])
        .unwrap();
    assert_eq!(other.rule.quota.map(|q| q.limit()), Some(10));
}

// ---------------------------------------------------------------- never panic

mod fuzz {
    use proptest::prelude::*;

    use super::Snapshot;

    const PIECES: &[&str] = &[
        "domain: d\n",
        "domain:\n",
        "descriptors:\n",
        "  - key: a\n",
        "  - key: ''\n",
        "    value: x*\n",
        "    value: '*'\n",
        "    rate_limit:\n",
        "      unit: second\n",
        "      unit: EON\n",
        "      window: 1h30m\n",
        "      window: 99999999999w\n",
        "      requests_per_unit: 0\n",
        "      requests_per_unit: -1\n",
        "      requests_per_unit: 18446744073709551616\n",
        "      requests_per_unit: 5\n",
        "      algorithm: leaky_bucket\n",
        "      burst: 3\n",
        "      unlimited: true\n",
        "      name: n\n",
        "      replaces:\n",
        "        - name: n\n",
        "        - name: m\n",
        "    descriptors:\n",
        "      - key: b\n",
        "    share_threshold: true\n",
        "    shadow_mode: true\n",
        "&a x: *a\n",
        "<<: {}\n",
        "- [\n",
        "\t",
        "{",
        "}",
        ": ",
        "---\n",
        "\u{feff}",
        "é",
        "\"",
        "'",
        "!!binary x\n",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = Snapshot::parse("f.yaml", &text);
        }

        #[test]
        fn yaml_shaped_text_never_panics(idx in proptest::collection::vec(0..PIECES.len(), 0..30)) {
            let text: String = idx.iter().map(|&i| PIECES[i]).collect();
            if let Ok(s) = Snapshot::parse("f.yaml", &text) {
                let _ = s.to_json();
                let _ = s.find("d", &[("a", "x"), ("b", "y")]).map(|m| m.metric_key());
            }
        }
    }
}

#[test]
fn metadata_loads_on_the_rule_it_sits_beside() {
    let s = parse(
        "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n    descriptors:\n      - key: subkey1\n        rate_limit: {unit: second, requests_per_unit: 5}\n        metadata:\n          name: service_1\n      - key: subkey1\n        value: subvalue1\n        rate_limit: {unit: second, requests_per_unit: 10}\n  - key: key2\n    rate_limit: {unit: minute, requests_per_unit: 20}\n    metadata:\n      service_with_quota:\n        name: service_2\n        weight: 2\n        tags: [a, b]\n",
    );
    let m = s
        .find("test-domain", &[("key1", "value1"), ("subkey1", "x")])
        .unwrap();
    let md = m.rule.metadata.as_deref().unwrap();
    assert_eq!(md["name"], "service_1");
    let m = s
        .find(
            "test-domain",
            &[("key1", "value1"), ("subkey1", "subvalue1")],
        )
        .unwrap();
    assert_eq!(m.rule.metadata, None);
    let m = s.find("test-domain", &[("key2", "y")]).unwrap();
    let md = m.rule.metadata.as_deref().unwrap();
    assert_eq!(
        serde_json::Value::Object(md.clone()),
        serde_json::json!({"service_with_quota": {"name": "service_2", "weight": 2, "tags": ["a", "b"]}})
    );
    assert_eq!(m.metric_key(), "test-domain.key2");
    // Metadata must be a mapping.
    assert!(
        error("domain: d\ndescriptors:\n  - key: a\n    metadata: [1]\n").contains("t.yaml:4:")
    );
}

#[test]
fn files_of_one_domain_merge_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.yaml",
        "domain: test-domain\ndescriptors:\n  - key: key1\n    value: value1\n    rate_limit: {unit: minute, requests_per_unit: 10, replaces: [{name: sub}]}\n",
    );
    write(
        dir.path(),
        "b.yaml",
        "domain: test-domain\ndescriptors:\n  - key: key2\n    value: value2\n    rate_limit: {unit: minute, requests_per_unit: 20}\n  - key: key1\n    descriptors:\n      - key: sub\n        rate_limit: {name: sub, unit: second, requests_per_unit: 3}\n",
    );
    let merge = LoadOptions {
        merge_domains: true,
        ..LoadOptions::default()
    };
    let s = Snapshot::load_with(dir.path(), merge).unwrap();
    let limit = |entries: &[(&str, &str)]| {
        s.find("test-domain", entries)
            .and_then(|m| m.rule.quota)
            .map(|q| q.limit())
    };
    assert_eq!(limit(&[("key1", "value1")]), Some(10));
    assert_eq!(limit(&[("key2", "value2")]), Some(20));
    assert_eq!(limit(&[("key1", "other"), ("sub", "x")]), Some(3));
    assert_eq!(limit(&[]), None);
    assert_eq!(s.rule_count(), 3);
    // `replaces` may name a limit of another file of the domain; a name in none is refused.
    assert_eq!(
        s.find("test-domain", &[("key1", "value1")])
            .unwrap()
            .rule
            .replaces,
        ["sub"]
    );
    let lone = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 1, replaces: [{name: nope}]}\n";
    let e = Snapshot::parse_with("t.yaml", lone, merge).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "t.yaml:4:69: replaces `nope`, but no rate limit in domain `d` has that name"
    );
    // Without the option the second file is refused (envoyproxy's duplicate_domain.yaml).
    assert!(Snapshot::load(dir.path()).is_err());
    // A top-level descriptor defined in both files is refused even when merging.
    write(
        dir.path(),
        "c.yaml",
        "domain: test-domain\ndescriptors:\n  - key: key2\n    value: value2\n    rate_limit: {unit: hour, requests_per_unit: 1}\n",
    );
    let e = Snapshot::load_with(dir.path(), merge).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(
        e[0].to_string().contains(
            "c.yaml:1:9: duplicate descriptor `key2_value2` in merged domain `test-domain`"
        ),
        "{}",
        e[0]
    );
}

#[test]
fn the_default_algorithm_applies_to_rules_that_name_none() {
    let text = "domain: d\ndescriptors:\n  - key: a\n    rate_limit: {unit: minute, requests_per_unit: 5}\n  - key: b\n    rate_limit: {unit: minute, requests_per_unit: 5, algorithm: token_bucket}\n";
    let algorithm = |s: &Snapshot, key: &str| {
        s.find("d", &[(key, "x")])
            .and_then(|m| m.rule.quota)
            .map(|q| q.algorithm())
    };
    let s = parse(text);
    assert_eq!(algorithm(&s, "a"), Some(Algorithm::SlidingWindow));
    let fixed = LoadOptions {
        default_algorithm: Algorithm::FixedWindow,
        ..LoadOptions::default()
    };
    let s = Snapshot::parse_with("t.yaml", text, fixed).unwrap();
    assert_eq!(algorithm(&s, "a"), Some(Algorithm::FixedWindow));
    assert_eq!(algorithm(&s, "b"), Some(Algorithm::TokenBucket));
}

#[test]
fn envoyproxy_refusals_are_refused_here_with_a_position() {
    // The peer's non_string_key, non_map_list, misspelled_key(2), replaces_self, replaces_empty,
    // bad_limit_unit, empty_key, empty_domain, duplicate_key and unlimited_with_unit files.
    let cases = [
        ("0.25: test-domain\ndescriptors: []\n", "t.yaml:1:"),
        ("domain: d\ndescriptors:\n  - a\n  - b\n", "t.yaml:3:"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    ratelimit:\n      unit: day\n",
            "t.yaml:4:",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: day\n      requestsperunit: 5\n",
            "t.yaml:6:",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {name: n, unit: day, requests_per_unit: 5, replaces: [{name: n}]}\n",
            "t.yaml:4:",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: day, requests_per_unit: 5, replaces: [{name: ''}]}\n",
            "t.yaml:4:",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 5}\n",
            "t.yaml:4:",
        ),
        ("domain: d\ndescriptors:\n  - key: ''\n", "t.yaml:3:"),
        ("domain: ''\ndescriptors: []\n", "t.yaml:1:"),
        (
            "domain: d\ndescriptors:\n  - key: k\n    value: v\n  - key: k\n    value: v\n",
            "t.yaml:6:",
        ),
        (
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unlimited: true, unit: day}\n",
            "t.yaml:4:",
        ),
    ];
    for (text, at) in cases {
        let e = error(text);
        assert!(e.starts_with(at), "{text}: {e}");
    }
}

#[test]
fn sub_windows_only_for_sliding_window() {
    let s = parse(&format!(
        "{RL}      unit: second\n      requests_per_unit: 5\n      sub_windows: 4\n"
    ));
    let q = s.find("d", &[("a", "x")]).unwrap().rule.quota.unwrap();
    assert_eq!(
        (q.algorithm(), q.sub_windows()),
        (Algorithm::SlidingWindow, Some(4))
    );
    let s = parse(&format!(
        "{RL}      unit: second\n      requests_per_unit: 5\n"
    ));
    let q = s.find("d", &[("a", "x")]).unwrap().rule.quota.unwrap();
    assert_eq!(q.sub_windows(), Some(crate::algorithm::DEFAULT_SUB_WINDOWS));
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: 5\n      sub_windows: 0\n"),
        format!("t.yaml:7:20: {}", QuotaError::SubWindowsOutOfRange(0))
    );
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: 5\n      sub_windows: 2.5\n"),
        "t.yaml:7:20: sub_windows must be a whole number from 1 to 100, not `2.5`"
    );
    assert_eq!(
        rl_error(
            "      unit: second\n      requests_per_unit: 5\n      algorithm: fixed_window\n      sub_windows: 10\n"
        ),
        format!(
            "t.yaml:8:20: {}",
            QuotaError::SubWindowsNotApplicable(Algorithm::FixedWindow)
        )
    );
    assert_eq!(
        rl_error("      unlimited: true\n      sub_windows: 10\n"),
        "t.yaml:6:7: an `unlimited: true` rate limit takes no `sub_windows`"
    );
}

#[test]
fn charge_always_for_buckets_and_fixed_window_with_located_errors() {
    use crate::algorithm::Charge;
    let s = parse(&format!(
        "{RL}      unit: day\n      requests_per_unit: 5\n      algorithm: token_bucket\n      charge: always\n"
    ));
    let q = s.find("d", &[("a", "x")]).unwrap().rule.quota.unwrap();
    assert_eq!(q.charge(), Charge::Always);
    let s = parse(&format!(
        "{RL}      unit: day\n      requests_per_unit: 5\n"
    ));
    let q = s.find("d", &[("a", "x")]).unwrap().rule.quota.unwrap();
    assert_eq!(q.charge(), Charge::WhenAllowed);
    assert_eq!(
        rl_error(
            "      unit: second\n      requests_per_unit: 5\n      algorithm: fixed_window\n      charge: sometimes\n"
        ),
        format!(
            "t.yaml:8:15: {}",
            QuotaError::UnknownCharge("sometimes".into())
        )
    );
    assert_eq!(
        rl_error("      unit: second\n      requests_per_unit: 5\n      charge: always\n"),
        format!(
            "t.yaml:7:15: {}",
            QuotaError::ChargeNotApplicable(Algorithm::SlidingWindow)
        )
    );
    assert_eq!(
        rl_error("      unlimited: true\n      charge: always\n"),
        "t.yaml:6:7: an `unlimited: true` rate limit takes no `charge`"
    );
}
