//! A `RateLimiter` trait with `allow(client_id) -> bool`, configured by limit, window and Redis
//! address, shared by many concurrent tasks.
//!
//! `cargo run --example rate_limiter` (memory), or with a fleet's Redis:
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --example rate_limiter`

use std::sync::Arc;
use std::time::Duration;

use tollgate::keyed::{KeyedLimiter, RateLimiter, WindowLimiter};

#[tokio::main]
async fn main() -> Result<(), tollgate::keyed::KeyedError> {
    // 100 requests per minute per client, in Redis if REDIS_URL is set, else in this process.
    let keyed = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("counting in Redis at {url}");
            KeyedLimiter::redis(&url).await?
        }
        Err(_) => KeyedLimiter::new(),
    };
    let limiter: Arc<dyn RateLimiter> = Arc::new(WindowLimiter::new(
        keyed.namespace("example"),
        100,
        Duration::from_secs(60),
    )?);

    // 16 tasks, 256 requests in all, from two clients.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let limiter = limiter.clone();
        tasks.push(tokio::spawn(async move {
            let client = if t % 2 == 0 {
                "api-key-even"
            } else {
                "api-key-odd"
            };
            let mut admitted = 0;
            for _ in 0..16 {
                admitted += usize::from(limiter.allow(client).await);
            }
            (client, admitted)
        }));
    }
    let (mut even, mut odd) = (0, 0);
    for t in tasks {
        match t.await {
            Ok(("api-key-even", n)) => even += n,
            Ok((_, n)) => odd += n,
            Err(e) => eprintln!("task failed: {e}"),
        }
    }
    println!("api-key-even: {even} of 128 admitted (limit 100/min)");
    println!("api-key-odd:  {odd} of 128 admitted (limit 100/min)");
    Ok(())
}
