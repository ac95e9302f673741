//! `rate_limit(user_id, limit) -> bool`: requests per second per user, sliding window; and the
//! same limit per client with per-user limits changed at runtime.
//!
//! `cargo run --example rate_limit`

use std::time::Duration;

use tollgate::keyed::{KeyedLimiter, RateLimiter, WindowLimiter};

#[tokio::main]
async fn main() -> Result<(), tollgate::keyed::KeyedError> {
    // The call as asked for: a process-wide memory limiter.
    let admitted = count(|| tollgate::keyed::rate_limit("alice", 3)).await;
    println!("rate_limit(\"alice\", 3) x10 in one burst: {admitted} admitted");

    // Per-second limits per user that can change while it runs.
    let limiter = WindowLimiter::new(KeyedLimiter::new(), 2, Duration::from_secs(1))?;
    let limits = limiter.limits();
    limits.set("premium", 5)?;
    for user in ["premium", "free"] {
        let admitted = count(|| limiter.allow(user)).await;
        println!(
            "{user:>8}: {admitted} of 10 admitted (limit {})",
            limits.get(user)
        );
    }

    let d = limiter.keyed().decide(&limiter.call("free")?, 1).await?;
    println!(
        "free user denied: {}; retry in {:?}",
        !d.allowed, d.reset_after
    );

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
