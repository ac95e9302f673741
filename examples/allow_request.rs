//! `allow_request(user_id, endpoint) -> bool`: a token bucket per (user, endpoint) with
//! per-endpoint capacity and refill rate.
//!
//! `cargo run --example allow_request`

use tollgate::keyed::{BucketPolicy, EndpointLimiter, KeyedLimiter, Rate};

#[tokio::main]
async fn main() -> Result<(), tollgate::keyed::KeyedError> {
    // Any endpoint: bursts of 10, 5 per second sustained; /pay: bursts of 2, one every 10 s.
    let default = BucketPolicy::new(10, Rate::per_second(5.0)?)?;
    let limiter = EndpointLimiter::new(KeyedLimiter::new(), default);
    limiter.set_policy("/pay", BucketPolicy::new(2, Rate::per_second(0.1)?)?)?;

    for endpoint in ["/search", "/pay"] {
        let mut answers = String::new();
        for _ in 0..12 {
            let ok = limiter.allow_request("alice", endpoint).await;
            answers.push(if ok { '✓' } else { '✗' });
        }
        println!("alice {endpoint:<8} {answers}");
    }

    // A probe (0 hits) says when the next /search token comes, without taking one.
    let search = limiter.call("alice", "/search")?;
    let d = limiter.keyed().decide(&search, 0).await?;
    println!("next /search token in {:?}", d.reset_after);
    tokio::time::sleep(d.reset_after).await;
    println!(
        "after {:?}: /search {}",
        d.reset_after,
        limiter.allow_request("alice", "/search").await
    );
    println!(
        "bob /pay (his own bucket): {}",
        limiter.allow_request("bob", "/pay").await
    );
    Ok(())
}
