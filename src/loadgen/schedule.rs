//! The run's shared schedule: which request comes next, when it is due (open loop: at
//! `start + i / rate`), and the request itself, with user `i mod users`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tokio::time::Instant;

use super::Config;

pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) next: AtomicU64,
    pub(super) start: Instant,
}

impl Shared {
    /// Open loop: when request `i` is due, or `None` if it is past the end of the run.
    pub(super) fn due(&self, i: u64) -> Option<Instant> {
        let rate = self.config.rate?;
        if self.config.requests.is_some_and(|n| i >= n) {
            return None;
        }
        let offset_ns = u128::from(i) * 1_000_000_000 / u128::from(rate);
        let offset = Duration::from_nanos(u64::try_from(offset_ns).unwrap_or(u64::MAX));
        if self.config.duration.is_some_and(|d| offset >= d) {
            return None;
        }
        Some(self.start + offset)
    }

    /// The next request index and the time it is due, or `None` when the run is over.
    pub(super) fn claim(&self) -> Option<(u64, Instant)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if self.config.requests.is_some_and(|n| i >= n) {
            return None;
        }
        let due = match self.config.rate {
            Some(_) => self.due(i)?,
            None => {
                let now = Instant::now();
                if self
                    .config
                    .duration
                    .is_some_and(|d| now.duration_since(self.start) >= d)
                {
                    return None;
                }
                now
            }
        };
        Some((i, due))
    }

    pub(super) fn request(&self, i: u64) -> RateLimitRequest {
        let user = UserId(i % self.config.users);
        RateLimitRequest {
            domain: self.config.domain.clone(),
            descriptors: self
                .config
                .descriptors
                .iter()
                .map(|d| d.expand(&user))
                .collect(),
            hits_addend: self.config.hits_addend.unwrap_or(0),
        }
    }
}

/// `user-<n>`, written straight into a descriptor value.
struct UserId(u64);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "user-{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::DescriptorTemplate;

    #[test]
    fn users_are_assigned_round_robin() {
        let shared = Shared {
            config: Config {
                target: "http://127.0.0.1:1".into(),
                domain: "d".into(),
                descriptors: vec![DescriptorTemplate::parse("user_id={user}").unwrap()],
                users: 3,
                concurrency: 1,
                connections: 1,
                duration: None,
                requests: Some(2),
                rate: None,
                hits_addend: Some(2),
                timeout: Duration::from_secs(1),
            },
            next: AtomicU64::new(0),
            start: Instant::now(),
        };
        let values: Vec<String> = (0..4)
            .map(|i| shared.request(i).descriptors[0].entries[0].value.clone())
            .collect();
        assert_eq!(values, ["user-0", "user-1", "user-2", "user-0"]);
        assert_eq!(shared.request(0).hits_addend, 2);
        assert!(shared.claim().is_some());
        assert!(shared.claim().is_some());
        assert!(shared.claim().is_none());
    }

    #[test]
    fn open_loop_schedules_at_fixed_intervals_and_stops_at_the_duration() {
        let start = Instant::now();
        let shared = Shared {
            config: Config {
                target: "http://127.0.0.1:1".into(),
                domain: "d".into(),
                descriptors: vec![DescriptorTemplate::parse("k=v").unwrap()],
                users: 1,
                concurrency: 1,
                connections: 1,
                duration: Some(Duration::from_secs(1)),
                requests: None,
                rate: Some(4),
                hits_addend: None,
                timeout: Duration::from_secs(1),
            },
            next: AtomicU64::new(0),
            start,
        };
        let due: Vec<Duration> = std::iter::from_fn(|| shared.claim())
            .map(|(_, t)| t - start)
            .collect();
        assert_eq!(due, [0, 250, 500, 750].map(Duration::from_millis).to_vec());
    }
}
