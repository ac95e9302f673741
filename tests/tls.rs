//! TLS and mTLS on the gRPC port: the real Envoy calling tollgate over both, clients refused for
//! a missing certificate, a wrong CA or a SAN not on the allow-list, a certificate rotated on disk
//! picked up by new connections while an established one keeps working, and the binary run as
//! Envoy Gateway runs it (`/bin/ratelimit` with the peer's variables). TLS on the admin port:
//! `/healthcheck` and `POST /json` over HTTPS, plaintext refused, a rotated certificate picked up,
//! mTLS refusing a client without a certificate, and a stalled handshake closed after the header
//! timeout while it holds a place under the connection cap.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::Pki;
use common::grpc::{self, Code, RateLimitServiceClient, RlsClient};
use common::{Envoy, Tollgate, http};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const RULES: &str = "domain: api\n\
descriptors:\n\
\x20 - key: user_id\n\
\x20   rate_limit:\n\
\x20     unit: minute\n\
\x20     requests_per_unit: 2\n\
\x20     algorithm: fixed_window\n";

/// The name tollgate's certificates carry, and clients check.
const SERVER_SAN: &str = "DNS:tollgate,IP:127.0.0.1";
/// The identity of the allowed client (Envoy).
const CLIENT_SPIFFE: &str = "spiffe://test/ns/gateway/sa/envoy";

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tonic client over TLS to `port`, trusting `ca`, presenting `identity` if given; the error
/// text if the connection or a first call fails.
async fn tls_client(
    port: u16,
    ca: &[u8],
    identity: Option<(&Path, &Path)>,
) -> Result<RlsClient, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("tollgate");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut client = RateLimitServiceClient::new(channel);
    call(&mut client, "probe").await?;
    Ok(client)
}

async fn call(client: &mut RlsClient, user: &str) -> Result<Code, String> {
    grpc::try_should_rate_limit(client, grpc::rls_request("api", &[&[("user_id", user)]]))
        .await
        .map(|r| grpc::overall(&r))
        .map_err(|status| format!("{status:?}"))
}

/// An Envoy whose only route asks tollgate (failing closed, so a broken TLS link is a 500) and
/// then forwards to tollgate's own `/healthcheck`; TLS to tollgate trusting `ca` and checking its
/// SAN, with a client certificate if given. Returns Envoy and the URL of its listener.
fn envoy(tollgate: &Tollgate, ca: &Path, client: Option<(&Path, &Path)>) -> (Envoy, String) {
    let certificates = client.map_or_else(String::new, |(cert, key)| {
        format!(
            "tls_certificates: [{{ certificate_chain: {{ filename: {} }}, private_key: {{ filename: {} }} }}]",
            path(cert),
            path(key)
        )
    });
    let (grpc, http) = (tollgate.grpc_port(), tollgate.http_port());
    let ca = path(ca);
    let (envoy, ports) = Envoy::start_on_ports(2, |p| {
        format!(
            r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
    - name: public
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: public
                route_config:
                  virtual_hosts:
                    - name: app
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route:
                            cluster: app
                            prefix_rewrite: /healthcheck
                            rate_limits:
                              - actions:
                                  - request_headers: {{ header_name: x-user-id, descriptor_key: user_id }}
                http_filters:
                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                      domain: api
                      timeout: 5s
                      failure_mode_deny: true
                      rate_limit_service:
                        transport_api_version: V3
                        grpc_service: {{ envoy_grpc: {{ cluster_name: tollgate }} }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: app
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: app
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {http} }} }} }} }}] }}]
    - name: tollgate
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: tollgate
          common_tls_context:
            alpn_protocols: [h2]
            {certificates}
            validation_context:
              trusted_ca: {{ filename: {ca} }}
              match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: tollgate }} }}]
      load_assignment:
        cluster_name: tollgate
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {grpc} }} }} }} }}] }}]
"#,
            admin = p[0],
            listener = p[1],
        )
    });
    (envoy, format!("http://127.0.0.1:{}/", ports[1]))
}

/// Alice's statuses through Envoy for three requests: the limit is two a minute.
async fn three_through(url: &str) -> Vec<u16> {
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = client
            .get(url)
            .header("x-user-id", "alice")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_calls_tollgate_over_tls() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("server", SERVER_SAN, "serverAuth");
    let tls = ["--grpc-tls-cert", path(&cert), "--grpc-tls-key", path(&key)];
    let (_rules, tollgate) = Tollgate::with_rules(RULES, &tls);
    let (_envoy, url) = tokio::task::block_in_place(|| envoy(&tollgate, &pki.path("ca.crt"), None));
    assert_eq!(three_through(&url).await, [200, 200, 429]);
    // The port speaks TLS only: a plaintext client gets no answer.
    let mut plain = RateLimitServiceClient::connect(tollgate.grpc_url()).await;
    if let Ok(client) = &mut plain {
        assert!(
            call(client, "bob").await.is_err(),
            "plaintext call answered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_calls_tollgate_over_mtls_with_an_allowed_san() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("server", SERVER_SAN, "serverAuth");
    let client_san = format!("DNS:envoy,URI:{CLIENT_SPIFFE}");
    let (envoy_cert, envoy_key) = pki.leaf("envoy", &client_san, "clientAuth");
    let ca = pki.path("ca.crt");
    let (_rules, tollgate) = Tollgate::with_rules(
        RULES,
        &[
            "--grpc-tls-cert",
            path(&cert),
            "--grpc-tls-key",
            path(&key),
            "--grpc-tls-client-ca",
            path(&ca),
            "--grpc-tls-client-san",
            "someone-else",
            "--grpc-tls-client-san",
            CLIENT_SPIFFE,
        ],
    );
    let (_envoy, url) =
        tokio::task::block_in_place(|| envoy(&tollgate, &ca, Some((&envoy_cert, &envoy_key))));
    assert_eq!(three_through(&url).await, [200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_from_another_ca_or_with_a_wrong_san() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("server", SERVER_SAN, "serverAuth");
    let allowed = pki.leaf("envoy", "DNS:envoy", "clientAuth");
    let stranger = pki.leaf(
        "stranger",
        "DNS:stranger,URI:spiffe://test/other",
        "clientAuth",
    );
    let other_ca = Pki::new("other-ca");
    let forged = other_ca.leaf("envoy", "DNS:envoy", "clientAuth");
    let (_rules, tollgate) = Tollgate::with_rules(
        RULES,
        &[
            "--grpc-tls-cert",
            path(&cert),
            "--grpc-tls-key",
            path(&key),
            "--grpc-tls-client-ca",
            path(&pki.path("ca.crt")),
            "--grpc-tls-client-san",
            "envoy",
        ],
    );
    let (port, ca) = (tollgate.grpc_port(), pki.read("ca.crt"));
    let mut client = tls_client(port, &ca, Some((&allowed.0, &allowed.1)))
        .await
        .expect("the allowed client is served");
    assert_eq!(call(&mut client, "alice").await, Ok(Code::Ok));

    assert!(tls_client(port, &ca, None).await.is_err(), "no certificate");
    assert!(
        tls_client(port, &ca, Some((&forged.0, &forged.1)))
            .await
            .is_err(),
        "a certificate of another CA"
    );
    assert!(
        tls_client(port, &ca, Some((&stranger.0, &stranger.1)))
            .await
            .is_err(),
        "a SAN not on the allow-list"
    );
    assert!(
        tollgate.wait_for_log(
            "no allowed SAN in the client certificate",
            Duration::from_secs(5)
        ),
        "the SAN refusal is logged: {}",
        tollgate.log_tail()
    );
    // The allowed client's connection is unaffected by the refusals.
    assert_eq!(call(&mut client, "alice").await, Ok(Code::Ok));
}

/// Two CAs and the certificate and key files a server is given: the first CA's leaf, until
/// `rotate` writes the second's over it (the key first, as a rotation may be caught half-way).
struct Rotation {
    first: Pki,
    second: Pki,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rotation {
    fn new() -> Rotation {
        let (first, second) = (Pki::new("first-ca"), Pki::new("second-ca"));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = first.leaf("server", SERVER_SAN, "serverAuth");
        std::fs::copy(&c1, &cert).unwrap();
        std::fs::copy(&k1, &key).unwrap();
        Rotation {
            first,
            second,
            cert,
            key,
            _dir: dir,
        }
    }

    fn rotate(&self) {
        let (c2, k2) = self.second.leaf("server", SERVER_SAN, "serverAuth");
        std::fs::write(&self.key, std::fs::read(&k2).unwrap()).unwrap();
        std::fs::write(&self.cert, std::fs::read(&c2).unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_while_old_ones_keep_working() {
    let files = Rotation::new();
    let (first, second, cert, key) = (&files.first, &files.second, &files.cert, &files.key);
    let tls = ["--grpc-tls-cert", path(cert), "--grpc-tls-key", path(key)];
    let (_rules, tollgate) = Tollgate::with_rules(RULES, &tls);
    let port = tollgate.grpc_port();
    let mut old = tls_client(port, &first.read("ca.crt"), None)
        .await
        .expect("served with the first certificate");

    // The new certificate comes from another CA, so which one a handshake got is unambiguous:
    // a client trusting only the first CA can no longer connect, and `old`, which trusts only
    // the first, keeps working only if its connection was not re-established.
    files.rotate();
    let second_ca = second.read("ca.crt");
    let picked_up = common::wait_until_async(Duration::from_secs(10), || async {
        tls_client(port, &second_ca, None).await.is_ok()
    })
    .await;
    assert!(
        picked_up,
        "the new certificate is not served: {}",
        tollgate.log_tail()
    );
    assert!(tollgate.log().contains("TLS certificate reloaded"));
    assert!(
        tls_client(port, &first.read("ca.crt"), None).await.is_err(),
        "a new connection still gets the old certificate"
    );
    for _ in 0..3 {
        assert_eq!(call(&mut old, "alice").await.map(|_| ()), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_ratelimit_with_envoy_gateways_variables_it_serves_mtls() {
    let pki = Pki::new("envoy-gateway-ca");
    // Envoy Gateway's layout: one Secret mounted at /certs with ca.crt, tls.crt, tls.key.
    let (cert, key) = pki.leaf(
        "tls",
        "DNS:tollgate,DNS:envoy-ratelimit",
        "serverAuth,clientAuth",
    );
    let envoy = pki.leaf("envoy", "DNS:envoy", "clientAuth");
    let bin = tempfile::tempdir().unwrap();
    let ratelimit = bin.path().join("ratelimit");
    std::os::unix::fs::symlink(common::tollgate::binary(), &ratelimit).unwrap();
    let rules = tempfile::tempdir().unwrap();
    // The peer reads $RUNTIME_ROOT/$RUNTIME_SUBDIRECTORY/config.
    std::fs::create_dir(rules.path().join("config")).unwrap();
    std::fs::write(rules.path().join("config/api.yaml"), RULES).unwrap();
    let ports = common::free_ports(2);
    let (grpc_port, http_port) = (ports[0].to_string(), ports[1].to_string());
    let log = common::process::new_log(bin.path(), "ratelimit.log");
    let mut command = std::process::Command::new(&ratelimit);
    command.env_clear().envs([
        ("HOST", "127.0.0.1"),
        ("PORT", &http_port),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", &grpc_port),
        ("RUNTIME_ROOT", path(rules.path())),
        ("USE_STATSD", "false"),
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", path(&cert)),
        ("GRPC_SERVER_TLS_KEY", path(&key)),
        ("GRPC_SERVER_TLS_CA_CERT", path(&pki.path("ca.crt"))),
    ]);
    let process = common::process::Proc::spawn("ratelimit", command, &log);
    let ca = pki.read("ca.crt");
    let port = ports[0];
    let served = common::wait_until_async(Duration::from_secs(15), || async {
        tls_client(port, &ca, Some((&envoy.0, &envoy.1)))
            .await
            .is_ok()
    })
    .await;
    assert!(served, "not served over mTLS: {}", process.log_tail());
    let mut client = tls_client(port, &ca, Some((&envoy.0, &envoy.1)))
        .await
        .unwrap();
    assert_eq!(call(&mut client, "alice").await, Ok(Code::Ok));
    // GRPC_SERVER_TLS_CA_CERT made it mTLS: no certificate, no answer.
    assert!(tls_client(port, &ca, None).await.is_err());
}

/// A request to the admin port over HTTPS (rustls, trusting `ca`, presenting `identity` if given,
/// offering `h2` and `http/1.1` as Go's clients do): `request` is `GET /path` or
/// `POST /path <body>`. The response, or why there is none.
async fn https(
    port: u16,
    ca: &[u8],
    identity: Option<(&Path, &Path)>,
    request: &str,
) -> Result<http::Response, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (method, rest) = request.split_once(' ').unwrap();
    let (path, body) = rest.split_once(' ').unwrap_or((rest, ""));
    let exchange = async {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("tollgate").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tollgate\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_string())??;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {answer:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(http::Response {
        status,
        body: body.to_owned(),
        headers,
    })
}

/// tollgate serving [`RULES`] with `args`, once its admin port answers `/healthcheck` over HTTPS
/// to a client trusting `ca` (with `identity` where mTLS asks for one).
async fn with_admin_tls(
    args: &[&str],
    ca: &[u8],
    identity: Option<(&Path, &Path)>,
) -> (tempfile::TempDir, Tollgate) {
    let rules = tempfile::tempdir().unwrap();
    let config = rules.path().join("api.yaml");
    std::fs::write(&config, RULES).unwrap();
    let tollgate = Tollgate::builder()
        .args(&["--config", path(&config)])
        .args(args)
        .spawn();
    let port = tollgate.http_port();
    let healthy = common::wait_until_async(Duration::from_secs(20), || async {
        https(port, ca, identity, "GET /healthcheck")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(healthy, "not healthy over HTTPS: {}", tollgate.log_tail());
    (rules, tollgate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_https_and_refuses_plaintext() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("server", SERVER_SAN, "serverAuth");
    let tls = ["--http-tls-cert", path(&cert), "--http-tls-key", path(&key)];
    let ca = pki.read("ca.crt");
    let (_rules, tollgate) = with_admin_tls(&tls, &ca, None).await;
    let port = tollgate.http_port();
    let health = https(port, &ca, None, "GET /healthcheck").await.unwrap();
    assert_eq!((health.status, health.body.trim()), (200, "OK"));
    let body =
        r#"{"domain":"api","descriptors":[{"entries":[{"key":"user_id","value":"alice"}]}]}"#;
    let mut codes = Vec::new();
    for _ in 0..3 {
        let answer = https(port, &ca, None, &format!("POST /json {body}"))
            .await
            .unwrap();
        codes.push((answer.status, answer.json()["overallCode"].clone()));
    }
    assert_eq!(
        codes,
        [
            (200, "OK".into()),
            (200, "OK".into()),
            (429, "OVER_LIMIT".into())
        ]
    );
    // The same counter as gRPC, which stays plaintext.
    let mut client = tollgate.client().await;
    assert_eq!(call(&mut client, "alice").await, Ok(Code::OverLimit));
    // The port speaks TLS only: a plaintext request gets no HTTP answer.
    assert_eq!(tollgate.health_status(), None, "plaintext answered");
    assert!(
        https(port, &pki.read("ca.crt"), None, "GET /metrics")
            .await
            .is_ok_and(|r| r.status == 200 && r.body.contains("tollgate_")),
        "the port still serves HTTPS after a plaintext client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_admin_certificate_is_picked_up() {
    let files = Rotation::new();
    let (first, second, cert, key) = (&files.first, &files.second, &files.cert, &files.key);
    let tls = ["--http-tls-cert", path(cert), "--http-tls-key", path(key)];
    let (_rules, tollgate) = with_admin_tls(&tls, &first.read("ca.crt"), None).await;
    let port = tollgate.http_port();

    // As on the gRPC port, the new certificate comes from another CA, so a handshake tells which
    // one it got.
    files.rotate();
    let second_ca = second.read("ca.crt");
    let picked_up = common::wait_until_async(Duration::from_secs(10), || async {
        https(port, &second_ca, None, "GET /healthcheck")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(
        picked_up,
        "the new certificate is not served: {}",
        tollgate.log_tail()
    );
    assert!(
        https(port, &first.read("ca.crt"), None, "GET /healthcheck")
            .await
            .is_err(),
        "a new connection still gets the old certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mtls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("server", SERVER_SAN, "serverAuth");
    let (client_cert, client_key) = pki.leaf("prometheus", "DNS:prometheus", "clientAuth");
    let ca_path = pki.path("ca.crt");
    let tls = [
        "--http-tls-cert",
        path(&cert),
        "--http-tls-key",
        path(&key),
        "--http-tls-client-ca",
        path(&ca_path),
    ];
    let ca = pki.read("ca.crt");
    let identity = Some((client_cert.as_path(), client_key.as_path()));
    let (_rules, tollgate) = with_admin_tls(&tls, &ca, identity).await;
    let port = tollgate.http_port();
    let refused = https(port, &ca, None, "GET /healthcheck").await;
    assert!(
        refused.is_err(),
        "answered without a certificate: {refused:?}"
    );
    let other_ca = Pki::new("other-ca");
    let forged = other_ca.leaf("prometheus", "DNS:prometheus", "clientAuth");
    let forged = https(port, &ca, Some((&forged.0, &forged.1)), "GET /healthcheck").await;
    assert!(
        forged.is_err(),
        "answered a certificate of another CA: {forged:?}"
    );
    let served = https(port, &ca, identity, "GET /metrics").await.unwrap();
    assert_eq!(served.status, 200);
}

/// Each stalled handshake holds one of the two places under the cap until the header timeout
/// closes it; only then is a good client's handshake taken. Without the timeout a silent client
/// would hold its place forever; without the cap, the good client would be answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_admin_handshake_is_closed_after_the_header_timeout() {
    let pki = Pki::new("ca");
    let (cert, key) = pki.leaf("server", SERVER_SAN, "serverAuth");
    let timeout = Duration::from_secs(1);
    let args = [
        "--http-tls-cert",
        path(&cert),
        "--http-tls-key",
        path(&key),
        "--admin-header-timeout",
        "1s",
        "--admin-max-connections",
        "2",
    ];
    let ca = pki.read("ca.crt");
    let (_rules, tollgate) = with_admin_tls(&args, &ca, None).await;
    let addr = tollgate.http_addr();
    // One sends nothing; the other the first bytes of a TLS record, never the rest.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let stalled_at = Instant::now();
    let good = tokio::spawn({
        let ca = ca.clone();
        let port = addr.port();
        async move {
            let answer = https(port, &ca, None, "GET /healthcheck").await;
            (answer, Instant::now())
        }
    });
    for stream in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a stalled handshake was not closed: {read:?}"
        );
    }
    let closed_after = stalled_at.elapsed();
    assert!(
        closed_after < timeout * 4,
        "closing the stalled handshakes took {closed_after:?}"
    );
    let (answer, answered_at) = good.await.unwrap();
    assert_eq!(answer.map(|r| r.status), Ok(200));
    let waited = answered_at - stalled_at;
    assert!(
        waited >= timeout * 9 / 10,
        "the good client was answered after {waited:?}: the stalled handshakes held no place under the cap"
    );
}
