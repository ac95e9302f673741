//! The deployment files: `k8s/*.yaml` against the Kubernetes 1.30 JSON schemas (strict: unknown
//! fields are errors) with `kubernetes-validate`; the Istio EnvoyFilters, a CRD with no Kubernetes
//! schema, by their structure here; the rules ConfigMaps through `tollgate check`; the sidecar's
//! Envoy config through `envoy --mode validate`; the Dockerfile through `hadolint`; and the
//! hardening every pod must carry. Files mixing core kinds with CRDs (cert-manager, Envoy
//! Gateway's configuration) have their core documents schema-validated and the rest checked by
//! structure. `tests/run.sh` installs the tools; a missing one fails.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;

use common::tollgate;

const KUBERNETES_VERSION: &str = "1.30.0";
const SCHEMA_VALIDATED: [&str; 3] = ["sidecar.yaml", "deployment.yaml", "redis-cluster.yaml"];
/// Files whose core documents pass the schemas, beside custom resources checked here.
const WITH_CUSTOM_RESOURCES: [&str; 2] =
    ["deployment-tls.yaml", "envoy-gateway/envoy-gateway.yaml"];
const ENVOY_FILTERS: [&str; 2] = [
    "istio/envoyfilter-gateway.yaml",
    "istio/envoyfilter-sidecar.yaml",
];
const TOLLGATE_CLUSTER: &str = "outbound|8081||tollgate.tollgate.svc.cluster.local";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn k8s(file: &str) -> PathBuf {
    root().join("k8s").join(file)
}

/// Every YAML document of a file, empty ones dropped.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string in {v:?}"))
}

/// A tool installed by tests/run.sh: `$ENV`, else on PATH, else in ~/.cache/tollgate-tools/bin.
fn tool(name: &str, env: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "{env}={} does not exist", bin.display());
        return bin;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    let cached = std::env::var_os("HOME")
        .map(|home| {
            PathBuf::from(home)
                .join(".cache/tollgate-tools/bin")
                .join(name)
        })
        .filter(|p| p.is_file());
    on_path.or(cached).unwrap_or_else(|| {
        panic!("`{name}` not found ({env}, PATH, ~/.cache/tollgate-tools/bin): run tests/run.sh --install-only")
    })
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn manifests_pass_the_kubernetes_schemas_strictly() {
    let validator = tool("kubernetes-validate", "KUBERNETES_VALIDATE_BIN");
    for file in SCHEMA_VALIDATED {
        let path = k8s(file);
        validate_strictly(&validator, file, &path, documents(&path).len());
    }
}

/// Runs the validator on `path` and asserts that all its `documents` passed.
fn validate_strictly(validator: &Path, file: &str, path: &Path, documents: usize) {
    let (ok, out) = run(Command::new(validator)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(path));
    assert!(ok, "{file}:\n{out}");
    // A kind without a schema only warns: every document must have been checked.
    assert!(!out.contains("WARN"), "{file}:\n{out}");
    let passed = out.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(passed, documents, "{file}:\n{out}");
}

#[test]
fn the_validator_rejects_an_unknown_field() {
    let validator = tool("kubernetes-validate", "KUBERNETES_VALIDATE_BIN");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(k8s("deployment.yaml")).unwrap();
    std::fs::write(
        &path,
        good.replace("  replicas: 2\n", "  replicas: 2\n  replica_count: 2\n"),
    )
    .unwrap();
    let (ok, out) = run(Command::new(&validator)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(&path));
    assert!(!ok, "a misspelt field passed:\n{out}");
}

#[test]
fn envoyfilters_insert_the_ratelimit_filter_before_the_router() {
    let service_ports = documents(&k8s("deployment.yaml"))
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .map(|svc| {
            assert_eq!(str_at(&svc, &["metadata", "name"]), "tollgate");
            assert_eq!(str_at(&svc, &["metadata", "namespace"]), "tollgate");
            svc["spec"]["ports"].clone()
        })
        .unwrap();
    let grpc_port = service_ports
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("grpc"))
        .unwrap();
    assert_eq!(grpc_port["port"].as_u64(), Some(8081));
    assert_eq!(grpc_port["appProtocol"].as_str(), Some("grpc"));

    for file in ENVOY_FILTERS {
        let docs = documents(&k8s(file));
        assert_eq!(docs.len(), 1, "{file}");
        let filter = &docs[0];
        assert_eq!(
            str_at(filter, &["apiVersion"]),
            "networking.istio.io/v1alpha3"
        );
        assert_eq!(str_at(filter, &["kind"]), "EnvoyFilter");
        assert!(!str_at(filter, &["metadata", "name"]).is_empty());
        assert!(!str_at(filter, &["metadata", "namespace"]).is_empty());
        assert!(
            filter["spec"]["workloadSelector"]["labels"]
                .as_mapping()
                .is_some_and(|m| !m.is_empty()),
            "{file}: no workloadSelector"
        );
        let patches = filter["spec"]["configPatches"].as_sequence().unwrap();
        let mut http_filter = None;
        let mut vhost = None;
        for patch in patches {
            let context = str_at(patch, &["match", "context"]);
            assert!(
                ["GATEWAY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND"].contains(&context),
                "{file}: context {context}"
            );
            match str_at(patch, &["applyTo"]) {
                "HTTP_FILTER" => http_filter = Some(patch),
                "VIRTUAL_HOST" => vhost = Some(patch),
                other => panic!("{file}: unexpected applyTo {other}"),
            }
        }

        let patch = http_filter.unwrap_or_else(|| panic!("{file}: no HTTP_FILTER patch"));
        let hcm = &patch["match"]["listener"]["filterChain"]["filter"];
        assert_eq!(
            str_at(hcm, &["name"]),
            "envoy.filters.network.http_connection_manager"
        );
        assert_eq!(
            str_at(hcm, &["subFilter", "name"]),
            "envoy.filters.http.router"
        );
        assert_eq!(str_at(patch, &["patch", "operation"]), "INSERT_BEFORE");
        let value = &patch["patch"]["value"];
        assert_eq!(str_at(value, &["name"]), "envoy.filters.http.ratelimit");
        let config = &value["typed_config"];
        assert_eq!(
            str_at(config, &["@type"]),
            "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
        );
        assert_eq!(str_at(config, &["domain"]), "api", "{file}");
        let service = &config["rate_limit_service"];
        assert_eq!(str_at(service, &["transport_api_version"]), "V3");
        assert_eq!(
            str_at(service, &["grpc_service", "envoy_grpc", "cluster_name"]),
            TOLLGATE_CLUSTER
        );

        let patch = vhost.unwrap_or_else(|| panic!("{file}: no VIRTUAL_HOST patch"));
        assert_eq!(str_at(patch, &["patch", "operation"]), "MERGE");
        let rate_limits = patch["patch"]["value"]["rate_limits"]
            .as_sequence()
            .unwrap();
        assert!(!rate_limits.is_empty(), "{file}");
        for limit in rate_limits {
            let actions = limit["actions"].as_sequence().unwrap();
            assert!(!actions.is_empty(), "{file}");
        }
    }
}

/// The `data` of every ConfigMap holding rule files (a value with a top-level `domain:`).
fn rule_files(file: &str) -> Vec<(String, String)> {
    let mut rules = Vec::new();
    for doc in documents(&k8s(file)) {
        if doc["kind"].as_str() != Some("ConfigMap") {
            continue;
        }
        for (key, value) in doc["data"].as_mapping().unwrap() {
            let text = value.as_str().unwrap();
            if text.lines().any(|l| l.starts_with("domain:")) {
                rules.push((key.as_str().unwrap().to_owned(), text.to_owned()));
            }
        }
    }
    rules
}

#[test]
fn rules_configmaps_pass_tollgate_check() {
    for (file, domain) in [("deployment.yaml", "api"), ("sidecar.yaml", "myapp")] {
        let rules = rule_files(file);
        assert!(!rules.is_empty(), "{file}: no rules ConfigMap");
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in &rules {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let out = tollgate::run(&["check", "--config", dir.path().to_str().unwrap()]);
        assert!(out.success(), "{file}: {out:?}");
        assert!(
            rules
                .iter()
                .any(|(_, t)| t.contains(&format!("domain: {domain}\n"))),
            "{file}: domain {domain} missing"
        );
    }
}

#[test]
fn sidecar_envoy_config_passes_envoy_validate() {
    let docs = documents(&k8s("sidecar.yaml"));
    let envoy_yaml = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap") && !d["data"]["envoy.yaml"].is_null())
        .map(|d| str_at(d, &["data", "envoy.yaml"]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, envoy_yaml).unwrap();
    let (ok, out) = run(Command::new(common::envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&path));
    assert!(ok, "{out}");
    assert!(
        envoy_yaml.contains("domain: myapp"),
        "Envoy asks for another domain than the sidecar's rules"
    );
}

/// Pod templates of the workloads in `file`, with the workload's kind and name.
fn pod_specs(file: &str) -> Vec<(String, Value)> {
    documents(&k8s(file))
        .into_iter()
        .filter_map(|doc| {
            let kind = doc["kind"].as_str()?.to_owned();
            ["Deployment", "StatefulSet", "Job"]
                .contains(&kind.as_str())
                .then(|| {
                    let name = format!("{kind}/{}", str_at(&doc, &["metadata", "name"]));
                    (name, doc["spec"]["template"]["spec"].clone())
                })
        })
        .collect()
}

fn seconds(duration: &str) -> u64 {
    ::tollgate::config::parse_duration(duration)
        .unwrap()
        .as_secs()
}

#[test]
fn every_container_is_hardened_and_bounded() {
    for file in SCHEMA_VALIDATED.into_iter().chain(WITH_CUSTOM_RESOURCES) {
        let pods = pod_specs(file);
        assert!(!pods.is_empty(), "{file}");
        for (workload, pod) in pods {
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"].as_bool(),
                Some(true),
                "{file} {workload}"
            );
            for container in pod["containers"].as_sequence().unwrap() {
                let at = format!("{file} {workload} {}", str_at(container, &["name"]));
                let sc = &container["securityContext"];
                assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{at}");
                assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{at}");
                assert_eq!(
                    sc["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{at}"
                );
                let drop = sc["capabilities"]["drop"].as_sequence().unwrap();
                assert!(drop.iter().any(|c| c.as_str() == Some("ALL")), "{at}");
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            !container["resources"][bound][resource].is_null(),
                            "{at}: no {bound}.{resource}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn tollgate_pods_are_probed_scraped_and_given_time_to_drain() {
    for file in ["deployment.yaml", "sidecar.yaml", "deployment-tls.yaml"] {
        let docs = documents(&k8s(file));
        let deployment = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("Deployment"))
            .unwrap();
        let template = &deployment["spec"]["template"];
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
        assert_eq!(annotations["prometheus.io/port"].as_str(), Some("8080"));
        assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));

        let pod = &template["spec"];
        let container = pod["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str() == Some("tollgate"))
            .unwrap();
        // With TLS on the admin port, a plain HTTP probe would never pass.
        let admin_tls = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| e["name"].as_str() == Some("TOLLGATE_HTTP_TLS_CERT"));
        let scheme = if admin_tls { Some("HTTPS") } else { None };
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                str_at(container, &[probe, "httpGet", "path"]),
                "/healthcheck",
                "{file} {probe}"
            );
            assert_eq!(
                container[probe]["httpGet"]["scheme"].as_str(),
                scheme,
                "{file} {probe}"
            );
        }
        let env = |name: &str| {
            container["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["name"].as_str() == Some(name))
                .map(|e| str_at(e, &["value"]).to_owned())
                .unwrap_or_else(|| panic!("{file}: no {name}"))
        };
        let drain = seconds(&env("TOLLGATE_DRAIN_DELAY")) + seconds(&env("TOLLGATE_DRAIN_TIMEOUT"));
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(grace > drain, "{file}: grace {grace}s <= drain {drain}s");
        // Liveness must not kill a pod that is only draining.
        let live = &container["livenessProbe"];
        let tolerated = live["periodSeconds"].as_u64().unwrap_or(10)
            * live["failureThreshold"].as_u64().unwrap_or(3);
        assert!(
            tolerated > seconds(&env("TOLLGATE_DRAIN_DELAY")),
            "{file}: liveness fails during the drain"
        );
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"].as_str() == Some("/etc/tollgate"))
            .unwrap_or_else(|| panic!("{file}: rules not mounted at /etc/tollgate"));
        assert!(
            mount["subPath"].is_null(),
            "{file}: a subPath mount never reloads"
        );
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = tool("hadolint", "HADOLINT_BIN");
    let (ok, out) = run(Command::new(hadolint).arg(root().join("Dockerfile")));
    assert!(ok, "{out}");
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for needle in [
        "cargo build --release --locked",
        "EXPOSE 8080 8081",
        "HEALTHCHECK",
        r#"ENTRYPOINT ["/usr/local/bin/tollgate", "serve"]"#,
        "TOLLGATE_CONFIG=/etc/tollgate",
        "gcr.io/distroless/cc-debian12:nonroot",
        "ln -s /usr/local/bin/tollgate /out/bin/ratelimit",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
}

#[test]
fn tollgate_image_is_the_local_build_of_this_version() {
    let image = format!("tollgate:{}", env!("CARGO_PKG_VERSION"));
    for file in ["deployment.yaml", "sidecar.yaml", "deployment-tls.yaml"] {
        let images: Vec<String> = pod_specs(file)
            .iter()
            .flat_map(|(_, pod)| pod["containers"].as_sequence().unwrap().clone())
            .filter(|c| c["name"].as_str() == Some("tollgate"))
            .map(|c| str_at(&c, &["image"]).to_owned())
            .collect();
        assert_eq!(images, std::slice::from_ref(&image), "{file}");
    }
    let readme = std::fs::read_to_string(k8s("README.md")).unwrap();
    assert!(
        readme.contains(&format!("docker build -t {image} .")),
        "k8s/README.md does not say how to build {image}"
    );
}

/// Validates the documents of `file` whose kind is Kubernetes' own (strictly, every one checked)
/// and returns the others, the custom resources.
fn validate_core_documents(file: &str) -> Vec<Value> {
    let (core, custom): (Vec<Value>, Vec<Value>) = documents(&k8s(file))
        .into_iter()
        .partition(|doc| !str_at(doc, &["apiVersion"]).contains(".io/"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.yaml");
    // As JSON (a subset of YAML): re-emitted YAML could turn strings such as `no` into booleans.
    let text: Vec<String> = core
        .iter()
        .map(|doc| serde_json::to_string(doc).unwrap())
        .collect();
    std::fs::write(&path, text.join("\n---\n")).unwrap();
    let validator = tool("kubernetes-validate", "KUBERNETES_VALIDATE_BIN");
    validate_strictly(&validator, file, &path, core.len());
    custom
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .map(|e| str_at(e, &["value"]))
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn tls_deployment_mounts_the_certificate_cert_manager_issues() {
    let custom = validate_core_documents("deployment-tls.yaml");
    for doc in &custom {
        assert_eq!(str_at(doc, &["apiVersion"]), "cert-manager.io/v1");
        assert_eq!(str_at(doc, &["metadata", "namespace"]), "tollgate");
        if doc["kind"].as_str() == Some("Certificate") {
            // Every certificate is signed by an Issuer of this file.
            let issuer = str_at(doc, &["spec", "issuerRef", "name"]);
            assert_eq!(str_at(doc, &["spec", "issuerRef", "kind"]), "Issuer");
            named(&custom, "Issuer", issuer);
            assert!(!str_at(doc, &["spec", "secretName"]).is_empty());
        }
    }
    let ca = named(&custom, "Certificate", "tollgate-ca");
    assert_eq!(ca["spec"]["isCA"].as_bool(), Some(true));
    assert_eq!(
        str_at(
            named(&custom, "Issuer", "tollgate-ca"),
            &["spec", "ca", "secretName"]
        ),
        str_at(ca, &["spec", "secretName"])
    );
    let server = named(&custom, "Certificate", "tollgate-grpc");
    let dns: Vec<&str> = server["spec"]["dnsNames"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dns.contains(&"tollgate.tollgate.svc.cluster.local"),
        "{dns:?}"
    );
    let client = named(&custom, "Certificate", "envoy-ratelimit-client");
    let client_uri = str_at(&client["spec"]["uris"][0], &[]);

    let (_, pod) = pod_specs("deployment-tls.yaml").remove(0);
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| !v["secret"].is_null())
        .expect("a Secret volume");
    assert_eq!(
        str_at(volume, &["secret", "secretName"]),
        str_at(server, &["spec", "secretName"])
    );
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the Secret is mounted");
    assert!(mount["subPath"].is_null(), "a subPath mount never rotates");
    let dir = str_at(mount, &["mountPath"]);
    for (var, file) in [
        ("TOLLGATE_GRPC_TLS_CERT", "tls.crt"),
        ("TOLLGATE_GRPC_TLS_KEY", "tls.key"),
        ("TOLLGATE_GRPC_TLS_CLIENT_CA", "ca.crt"),
    ] {
        assert_eq!(env_value(container, var), format!("{dir}/{file}"));
    }
    assert_eq!(
        env_value(container, "TOLLGATE_GRPC_TLS_CLIENT_SAN"),
        client_uri
    );
}

#[test]
fn envoy_gateway_runs_this_image_with_a_redis_backend() {
    let custom = validate_core_documents("envoy-gateway/envoy-gateway.yaml");
    assert!(custom.is_empty(), "{custom:?}");
    let docs = documents(&k8s("envoy-gateway/envoy-gateway.yaml"));
    let config = named(&docs, "ConfigMap", "envoy-gateway-config");
    assert_eq!(
        str_at(config, &["metadata", "namespace"]),
        "envoy-gateway-system"
    );
    let eg: Value =
        serde_norway::from_str(str_at(config, &["data", "envoy-gateway.yaml"])).unwrap();
    assert_eq!(
        str_at(&eg, &["apiVersion"]),
        "gateway.envoyproxy.io/v1alpha1"
    );
    assert_eq!(str_at(&eg, &["kind"]), "EnvoyGateway");
    assert_eq!(str_at(&eg, &["provider", "type"]), "Kubernetes");
    let deployment = &eg["provider"]["kubernetes"]["rateLimitDeployment"];
    assert_eq!(
        str_at(deployment, &["container", "image"]),
        format!("tollgate:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(str_at(&eg, &["rateLimit", "backend", "type"]), "Redis");
    let url = str_at(&eg, &["rateLimit", "backend", "redis", "url"]);
    let redis = named(&docs, "Service", "redis");
    let namespace = str_at(redis, &["metadata", "namespace"]);
    let port = redis["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(url, format!("redis.{namespace}.svc.cluster.local:{port}"));
}
