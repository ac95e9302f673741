//! The outcome of a run, built from the merged tally: counts, rate and latency quantiles, as
//! text or (with `--json`) as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::Config;
use super::tally::Tally;

/// The outcome of a run; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Open loop: the requested rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<u64>,
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    /// Overall code OK.
    pub allowed: u64,
    /// Overall code OVER_LIMIT.
    pub denied: u64,
    /// gRPC errors, timeouts and answers with neither code.
    pub errors: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The first error seen, to explain a non-zero `errors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Report {
    /// The human-readable form printed without `--json`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mode = match self.target_rps {
            Some(rate) => format!("open loop at {rate}/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "{} requests in {:.2}s ({mode}): {:.0} requests/s",
            self.requests, self.duration_s, self.rps
        );
        let _ = writeln!(
            out,
            "allowed {}  denied {}  errors {}",
            self.allowed, self.denied, self.errors
        );
        let _ = writeln!(
            out,
            "latency (µs): mean {:.0}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.mean_us, self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(out, "first error: {e}");
        }
        out
    }

    /// The report of a run of `config` that took `elapsed` seconds and counted `total`.
    pub(super) fn from_tally(total: Tally, config: &Config, elapsed: f64) -> Self {
        let requests = total.allowed + total.denied + total.errors;
        let h = &total.latency;
        Report {
            mode: if config.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            target_rps: config.rate,
            requests,
            duration_s: elapsed,
            rps: if elapsed > 0.0 {
                requests as f64 / elapsed
            } else {
                0.0
            },
            allowed: total.allowed,
            denied: total.denied,
            errors: total.errors,
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            first_error: total.first_error,
        }
    }
}
