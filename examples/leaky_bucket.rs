//! Seed 003: `leaky_bucket(user_id, capacity, leak_rate)`, a leaky bucket per user whose `f64`
//! leak rate is converted to an exact rational (0.001/s drains one request per 1000 s).
//!
//! `cargo run --example leaky_bucket`

use std::time::Duration;

use tollgate::direct::{LeakyLimiter, Rate};

#[tokio::main]
async fn main() -> Result<(), tollgate::direct::DirectError> {
    for rate in [20.0, 2.5, 0.001] {
        let r = Rate::per_second(rate)?;
        println!("leak_rate {rate}/s = {} per {:?}", r.count(), r.period());
    }

    // The seed's exact call, on a process-wide memory store: room for 3, draining 20/s.
    let mut answers = String::new();
    for _ in 0..6 {
        let ok = tollgate::direct::leaky_bucket("payer-1", 3, 20.0).await;
        answers.push(if ok { '✓' } else { '✗' });
    }
    println!("payer-1, capacity 3, 20/s, 6 at once: {answers}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    println!(
        "50 ms later one has drained: {}",
        tollgate::direct::leaky_bucket("payer-1", 3, 20.0).await
    );

    let limiter = LeakyLimiter::new();
    limiter.leaky_bucket("payer-2", 1, 0.001).await;
    let d = limiter.try_leaky_bucket("payer-2", 1, 0.001).await?;
    println!(
        "payer-2 at 0.001/s: allowed {}, retry in {:?}",
        d.allowed, d.reset_after
    );

    match limiter.try_leaky_bucket("payer-2", 1, f64::NAN).await {
        Ok(d) => println!("unexpected: {d:?}"),
        Err(e) => println!("NaN leak rate refused: {e}"),
    }
    Ok(())
}
