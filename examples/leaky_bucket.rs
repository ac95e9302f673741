//! `leaky_bucket(user_id, capacity, leak_rate: f64) -> bool`: a leaky bucket per user whose `f64`
//! leak rate is converted to an exact rational (0.001/s drains one request per 1000 s).
//!
//! `cargo run --example leaky_bucket`

use std::time::Duration;

use tollgate::keyed::{Call, KeyedLimiter, Rate};

#[tokio::main]
async fn main() -> Result<(), tollgate::keyed::KeyedError> {
    for rate in [20.0, 2.5, 0.001] {
        let r = Rate::per_second(rate)?;
        println!("leak_rate {rate}/s = {} per {:?}", r.count(), r.period());
    }

    // The call as asked for, on a process-wide memory limiter: room for 3, draining 20/s.
    let mut answers = String::new();
    for _ in 0..6 {
        let ok = tollgate::keyed::leaky_bucket("payer-1", 3, 20.0).await;
        answers.push(if ok { '✓' } else { '✗' });
    }
    println!("payer-1, capacity 3, 20/s, 6 at once: {answers}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!(
        "50 ms later one has drained: {}",
        tollgate::keyed::leaky_bucket("payer-1", 3, 20.0).await
    );

    let limiter = KeyedLimiter::new();
    limiter.leaky_bucket("payer-2", 1, 0.001).await;
    let d = limiter
        .decide(&Call::leaky_bucket("payer-2", 1, 0.001)?, 1)
        .await?;
    println!(
        "payer-2 at 0.001/s: allowed {}, retry in {:?}",
        d.allowed, d.reset_after
    );

    match Call::leaky_bucket("payer-2", 1, f64::NAN) {
        Ok(c) => println!("unexpected: {c:?}"),
        Err(e) => println!("NaN leak rate refused: {e}"),
    }
    Ok(())
}
