//! Hot reload end to end: a server watching its `--config` path, its rule files changed the ways
//! operators and Kubernetes change them, and every change checked through gRPC decisions within
//! [`SEEN_WITHIN`] of the change. The file watcher runs in this process; SIGHUP, the log and the
//! reload counters are checked on the real binary.
//!
//! Rules are `fixed_window` per minute on a store clock that stands still (in-process) or a test
//! short enough for one window (binary), so counts are deterministic. Each probe sends a fresh
//! descriptor value, so probing a rule's limit (in `current_limit.requests_per_unit`) never spends
//! a counter another assertion depends on.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use common::grpc::{self, Code, RlsClient};
use common::http;
use common::{Server, Tollgate};

/// How long after a change its effect must show in decisions.
const SEEN_WITHIN: Duration = Duration::from_secs(2);
/// How often decisions are polled while waiting for a change.
const POLL: Duration = Duration::from_millis(20);

/// A rule file for `domain`: one `key: <name>` rule per entry, `limit` per minute, fixed window.
fn rules(domain: &str, limits: &[(&str, u32)]) -> String {
    let mut yaml = format!("domain: {domain}\ndescriptors:\n");
    for (key, limit) in limits {
        yaml.push_str(&format!(
            "  - key: {key}\n    rate_limit:\n      unit: minute\n      requests_per_unit: {limit}\n      algorithm: fixed_window\n"
        ));
    }
    yaml
}

/// A running server with a gRPC client that probes limits with never-reused descriptor values.
struct Service<S> {
    server: S,
    client: RlsClient,
    probes: u64,
}

impl Service<Server> {
    /// Serves `config` in this process, watching it.
    async fn start(config: &Path) -> Self {
        Self::with(Server::builder().config(config).watch().start()).await
    }
}

impl Service<Tollgate> {
    /// `tollgate serve --config <config>`.
    async fn spawn(config: &Path) -> Self {
        let config = config.to_str().expect("utf-8 temp path");
        Self::with(Tollgate::start(&["--config", config])).await
    }
}

impl<S: common::Service> Service<S> {
    async fn with(server: S) -> Self {
        let client = server.client().await;
        Service {
            server,
            client,
            probes: 0,
        }
    }

    /// The limit in force for each of `keys` in `domain`, all read in one request (so from one
    /// rule generation); `None` where no rule applies, which must then answer OK.
    async fn limits(&mut self, domain: &str, keys: &[&str]) -> Vec<Option<u32>> {
        self.probes += 1;
        let value = format!("probe-{}", self.probes);
        let entries: Vec<[(&str, &str); 1]> = keys.iter().map(|k| [(*k, value.as_str())]).collect();
        let descriptors: Vec<&[(&str, &str)]> = entries.iter().map(|e| &e[..]).collect();
        let response =
            grpc::should_rate_limit(&mut self.client, grpc::rls_request(domain, &descriptors))
                .await;
        assert_eq!(response.statuses.len(), keys.len(), "{response:?}");
        response
            .statuses
            .iter()
            .map(|status| {
                let limit = status.current_limit.as_ref().map(|l| l.requests_per_unit);
                if limit.is_none() {
                    assert_eq!(grpc::code_of(status.code), Code::Ok, "{response:?}");
                }
                limit
            })
            .collect()
    }

    async fn limit(&mut self, domain: &str, key: &str) -> Option<u32> {
        self.limits(domain, &[key]).await[0]
    }

    /// Polls until `domain`/`key` is limited at `want`; fails if that is not so within
    /// [`SEEN_WITHIN`] of `changed`.
    async fn expect_limit(&mut self, changed: Instant, domain: &str, key: &str, want: Option<u32>) {
        loop {
            let got = self.limit(domain, key).await;
            if got == want {
                return;
            }
            assert!(
                changed.elapsed() < SEEN_WITHIN,
                "{domain}/{key}: limit {got:?}, want {want:?} within {SEEN_WITHIN:?} of the change"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The rule generation `/rlconfig` reports.
    async fn generation(&self) -> u64 {
        let response = http::get(&format!("{}/rlconfig", self.server.http_url())).await;
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("no generation in {}", response.body))
    }

    /// `tollgate_config_reloads_total{result}` from `/metrics` (0 before the first such reload).
    async fn reloads(&self, result: &str) -> f64 {
        let response = http::get(&format!("{}/metrics", self.server.http_url())).await;
        assert_eq!(response.status, 200, "{}", response.body);
        http::prometheus_value(
            &response.body,
            "tollgate_config_reloads_total",
            &[("result", result)],
        )
        .unwrap_or(0.0)
    }

    /// One hit on `domain`/`key=value`: its code and `limit_remaining`.
    async fn hit(&mut self, domain: &str, key: &str, value: &str) -> (Code, u32) {
        let response = grpc::should_rate_limit(
            &mut self.client,
            grpc::rls_request(domain, &[&[(key, value)]]),
        )
        .await;
        let status = &response.statuses[0];
        (grpc::code_of(status.code), status.limit_remaining)
    }
}

/// Writes `contents` over `path` and returns when the write started.
fn rewrite(path: &Path, contents: &str) -> Instant {
    let changed = Instant::now();
    fs::write(path, contents).unwrap();
    changed
}

/// `mv`: a new file written beside `path`, then renamed over it.
fn replace(path: &Path, contents: &str) -> Instant {
    let changed = Instant::now();
    let tmp = path.with_extension("yaml.tmp");
    fs::write(&tmp, contents).unwrap();
    fs::rename(&tmp, path).unwrap();
    changed
}

/// True when the log holds `<file>:<line>:<column>` for the file named `name`.
fn has_line_column(log: &str, name: &str) -> bool {
    log.match_indices(&format!("{name}:")).any(|(at, found)| {
        let rest = &log[at + found.len()..];
        let line = rest.chars().take_while(char::is_ascii_digit).count();
        let Some(after) = rest[line..].strip_prefix(':') else {
            return false;
        };
        line > 0 && after.chars().take_while(char::is_ascii_digit).count() > 0
    })
}

#[tokio::test]
async fn file_rewritten_in_place_applies() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    fs::write(&file, rules("d", &[("user", 5)])).unwrap();
    let mut service = Service::start(&file).await;
    assert_eq!(service.limit("d", "user").await, Some(5));
    assert_eq!(service.generation().await, 1);

    for (generation, limit) in [(2, 7), (3, 9)] {
        let changed = rewrite(&file, &rules("d", &[("user", limit)]));
        service
            .expect_limit(changed, "d", "user", Some(limit))
            .await;
        assert_eq!(service.generation().await, generation);
    }
}

#[tokio::test]
async fn file_renamed_over_applies_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    fs::write(&file, rules("d", &[("user", 5)])).unwrap();
    let mut service = Service::start(&file).await;
    assert_eq!(service.limit("d", "user").await, Some(5));

    for (generation, limit) in [(2, 7), (3, 9)] {
        let changed = replace(&file, &rules("d", &[("user", limit)]));
        service
            .expect_limit(changed, "d", "user", Some(limit))
            .await;
        assert_eq!(service.generation().await, generation);
    }
}

#[tokio::test]
async fn directory_files_created_and_deleted_apply() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), rules("a", &[("user", 5)])).unwrap();
    let mut service = Service::start(dir.path()).await;
    assert_eq!(service.limit("a", "user").await, Some(5));
    assert_eq!(service.limit("b", "user").await, None);

    let second = dir.path().join("b.yaml");
    let changed = rewrite(&second, &rules("b", &[("user", 3)]));
    service.expect_limit(changed, "b", "user", Some(3)).await;
    assert_eq!(service.limit("a", "user").await, Some(5));
    assert_eq!(service.generation().await, 2);

    let changed = Instant::now();
    fs::remove_file(&second).unwrap();
    service.expect_limit(changed, "b", "user", None).await;
    assert_eq!(service.limit("a", "user").await, Some(5));
    assert_eq!(service.generation().await, 3);
}

/// kubelet's atomic writer: the files in `..<stamp>/`, `..data -> ..<stamp>`,
/// `rules.yaml -> ..data/rules.yaml`.
fn configmap_version(dir: &Path, stamp: &str, limit: u32) {
    fs::create_dir(dir.join(stamp)).unwrap();
    fs::write(
        dir.join(stamp).join("rules.yaml"),
        rules("d", &[("user", limit)]),
    )
    .unwrap();
}

/// As kubelet updates: a new version directory, `..data_tmp` renamed over `..data`, old one gone.
fn configmap_update(dir: &Path, old: &str, new: &str, limit: u32) -> Instant {
    let changed = Instant::now();
    configmap_version(dir, new, limit);
    symlink(new, dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    fs::remove_dir_all(dir.join(old)).unwrap();
    changed
}

#[tokio::test]
async fn configmap_symlink_swap_applies_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let stamps = [
        "..2026_11_25_10_00_00.1",
        "..2026_11_25_10_05_00.2",
        "..2026_11_25_10_10_00.3",
    ];
    configmap_version(dir, stamps[0], 5);
    symlink(stamps[0], dir.join("..data")).unwrap();
    symlink("..data/rules.yaml", dir.join("rules.yaml")).unwrap();
    let mut service = Service::start(dir).await;
    assert_eq!(service.limit("d", "user").await, Some(5));

    for (i, limit) in [(1, 7), (2, 9)] {
        let changed = configmap_update(dir, stamps[i - 1], stamps[i], limit);
        service
            .expect_limit(changed, "d", "user", Some(limit))
            .await;
        assert_eq!(service.generation().await, 1 + i as u64);
    }
}

#[tokio::test]
async fn sighup_reloads_and_bumps_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    fs::write(&file, rules("d", &[("user", 5)])).unwrap();
    let mut service = Service::spawn(&file).await;
    assert_eq!(service.generation().await, 1);

    // The file is untouched, so only the signal can cause these reloads.
    for generation in [2, 3] {
        let sent = Instant::now();
        service.server.send_signal("HUP");
        while service.generation().await != generation {
            assert!(
                sent.elapsed() < SEEN_WITHIN,
                "generation {generation} not seen within {SEEN_WITHIN:?} of SIGHUP"
            );
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(service.limit("d", "user").await, Some(5));
    }
    assert_eq!(service.reloads("success").await, 2.0);
    assert!(service.server.is_running());
}

#[tokio::test]
async fn bad_file_keeps_the_last_good_rules_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    fs::write(&file, rules("d", &[("user", 5)])).unwrap();
    let mut service = Service::spawn(&file).await;
    assert_eq!(service.reloads("error").await, 0.0);

    let changed = rewrite(
        &file,
        "domain: d\ndescriptors:\n  - key: user\n    rate_limit: [oops\n",
    );
    while service.reloads("error").await < 1.0 {
        assert!(
            changed.elapsed() < SEEN_WITHIN,
            "bad file not refused within {SEEN_WITHIN:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(service.limit("d", "user").await, Some(5));
    assert_eq!(service.generation().await, 1);
    assert!(
        common::wait_until(SEEN_WITHIN, || has_line_column(
            &service.server.log(),
            "rules.yaml"
        )),
        "no rules.yaml:line:column in the log:\n{}",
        service.server.log_tail()
    );

    let changed = rewrite(&file, &rules("d", &[("user", 8)]));
    service.expect_limit(changed, "d", "user", Some(8)).await;
    assert_eq!(service.generation().await, 2);
    assert_eq!(service.reloads("error").await, 1.0);
    assert_eq!(service.reloads("success").await, 1.0);
}

#[tokio::test]
async fn half_written_file_never_applies_a_partial_rule_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    fs::write(&file, rules("d", &[("a", 5), ("b", 6)])).unwrap();
    let mut service = Service::start(&file).await;
    let old = vec![Some(5), Some(6)];
    let new = vec![Some(7), Some(8)];
    assert_eq!(service.limits("d", &["a", "b"]).await, old);

    // The first half is itself a valid rule set (rule a alone): only the open write says that it
    // is not finished. The pause is longer than the reloader's quiet period.
    let complete = rules("d", &[("a", 7), ("b", 8)]);
    let half = rules("d", &[("a", 7)]).len();
    let mut seen = Vec::new();
    let mut writer = fs::File::create(&file).unwrap();
    writer.write_all(&complete.as_bytes()[..half]).unwrap();
    writer.flush().unwrap();
    let pause = Instant::now() + Duration::from_millis(600);
    while Instant::now() < pause {
        seen.push(service.limits("d", &["a", "b"]).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let changed = Instant::now();
    writer.write_all(&complete.as_bytes()[half..]).unwrap();
    drop(writer);
    loop {
        let limits = service.limits("d", &["a", "b"]).await;
        seen.push(limits.clone());
        if limits == new {
            break;
        }
        assert!(
            changed.elapsed() < SEEN_WITHIN,
            "completed file not applied within {SEEN_WITHIN:?}; seen {seen:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        seen.iter().all(|limits| *limits == old || *limits == new),
        "a decision saw neither the old nor the new rules: {seen:?}"
    );
    assert_eq!(service.generation().await, 2);
}

#[tokio::test]
async fn unchanged_rules_keep_their_counters_across_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    fs::write(&file, rules("d", &[("a", 5), ("b", 5)])).unwrap();
    // The store's clock stands still: the minute window cannot end during the test.
    let mut service = Service::start(&file).await;

    for remaining in [4, 3, 2] {
        assert_eq!(service.hit("d", "a", "alice").await, (Code::Ok, remaining));
        assert_eq!(service.hit("d", "b", "alice").await, (Code::Ok, remaining));
    }

    let changed = replace(&file, &rules("d", &[("a", 5), ("b", 10)]));
    service.expect_limit(changed, "d", "b", Some(10)).await;
    assert_eq!(service.generation().await, 2);

    // a kept its 3 spent hits: 2 left.
    assert_eq!(service.hit("d", "a", "alice").await, (Code::Ok, 1));
    assert_eq!(service.hit("d", "a", "alice").await, (Code::Ok, 0));
    assert_eq!(service.hit("d", "a", "alice").await.0, Code::OverLimit);
    // b's quota changed: a fresh counter under the new limit.
    assert_eq!(service.hit("d", "b", "alice").await, (Code::Ok, 9));
}

#[test]
fn line_column_is_found_only_after_the_file_name() {
    assert!(has_line_column(
        "error=/tmp/x/rules.yaml:4:17: did not find",
        "rules.yaml"
    ));
    assert!(!has_line_column("rules.yaml: bad", "rules.yaml"));
    assert!(!has_line_column("rules.yaml:4 bad", "rules.yaml"));
    assert!(!has_line_column("other.yaml:4:1: bad", "rules.yaml"));
}
