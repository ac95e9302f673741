//! Seed 004: `allow(user_id, limit, window)`, limit and window given with each call.
//!
//! `cargo run --example allow`

use std::time::Duration;

use tollgate::direct::{Algorithm, InlineLimiter};

#[tokio::main]
async fn main() -> Result<(), tollgate::direct::DirectError> {
    let window = Duration::from_millis(100);

    // The seed's exact call, on a process-wide memory store (sliding window).
    for round in 1..=3 {
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(tollgate::direct::allow("user-1", 4, window).await);
        }
        println!("round {round}: {admitted} of 10 admitted (4 per {window:?})");
        tokio::time::sleep(2 * window).await;
    }

    // An exact sliding log instead, with the whole decision.
    let limiter = InlineLimiter::new().algorithm(Algorithm::SlidingLog);
    for _ in 0..3 {
        let d = limiter
            .try_allow("user-2", 2, Duration::from_secs(1))
            .await?;
        println!(
            "user-2: allowed {}, remaining {}, reset {:?}",
            d.allowed, d.remaining, d.reset_after
        );
    }

    match limiter.try_allow("user-2", 2, Duration::ZERO).await {
        Ok(d) => println!("unexpected: {d:?}"),
        Err(e) => println!("zero window refused: {e}"),
    }
    Ok(())
}
