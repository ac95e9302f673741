//! `Snapshot::find` on the hot path: 1-entry descriptors matched exactly, by wildcard and by key
//! alone, and a 3-entry descriptor that walks all three kinds. The baseline is the lookup
//! envoyproxy/ratelimit does: build the `key_value` string for each level and probe a
//! `HashMap<String, _>`, allocating once per level.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::config::Snapshot;

const RULES: &str = "domain: bench
descriptors:
  - key: user_id
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: endpoint
    value: /pay
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: endpoint
    value: /admin/*
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: endpoint
    value: /reports/*/download
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: plan
    value: premium
    descriptors:
      - key: path
        value: /api/*
        descriptors:
          - key: user_id
            rate_limit: {unit: minute, requests_per_unit: 1000}
";

fn naive_find<'a>(
    levels: &'a HashMap<String, HashMap<String, u32>>,
    entries: &[(&str, &str)],
) -> Option<&'a u32> {
    let mut level = levels.get("")?;
    let mut found = None;
    for (i, (k, v)) in entries.iter().enumerate() {
        let exact = format!("{k}_{v}");
        let id = level.get(&exact).or_else(|| level.get(*k))?;
        if i + 1 == entries.len() {
            found = Some(id);
        } else {
            level = levels.get(&format!("{id}"))?;
        }
    }
    found
}

fn matching(c: &mut Criterion) {
    let snapshot = match Snapshot::parse("bench.yaml", RULES) {
        Ok(s) => s,
        Err(e) => panic!("{e:?}"),
    };
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("exact_1", &[("endpoint", "/pay")]),
        ("wildcard_1", &[("endpoint", "/admin/users/42")]),
        ("key_only_1", &[("user_id", "alice-0123456789")]),
        (
            "mixed_3",
            &[
                ("plan", "premium"),
                ("path", "/api/v1/orders"),
                ("user_id", "alice-0123456789"),
            ],
        ),
    ];
    for (name, entries) in cases {
        assert!(snapshot.find("bench", entries).is_some(), "{name}");
        c.bench_function(&format!("find/{name}"), |b| {
            b.iter(|| {
                black_box(snapshot.find(black_box("bench"), black_box(entries)))
                    .map(|m| m.parts.len())
            })
        });
    }

    let mut naive: HashMap<String, HashMap<String, u32>> = HashMap::new();
    naive.insert(
        "".into(),
        [("user_id".into(), 1), ("plan_premium".into(), 2)].into(),
    );
    naive.insert("2".into(), [("path".into(), 3)].into());
    naive.insert("3".into(), [("user_id".into(), 4)].into());
    let three: &[(&str, &str)] = &[
        ("plan", "premium"),
        ("path", "/api/v1/orders"),
        ("user_id", "alice-0123456789"),
    ];
    assert!(naive_find(&naive, three).is_some());
    c.bench_function("naive_string_keys/mixed_3", |b| {
        b.iter(|| naive_find(black_box(&naive), black_box(three)).copied())
    });
}

criterion_group!(benches, matching);
criterion_main!(benches);
