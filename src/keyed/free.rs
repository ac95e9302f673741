//! The call shapes as free functions, with the exact signatures asked for, on one process-wide
//! memory limiter (the module's only global; their counters never collide, see [`super`]).

use std::sync::OnceLock;
use std::time::Duration;

use super::KeyedLimiter;

/// The one process-wide limiter of the free functions.
fn global() -> &'static KeyedLimiter {
    static GLOBAL: OnceLock<KeyedLimiter> = OnceLock::new();
    GLOBAL.get_or_init(KeyedLimiter::new)
}

/// `rate_limit(user_id, limit) -> bool` on one process-wide memory limiter: at most `limit`
/// requests per second for `user_id` (sliding window). For Redis or tests, build a
/// [`KeyedLimiter`] and call [`KeyedLimiter::rate_limit`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(tollgate::keyed::rate_limit("user-42", 1).await);
/// assert!(!tollgate::keyed::rate_limit("user-42", 1).await); // one per second
/// assert!(!tollgate::keyed::rate_limit("user-43", 0).await); // a zero limit admits nothing
/// # }
/// ```
pub async fn rate_limit(user_id: &str, limit: u64) -> bool {
    global().rate_limit(user_id, limit).await
}

/// `allow(user_id, limit, window) -> bool` on one process-wide memory limiter (sliding window).
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(tollgate::keyed::allow("user-9", 10, Duration::from_secs(1)).await);
/// assert!(!tollgate::keyed::allow("user-9", 10, Duration::ZERO).await); // refused
/// # }
/// ```
pub async fn allow(user_id: &str, limit: u64, window: Duration) -> bool {
    global().allow(user_id, limit, window).await
}

/// `leaky_bucket(user_id, capacity, leak_rate) -> bool` on one process-wide memory limiter.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert!(tollgate::keyed::leaky_bucket("user-7", 10, 2.5).await);
/// assert!(!tollgate::keyed::leaky_bucket("user-7", 10, -1.0).await); // refused
/// # }
/// ```
pub async fn leaky_bucket(user_id: &str, capacity: u64, leak_rate: f64) -> bool {
    global().leaky_bucket(user_id, capacity, leak_rate).await
}
