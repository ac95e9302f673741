use super::*;
use crate::clock::ManualClock;
use crate::config::Snapshot;
use crate::store::memory::MemoryStore;

const RULES: &str = r#"
domain: api
descriptors:
  - key: user_id
    rate_limit: {unit: minute, requests_per_unit: 3, algorithm: fixed_window}
  - key: banned
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: internal
    rate_limit: {unlimited: true}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: fixed_window}
  - key: plan
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, algorithm: fixed_window}
  - key: tier
    quota_mode: true
    metadata: {tier: {name: gold}}
    rate_limit: {unit: minute, requests_per_unit: 2, algorithm: fixed_window}
  - key: read
    descriptors:
      - key: user_id
        rate_limit: {name: read_limit, unit: minute, requests_per_unit: 1, algorithm: fixed_window}
  - key: special
    descriptors:
      - key: user_id
        rate_limit:
          unit: minute
          requests_per_unit: 5
          algorithm: fixed_window
          replaces: [{name: read_limit}]
"#;

fn limiter_with(settings: Settings) -> Limiter {
    let snapshot = Snapshot::parse("rules.yaml", RULES).expect("rules parse");
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let store = Arc::new(MemoryStore::new(Arc::new(clock)));
    Limiter::new(LiveRules::from_snapshot(snapshot), store, settings)
}

fn limiter() -> Limiter {
    limiter_with(Settings::default())
}

fn req(domain: &str, descriptors: &[&[(&str, &str)]]) -> Request {
    Request {
        domain: domain.into(),
        descriptors: descriptors
            .iter()
            .map(|entries| Descriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

async fn ask(l: &Limiter, r: &Request) -> Response {
    l.should_rate_limit(r).await.expect("decision")
}

/// Runs `body` on a runtime of its own with a metrics recorder of its own; returns the recorder.
fn recorded(
    body: impl std::future::Future<Output = ()>,
) -> metrics_exporter_prometheus::PrometheusHandle {
    crate::metrics::with_local_recorder(|handle| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(body);
        handle.clone()
    })
}

#[tokio::test]
async fn counts_down_then_refuses() {
    let l = limiter();
    let r = req("api", &[&[("user_id", "alice")]]);
    for remaining in [2, 1, 0] {
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[0].limit_remaining, remaining);
        let limit = resp.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (3, Some(Unit::Minute))
        );
    }
    let resp = ask(&l, &r).await;
    assert_eq!(resp.overall_code, Code::OverLimit);
    assert_eq!(resp.statuses[0].code, Code::OverLimit);
    assert!(resp.statuses[0].duration_until_reset.unwrap() <= Duration::from_secs(60));
    // Another user has their own counter.
    let other = ask(&l, &req("api", &[&[("user_id", "bob")]])).await;
    assert_eq!(other.overall_code, Code::Ok);
}

#[tokio::test]
async fn unknown_domain_and_unmatched_descriptors_pass_without_a_limit() {
    let l = limiter();
    for r in [
        req("nope", &[&[("user_id", "alice")]]),
        req("api", &[&[("unknown", "x")]]),
        req("api", &[&[("user_id", "alice"), ("extra", "depth")]]),
    ] {
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[0].current_limit, None);
        assert_eq!(resp.statuses[0].limit_remaining, 0);
    }
}

#[tokio::test]
async fn unlimited_reports_max_remaining_and_zero_blocks() {
    let l = limiter();
    let resp = ask(&l, &req("api", &[&[("internal", "x")]])).await;
    assert_eq!(resp.overall_code, Code::Ok);
    assert_eq!(resp.statuses[0].limit_remaining, u64::from(u32::MAX));
    let resp = ask(&l, &req("api", &[&[("banned", "1.2.3.4")]])).await;
    assert_eq!(resp.overall_code, Code::OverLimit);
    assert_eq!(
        resp.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        0
    );
}

#[tokio::test]
async fn any_descriptor_over_makes_the_request_over() {
    let l = limiter();
    let r = req("api", &[&[("user_id", "carol")], &[("internal", "x")]]);
    for _ in 0..3 {
        assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
    }
    let resp = ask(&l, &r).await;
    assert_eq!(resp.overall_code, Code::OverLimit);
    assert_eq!(resp.statuses[1].code, Code::Ok);
}

#[tokio::test]
async fn hits_addend_request_and_descriptor_level() {
    let l = limiter();
    let mut r = req("api", &[&[("user_id", "dave")]]);
    r.hits_addend = 2;
    assert_eq!(ask(&l, &r).await.statuses[0].limit_remaining, 1);
    r.descriptors[0].hits_addend = Some(0);
    let probe = ask(&l, &r).await;
    assert_eq!(probe.overall_code, Code::Ok);
    assert_eq!(
        probe.statuses[0].limit_remaining, 1,
        "a probe spends nothing"
    );
    r.descriptors[0].hits_addend = Some(2);
    assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
    r.descriptors[0].hits_addend = Some(1);
    assert_eq!(
        ask(&l, &r).await.overall_code,
        Code::Ok,
        "the refused 2 spent nothing"
    );
    r.descriptors[0].hits_addend = Some(u64::from(u32::MAX));
    assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
}

#[tokio::test]
async fn limit_override_replaces_the_configured_quota() {
    let l = limiter();
    let mut r = req("api", &[&[("user_id", "erin")]]);
    r.descriptors[0].limit = Some(LimitOverride {
        requests_per_unit: 1,
        unit: Unit::Hour,
    });
    let first = ask(&l, &r).await;
    let limit = first.statuses[0].current_limit.clone().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (1, Some(Unit::Hour)));
    assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
    // An override applies even where no rule matches.
    let mut r = req("api", &[&[("unconfigured", "x")]]);
    r.descriptors[0].limit = Some(LimitOverride {
        requests_per_unit: 0,
        unit: Unit::Second,
    });
    assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
}

#[tokio::test]
async fn shadow_mode_reports_ok_per_rule_and_globally() {
    let l = limiter();
    let r = req("api", &[&[("trial", "t1")]]);
    for _ in 0..3 {
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[0].code, Code::Ok);
    }
    let global = limiter_with(Settings {
        shadow_mode: true,
        ..Settings::default()
    });
    let r = req("api", &[&[("user_id", "frank")]]);
    for _ in 0..5 {
        assert_eq!(ask(&global, &r).await.overall_code, Code::Ok);
    }
}

#[tokio::test]
async fn quota_mode_fails_the_request_only_once_every_quota_descriptor_is_over() {
    let l = limiter();
    // One of two quota descriptors over: OK, each reporting its own code.
    let r = req("api", &[&[("plan", "p")], &[("tier", "t")]]);
    assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
    let resp = ask(&l, &r).await;
    assert_eq!(resp.overall_code, Code::Ok);
    assert_eq!(resp.statuses[0].code, Code::OverLimit);
    assert_eq!(resp.statuses[1].code, Code::Ok);
    // Both over: the request fails, even beside a descriptor with room (the peer's rule).
    let all = req(
        "api",
        &[&[("plan", "p")], &[("tier", "t")], &[("user_id", "q")]],
    );
    let resp = ask(&l, &all).await;
    assert_eq!(resp.overall_code, Code::OverLimit);
    assert_eq!(resp.statuses[2].code, Code::Ok);
    // A regular descriptor over fails the request whatever the quotas say.
    let l = limiter();
    let mixed = req("api", &[&[("banned", "x")], &[("tier", "t2")]]);
    assert_eq!(ask(&l, &mixed).await.overall_code, Code::OverLimit);
}

#[tokio::test]
async fn global_quota_mode_counts_every_limited_descriptor_as_quota() {
    let l = limiter_with(Settings {
        quota_mode: true,
        ..Settings::default()
    });
    // The ban is over, the user within: OK.
    let r = req("api", &[&[("banned", "x")], &[("user_id", "gq")]]);
    assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
    // Every descriptor over: OVER_LIMIT.
    let resp = ask(&l, &req("api", &[&[("banned", "x")]])).await;
    assert_eq!(resp.overall_code, Code::OverLimit);
    // An unmatched descriptor counts as a quota descriptor that passed, as in the peer.
    let r = req("api", &[&[("banned", "x")], &[("nothing", "here")]]);
    assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
    // An unlimited one does not count.
    let r = req("api", &[&[("banned", "x")], &[("internal", "i")]]);
    assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
}

#[tokio::test]
async fn replaces_drops_the_named_limit() {
    let l = limiter();
    let both = req(
        "api",
        &[
            &[("read", "x"), ("user_id", "gina")],
            &[("special", "y"), ("user_id", "gina")],
        ],
    );
    for _ in 0..5 {
        let resp = ask(&l, &both).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[0].current_limit, None, "replaced");
    }
    assert_eq!(ask(&l, &both).await.overall_code, Code::OverLimit);
    // The replaced limit was never spent.
    let alone = req("api", &[&[("read", "x"), ("user_id", "gina")]]);
    assert_eq!(ask(&l, &alone).await.overall_code, Code::Ok);
    assert_eq!(ask(&l, &alone).await.overall_code, Code::OverLimit);
}

#[tokio::test]
async fn invalid_requests_are_refused_with_a_reason() {
    let l = limiter();
    let cases: Vec<(Request, &str)> = vec![
        (req("", &[&[("user_id", "a")]]), "empty_domain"),
        (req("api", &[]), "no_descriptors"),
        (req("api", &[&[("", "a")]]), "empty_key"),
        (
            req("api", &[&[(&"k".repeat(MAX_KEY_LEN + 1), "a")]]),
            "key_too_long",
        ),
        (
            req("api", &[&[("user_id", &"v".repeat(MAX_VALUE_LEN + 1))]]),
            "value_too_long",
        ),
        (
            req(&"d".repeat(MAX_VALUE_LEN + 1), &[&[("user_id", "a")]]),
            "domain_too_long",
        ),
        (
            Request {
                domain: "api".into(),
                descriptors: vec![
                    Descriptor {
                        entries: vec![("user_id".into(), "a".into())],
                        ..Default::default()
                    };
                    10_000
                ],
                hits_addend: 1,
            },
            "too_many_descriptors",
        ),
    ];
    for (r, reason) in cases {
        let err = l.should_rate_limit(&r).await.unwrap_err();
        assert!(err.is_invalid_argument());
        assert_eq!(err.reason(), reason);
    }
}

#[tokio::test]
async fn values_of_the_longest_length_accepted_are_just_values() {
    let l = limiter();
    let big = "v".repeat(MAX_VALUE_LEN);
    let r = req("api", &[&[("user_id", big.as_str())]]);
    assert_eq!(ask(&l, &r).await.statuses[0].limit_remaining, 2);
}

#[test]
fn global_shadow_mode_keeps_each_descriptor_code_and_answers_ok() {
    let handle = recorded(async {
        let l = limiter_with(Settings {
            shadow_mode: true,
            ..Settings::default()
        });
        let r = req("api", &[&[("banned", "x")], &[("user_id", "s")]]);
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[0].code, Code::OverLimit);
        assert_eq!(resp.statuses[1].code, Code::Ok);
    });
    crate::metrics::assert_rendered(&handle, &["tollgate_global_shadow_mode_total 1"]);
}

#[tokio::test]
async fn a_limit_override_on_an_unknown_domain_applies_no_limit() {
    let l = limiter();
    let mut r = req("nowhere", &[&[("user_id", "x")]]);
    r.descriptors[0].limit = Some(LimitOverride {
        requests_per_unit: 0,
        unit: Unit::Second,
    });
    let resp = ask(&l, &r).await;
    assert_eq!(resp.overall_code, Code::Ok);
    assert_eq!(resp.statuses[0].current_limit, None);
}

#[tokio::test]
async fn a_limit_override_stands_alone_without_the_rules_name_or_modes() {
    let l = limiter();
    // `trial` is in shadow mode; the override is not (as in the peer).
    let mut r = req("api", &[&[("trial", "o")]]);
    r.descriptors[0].limit = Some(LimitOverride {
        requests_per_unit: 1,
        unit: Unit::Minute,
    });
    assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
    let resp = ask(&l, &r).await;
    assert_eq!(resp.overall_code, Code::OverLimit);
    assert_eq!(resp.statuses[0].current_limit.as_ref().unwrap().name, None);
}

#[tokio::test]
async fn a_descriptor_without_entries_is_ok_without_a_limit() {
    let l = limiter();
    let resp = ask(&l, &req("api", &[&[], &[("user_id", "e")]])).await;
    assert_eq!(resp.overall_code, Code::Ok);
    assert_eq!(resp.statuses[0].current_limit, None);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
    assert_eq!(resp.statuses[1].limit_remaining, 2);
}

#[tokio::test]
async fn over_limit_reports_zero_remaining_even_when_some_hits_are_left() {
    let l = limiter();
    let mut r = req("api", &[&[("user_id", "z")]]);
    r.hits_addend = 2;
    assert_eq!(ask(&l, &r).await.statuses[0].limit_remaining, 1);
    let resp = ask(&l, &r).await;
    assert_eq!(resp.statuses[0].code, Code::OverLimit);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
    // The refused 2 spent nothing: one hit is still there.
    r.hits_addend = 1;
    assert_eq!(ask(&l, &r).await.statuses[0].limit_remaining, 0);
    assert_eq!(ask(&l, &r).await.overall_code, Code::OverLimit);
}

#[tokio::test]
async fn fixed_window_resets_in_whole_seconds_at_the_aligned_window_end() {
    // The clock is at 1_700_000_000 s (an even minute is 1_699_999_980) plus 0.25 s.
    let snapshot = Snapshot::parse("rules.yaml", RULES).expect("rules parse");
    let clock = ManualClock::new(1_700_000_000_250_000_000);
    let store = Arc::new(MemoryStore::new(Arc::new(clock)));
    let l = Limiter::new(
        LiveRules::from_snapshot(snapshot),
        store,
        Settings::default(),
    );
    let resp = ask(&l, &req("api", &[&[("user_id", "w")]])).await;
    // 1_700_000_000 % 60 = 20: the peer answers 60 - 20 = 40 s.
    assert_eq!(
        resp.statuses[0].duration_until_reset,
        Some(Duration::from_secs(40))
    );
}

#[tokio::test]
async fn unlimited_rules_still_replace_the_limits_they_name() {
    let text = r#"
domain: r
descriptors:
  - key: free
    rate_limit: {unlimited: true, replaces: [{name: strict}]}
  - key: user
    rate_limit: {name: strict, unit: minute, requests_per_unit: 1}
"#;
    let l = Limiter::new(
        LiveRules::from_snapshot(Snapshot::parse("r.yaml", text).unwrap()),
        Arc::new(MemoryStore::new(Arc::new(ManualClock::new(0)))),
        Settings::default(),
    );
    let r = req("r", &[&[("free", "x")], &[("user", "u")]]);
    for _ in 0..3 {
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::Ok);
        assert_eq!(resp.statuses[1].current_limit, None);
    }
}

#[tokio::test]
async fn dynamic_metadata_carries_the_request_and_the_passed_rules_metadata() {
    let text = r#"
domain: m
descriptors:
  - key: a
    metadata: {name: service_1, nested: {x: 1}}
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: b
    metadata: {name: service_2, other: true, nested: {y: 2}}
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: c
    metadata: {over: true}
    rate_limit: {unit: minute, requests_per_unit: 0}
"#;
    let settings = Settings {
        response_dynamic_metadata: true,
        ..Settings::default()
    };
    let l = Limiter::new(
        LiveRules::from_snapshot(Snapshot::parse("m.yaml", text).unwrap()),
        Arc::new(MemoryStore::new(Arc::new(ManualClock::new(0)))),
        settings,
    );
    let mut r = req("m", &[&[("a", "1")], &[("b", "2")], &[("c", "3")]]);
    r.hits_addend = 1;
    r.descriptors[1].hits_addend = Some(1);
    let md = ask(&l, &r)
        .await
        .dynamic_metadata
        .expect("metadata asked for");
    let expected = serde_json::json!({
        "domain": "m",
        "hitsAddend": 1,
        "descriptors": [
            {"entries": ["a=1"]},
            {"entries": ["b=2"], "hitsAddend": 1},
            {"entries": ["c=3"]},
        ],
        "metadata": {"name": "service_1", "other": true, "nested": {"x": 1, "y": 2}},
    });
    assert_eq!(serde_json::Value::Object(md), expected);
    // Off by default.
    assert_eq!(
        ask(&limiter(), &req("api", &[&[("user_id", "m")]]))
            .await
            .dynamic_metadata,
        None
    );
}

#[tokio::test]
async fn stop_charging_when_over_charges_no_descriptor_of_a_refused_request() {
    for stop in [false, true] {
        let l = limiter_with(Settings {
            stop_charging_when_over: stop,
            ..Settings::default()
        });
        // `read`+user is 1 per minute; `user_id` 3 per minute.
        let r = req(
            "api",
            &[&[("read", "r"), ("user_id", "s")], &[("user_id", "s")]],
        );
        assert_eq!(ask(&l, &r).await.overall_code, Code::Ok);
        let resp = ask(&l, &r).await;
        assert_eq!(resp.overall_code, Code::OverLimit);
        assert_eq!(resp.statuses[1].code, Code::Ok);
        let left = ask(&l, &req("api", &[&[("user_id", "s")]])).await;
        // Without the setting the refused request spent one of user_id's 3; with it, none.
        let expected = if stop { 1 } else { 0 };
        assert_eq!(left.statuses[0].limit_remaining, expected, "stop={stop}");
        // A ban also stops the charge.
        let banned = req("api", &[&[("banned", "b")], &[("user_id", "t")]]);
        ask(&l, &banned).await;
        let left = ask(&l, &req("api", &[&[("user_id", "t")]])).await;
        assert_eq!(left.statuses[0].limit_remaining, if stop { 2 } else { 1 });
    }
}

#[test]
fn hits_are_counted_under_the_peers_split_and_paths() {
    let handle = recorded(async {
        let l = limiter();
        let mut r = req("api", &[&[("user_id", "split")]]);
        // A probe counts nothing.
        r.descriptors[0].hits_addend = Some(0);
        ask(&l, &r).await;
        // 2 of 3: 2 within (threshold floor(3 * 0.8) = 2); then 2 more: 1 near, 1 over.
        r.descriptors[0].hits_addend = Some(2);
        ask(&l, &r).await;
        ask(&l, &r).await;
        // An override counts under the descriptor's own path, not the matched rule.
        let mut o = req("api", &[&[("user_id", "o")]]);
        o.descriptors[0].limit = Some(LimitOverride {
            requests_per_unit: 5,
            unit: Unit::Hour,
        });
        ask(&l, &o).await;
    });
    let text = handle.render();
    let rule = r#"tollgate_rule_hits_total{domain="api",rule="api.user_id",result="#;
    for (result, n) in [("within_limit", 2), ("near_limit", 1), ("over_limit", 1)] {
        let line = format!("{rule}\"{result}\"}} {n}");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    // The override: its own series, on the descriptor's path.
    assert!(text.contains(
        r#"tollgate_rule_hits_total{domain="api",rule="api.user_id_o",result="within_limit"} 1"#
    ));
}

#[tokio::test]
async fn a_quota_in_shadow_mode_never_counts_as_over() {
    // The peer's TestServiceQuotaModeWithShadowMode / MixedModeWithShadowMode: a rule in shadow
    // mode reports OK, so a quota in shadow mode is a quota that passed.
    let text = r#"
domain: qs
descriptors:
  - key: q
    quota_mode: true
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: r
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 0}
  - key: s
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 0}
"#;
    let l = Limiter::new(
        LiveRules::from_snapshot(Snapshot::parse("qs.yaml", text).unwrap()),
        Arc::new(MemoryStore::new(Arc::new(ManualClock::new(0)))),
        Settings::default(),
    );
    let resp = ask(&l, &req("qs", &[&[("q", "1")], &[("r", "1")]])).await;
    assert_eq!(resp.statuses[0].code, Code::Ok);
    assert_eq!(resp.statuses[1].code, Code::OverLimit);
    assert_eq!(
        resp.overall_code,
        Code::Ok,
        "one of two quotas passed (in shadow)"
    );
    let resp = ask(&l, &req("qs", &[&[("q", "1")]])).await;
    assert_eq!(resp.overall_code, Code::Ok);
    let resp = ask(&l, &req("qs", &[&[("s", "1")], &[("r", "1")]])).await;
    assert_eq!(resp.statuses[0].code, Code::Ok);
    assert_eq!(resp.overall_code, Code::OverLimit, "the only quota is over");
}

#[test]
fn client_chosen_labels_are_capped_and_unknown_domains_share_one() {
    use crate::metrics::{MAX_REQUEST_LABELS, OVERFLOW, UNKNOWN_DOMAIN};
    let handle = recorded(async {
        let l = limiter();
        ask(&l, &req("nope-1", &[&[("user_id", "a")]])).await;
        ask(&l, &req("nope-2", &[&[("user_id", "a")]])).await;
        ask(&l, &req("api", &[&[("unknown", "x")]])).await;
        for i in 0..MAX_REQUEST_LABELS + 3 {
            let mut o = req("api", &[&[("tenant", &format!("t{i}"))]]);
            o.descriptors[0].limit = Some(LimitOverride {
                requests_per_unit: 5,
                unit: Unit::Hour,
            });
            ask(&l, &o).await;
        }
        // A rule's own id is no request value: it keeps its series past the cap.
        ask(&l, &req("api", &[&[("user_id", "after")]])).await;
    });
    let unmatched =
        format!(r#"tollgate_unmatched_descriptors_total{{domain="{UNKNOWN_DOMAIN}"}} 2"#);
    let overflow = format!(
        r#"tollgate_rule_hits_total{{domain="api",rule="{OVERFLOW}",result="within_limit"}} 3"#
    );
    crate::metrics::assert_rendered(
        &handle,
        &[
            &unmatched,
            r#"tollgate_unmatched_descriptors_total{domain="api"} 1"#,
            &overflow,
            r#"tollgate_rule_hits_total{domain="api",rule="api.tenant_t999",result="within_limit"} 1"#,
            r#"tollgate_rule_hits_total{domain="api",rule="api.user_id",result="within_limit"} 1"#,
        ],
    );
    let text = handle.render();
    assert!(!text.contains("nope-"), "no unknown domain is a label");
    assert!(!text.contains("api.tenant_t1000"), "past the cap");
}

#[tokio::test]
async fn keys_and_values_at_their_caps_are_accepted() {
    let l = limiter();
    let value = "v".repeat(MAX_VALUE_LEN);
    let request = req(
        "api",
        &[&[("user_id", &value), (&"k".repeat(MAX_KEY_LEN), "x")]],
    );
    assert!(l.should_rate_limit(&request).await.is_ok());
}
