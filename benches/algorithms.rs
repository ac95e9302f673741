//! The hot path of each algorithm: `Quota::decide` on one counter's state.
//!
//! `admit`: 100 hits per 1 ms window, one hit every 10 µs, so nearly every hit is admitted and the
//! state is written. `deny`: one hit per nanosecond against the same quota, so after the first
//! hundred nearly every hit is a read-only denial.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::algorithm::{Algorithm, Quota, State};

const START: u64 = 1_700_000_000_000_000_000;

fn bench(c: &mut Criterion, group: &str, step_ns: u64) {
    let mut g = c.benchmark_group(group);
    for algorithm in Algorithm::ALL {
        let quota =
            Quota::new(algorithm, 100, Duration::from_millis(1), None).expect("valid quota");
        let mut state = State::Empty;
        let mut now = START;
        g.bench_function(algorithm.as_str(), |b| {
            b.iter(|| {
                now += step_ns;
                black_box(quota.decide(&mut state, black_box(now), black_box(1)))
            })
        });
    }
    g.finish();
}

fn algorithms(c: &mut Criterion) {
    bench(c, "admit", 10_000);
    bench(c, "deny", 1);
}

criterion_group!(benches, algorithms);
criterion_main!(benches);
