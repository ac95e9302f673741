//! `allow(user_id, limit, window: Duration) -> bool`, limit and window given with each call.
//!
//! `cargo run --example allow`

use std::time::Duration;

use tollgate::keyed::{Algorithm, Call, KeyedLimiter, Quota};

#[tokio::main]
async fn main() -> Result<(), tollgate::keyed::KeyedError> {
    let window = Duration::from_millis(100);

    // The call as asked for, on a process-wide memory limiter (sliding window).
    for round in 1..=3 {
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += usize::from(tollgate::keyed::allow("user-1", 4, window).await);
        }
        println!("round {round}: {admitted} of 10 admitted (4 per {window:?})");
        tokio::time::sleep(2 * window).await;
    }

    // An exact sliding log instead, with the whole decision: any quota under the call's name.
    let limiter = KeyedLimiter::new();
    let log = Quota::new(Algorithm::SlidingLog, 2, Duration::from_secs(1), None)?;
    let call = Call::new("allow", [("user", "user-2")], log)?;
    for _ in 0..3 {
        let d = limiter.decide(&call, 1).await?;
        println!(
            "user-2: allowed {}, remaining {}, reset {:?}",
            d.allowed, d.remaining, d.reset_after
        );
    }

    match Call::allow("user-2", 2, Duration::ZERO) {
        Ok(c) => println!("unexpected: {c:?}"),
        Err(e) => println!("zero window refused: {e}"),
    }
    Ok(())
}
