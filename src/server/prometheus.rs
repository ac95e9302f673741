//! The Prometheus recorder behind `/metrics`: latency histograms in buckets from 50 µs to 1 s.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the global Prometheus recorder and describes every metric. Call once per process;
/// a second call returns the error of the recorder already installed.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let latency_buckets = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)?
        .install_recorder()?;
    crate::metrics::describe();
    Ok(handle)
}
