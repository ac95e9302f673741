//! Seed 000: `rate_limit(user_id, limit)`, requests per second per user, sliding window, with
//! per-user limits changed at runtime.
//!
//! `cargo run --example rate_limit`

use std::sync::Arc;
use std::time::Duration;

use tollgate::direct::{PerSecondLimiter, RateLimiter, UserLimits};

#[tokio::main]
async fn main() -> Result<(), tollgate::direct::DirectError> {
    // The seed's exact call: a process-wide memory limiter.
    let admitted = count(|| tollgate::direct::rate_limit("alice", 3)).await;
    println!("rate_limit(\"alice\", 3) x10 in one burst: {admitted} admitted");

    // A limiter of your own, with per-user limits that can change while it runs.
    let limits = Arc::new(UserLimits::new(2)?);
    limits.set("premium", 5)?;
    let limiter = PerSecondLimiter::new().user_limits(limits.clone());
    for user in ["premium", "free"] {
        let admitted = count(|| limiter.allow(user)).await;
        println!(
            "{user:>8}: {admitted} of 10 admitted (limit {})",
            limits.get(user)
        );
    }

    let d = limiter.try_allow("free").await?;
    println!("free user denied; retry in {:?}", d.reset_after);

    // A changed limit counts on a fresh counter at once.
    limits.set_default(4)?;
    let admitted = count(|| limiter.allow("free")).await;
    println!("    free: {admitted} of 10 admitted after raising the default to 4");

    tokio::time::sleep(Duration::from_secs(2)).await;
    let admitted = count(|| limiter.allow("free")).await;
    println!("    free: {admitted} of 10 admitted two seconds later");
    Ok(())
}

/// Calls `f` ten times in a row and counts the admissions.
async fn count<F, Fut>(f: F) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += usize::from(f().await);
    }
    admitted
}
