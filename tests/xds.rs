//! Rules over xDS against the real binary: a management server in the test (`common::ads`) serves
//! `RateLimitConfig` over ADS, and live `ShouldRateLimit` answers show what tollgate applied.
//! "Applied" is bounded by one second from the server's push to tollgate's ACK, which tollgate
//! sends only after the new rules are in force.

mod common;

use std::time::{Duration, Instant};

use common::Tollgate;
use common::ads::{self, AdsServer, Kind, Unit};
use common::grpc::{self, Code, RlsClient};
use envoy_types::pb::google::protobuf::Any;

/// From a push to the rules answering.
const APPLIED: Duration = Duration::from_secs(1);
/// A reconnection after the server comes back (backoff capped at 400ms below).
const RECONNECTED: Duration = Duration::from_secs(5);

fn start_tollgate(ads: &AdsServer) -> Tollgate {
    let url = ads.url();
    let builder = Tollgate::builder().args(&[
        "--config-source",
        "xds",
        "--xds-server-url",
        &url,
        "--xds-node-id",
        "test-node",
        "--xds-node-metadata",
        "cluster=eu,zone=a",
        "--xds-retry-initial",
        "100ms",
        "--xds-retry-max",
        "400ms",
    ]);
    tokio::task::block_in_place(|| builder.start())
}

async fn client(tollgate: &Tollgate) -> RlsClient {
    grpc::connect(&tollgate.grpc_url()).await
}

async fn allowed(client: &mut RlsClient, domain: &str, n: usize) -> usize {
    grpc::count_ok(client, domain, &[("user", "alice")], n).await
}

/// Pushes `configs` and waits for their ACK within [`APPLIED`].
async fn push(ads: &AdsServer, configs: Vec<ads::RateLimitConfig>) -> String {
    let started = Instant::now();
    let version = ads.set(configs);
    ads.wait_ack(&version, APPLIED).await;
    assert!(
        started.elapsed() <= APPLIED,
        "applied in {:?}",
        started.elapsed()
    );
    version
}

fn per_minute(domain: &str, limit: u32) -> ads::RateLimitConfig {
    ads::config(domain, &[("user", limit, Unit::Minute)])
}

async fn generation(tollgate: &Tollgate) -> f64 {
    let metrics = common::http::get(&format!("{}/metrics", tollgate.http_url())).await;
    common::http::prometheus_value(&metrics.body, "tollgate_config_generation", &[])
        .expect("tollgate_config_generation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_arrive_change_and_are_removed() {
    let ads = AdsServer::start().await;
    let tollgate = start_tollgate(&ads);
    let subscribe = ads
        .wait_for("subscribe", RECONNECTED, |s| s.kind == Kind::Subscribe)
        .await;
    let node = ads::node(&subscribe);
    assert_eq!(node.id, "test-node");
    let metadata = node.metadata.expect("node metadata").fields;
    assert_eq!(metadata.len(), 2, "{metadata:?}");
    assert_eq!(
        subscribe.request.type_url,
        "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig"
    );
    let mut client = client(&tollgate).await;
    assert_eq!(allowed(&mut client, "api", 5).await, 5, "no rules yet");

    push(&ads, vec![per_minute("api", 2)]).await;
    assert_eq!(allowed(&mut client, "api", 4).await, 2, "arrived");

    push(&ads, vec![per_minute("api", 5)]).await;
    assert_eq!(allowed(&mut client, "api", 7).await, 5, "raised");

    push(&ads, vec![per_minute("api", 1)]).await;
    assert_eq!(allowed(&mut client, "api", 3).await, 1, "lowered");

    push(&ads, vec![]).await;
    assert_eq!(allowed(&mut client, "api", 5).await, 5, "removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_nacked_and_the_last_good_rules_stay() {
    let ads = AdsServer::start().await;
    let tollgate = start_tollgate(&ads);
    let mut client = client(&tollgate).await;
    let good = push(&ads, vec![per_minute("api", 3)]).await;
    assert_eq!(allowed(&mut client, "api", 1).await, 1);

    let no_unit = ads::config("api", &[("user", 10, Unit::Unknown)]);
    let bad = ads.set(vec![no_unit]);
    let nack = ads.wait_nack(&bad, APPLIED).await;
    let Kind::Nack(message) = &nack.kind else {
        unreachable!()
    };
    assert!(
        message.contains("xds:api:") && message.contains("unit"),
        "{message}"
    );
    assert_eq!(
        nack.request.version_info, good,
        "NACK names the version in force"
    );
    assert_eq!(
        allowed(&mut client, "api", 4).await,
        2,
        "the old limit of 3 holds"
    );

    let garbage = ads.set_raw(vec![Any {
        type_url: "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig".into(),
        value: vec![0xff, 0xff, 0xff],
    }]);
    let nack = ads.wait_nack(&garbage, APPLIED).await;
    assert!(matches!(&nack.kind, Kind::Nack(m) if m.contains("not a RateLimitConfig")));
    assert_eq!(
        allowed(&mut client, "api", 1).await,
        0,
        "still the old rules"
    );

    push(&ads, vec![per_minute("api", 4)]).await;
    assert_eq!(
        allowed(&mut client, "api", 5).await,
        4,
        "a good config after a bad one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_keep_serving_while_the_server_is_away_and_it_reconnects() {
    let mut ads = AdsServer::start().await;
    let tollgate = start_tollgate(&ads);
    let mut client = client(&tollgate).await;
    let first = push(&ads, vec![per_minute("api", 3)]).await;
    assert_eq!(allowed(&mut client, "api", 2).await, 2);

    ads.stop().await;
    assert!(
        tokio::task::block_in_place(|| tollgate.wait_for_log("reconnecting", RECONNECTED)),
        "tollgate noticed the server left"
    );
    assert_eq!(allowed(&mut client, "api", 3).await, 1, "the rules stay");

    let second = ads.set(vec![per_minute("api", 10)]);
    ads.restart().await;
    let resumed = ads
        .wait_for("a new stream", RECONNECTED, |s| {
            s.kind == Kind::Subscribe && s.stream > 1
        })
        .await;
    assert_eq!(
        resumed.request.version_info, first,
        "resumes from the version in force"
    );
    ads.wait_ack(&second, RECONNECTED).await;
    assert_eq!(
        allowed(&mut client, "api", 12).await,
        10,
        "the new rules apply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_of_unchanged_rules_survive_other_updates_and_resends() {
    let ads = AdsServer::start().await;
    let mut tollgate = start_tollgate(&ads);
    let mut client = client(&tollgate).await;
    push(&ads, vec![per_minute("a", 3), per_minute("b", 3)]).await;
    assert_eq!(allowed(&mut client, "a", 2).await, 2);

    push(&ads, vec![per_minute("a", 3), per_minute("b", 9)]).await;
    assert_eq!(
        allowed(&mut client, "a", 3).await,
        1,
        "a's counter survived b's update"
    );
    assert_eq!(allowed(&mut client, "b", 10).await, 9);

    let before = generation(&tollgate).await;
    push(&ads, vec![per_minute("a", 3), per_minute("b", 9)]).await;
    assert_eq!(
        generation(&tollgate).await,
        before,
        "a resend publishes nothing"
    );
    assert_eq!(allowed(&mut client, "a", 1).await, 0);
    assert_eq!(allowed(&mut client, "b", 1).await, 0);

    // SIGHUP has no file to reload in xDS mode: it is logged, and the rules and counters stay.
    tollgate.send_signal("HUP");
    assert!(tokio::task::block_in_place(|| {
        tollgate.wait_for_log("nothing to reload", RECONNECTED)
    }));
    assert_eq!(allowed(&mut client, "a", 1).await, 0);
    assert_eq!(generation(&tollgate).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_variables_select_xds() {
    let ads = AdsServer::start().await;
    let host_port = ads.host_port();
    let builder = Tollgate::builder().envs(&[
        ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
        ("CONFIG_GRPC_XDS_SERVER_URL", &host_port),
        ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
        ("CONFIG_GRPC_XDS_NODE_METADATA", "gateway=eg"),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
        ("RUNTIME_ROOT", "/data"),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms"),
    ]);
    let tollgate = tokio::task::block_in_place(|| builder.start());
    let subscribe = ads
        .wait_for("subscribe", RECONNECTED, |s| s.kind == Kind::Subscribe)
        .await;
    let node = ads::node(&subscribe);
    assert_eq!(node.id, "envoy-ratelimit");
    assert!(node.metadata.unwrap().fields.contains_key("gateway"));
    let mut client = client(&tollgate).await;
    push(&ads, vec![per_minute("api", 1)]).await;
    assert_eq!(allowed(&mut client, "api", 2).await, 1);
    assert_eq!(
        grpc::check(&mut client, "api", &[("user", "alice")]).await,
        Code::OverLimit
    );
}

/// A CA, a server certificate for `envoy-gateway` and 127.0.0.1, and a client certificate, made
/// with the `openssl` command: Envoy Gateway's layout (`ca.crt`, `tls.crt`, `tls.key`).
fn make_certificates() -> common::certs::Pki {
    let pki = common::certs::Pki::new("test-ca");
    pki.leaf("server", "DNS:envoy-gateway,IP:127.0.0.1", "serverAuth");
    pki.leaf("tls", "DNS:envoy-ratelimit", "clientAuth");
    pki
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_to_the_server_with_envoy_gateway_variables() {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let certs = make_certificates();
    let read = |name: &str| certs.read(name);
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.crt"), read("server.key")))
        .client_ca_root(Certificate::from_pem(read("ca.crt")));
    let ads = AdsServer::start_with(Some(tls)).await;
    let path = |name: &str| certs.path(name).to_str().unwrap().to_string();
    let host_port = ads.host_port();
    let (ca, cert, key) = (path("ca.crt"), path("tls.crt"), path("tls.key"));
    let mut env = vec![
        ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
        ("CONFIG_GRPC_XDS_SERVER_URL", host_port.as_str()),
        ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
        ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", ca.as_str()),
        ("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "envoy-gateway"),
        ("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "100ms"),
        ("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "400ms"),
    ];

    // Without a client certificate the server refuses the connection: no stream, no rules.
    let builder = Tollgate::builder().envs(&env);
    let refused = tokio::task::block_in_place(|| builder.start());
    assert!(
        tokio::task::block_in_place(|| refused.wait_for_log("reconnecting", RECONNECTED)),
        "{}",
        refused.log()
    );
    assert_eq!(
        ads.streams(),
        0,
        "a client without a certificate got a stream"
    );

    env.push(("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", cert.as_str()));
    env.push(("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", key.as_str()));
    let builder = Tollgate::builder().envs(&env);
    let tollgate = tokio::task::block_in_place(|| builder.start());
    let subscribe = ads
        .wait_for("subscribe over mTLS", RECONNECTED, |s| {
            s.kind == Kind::Subscribe
        })
        .await;
    assert_eq!(ads::node(&subscribe).id, "envoy-ratelimit");
    let mut client = client(&tollgate).await;
    push(&ads, vec![per_minute("api", 2)]).await;
    assert_eq!(allowed(&mut client, "api", 3).await, 2);
}
