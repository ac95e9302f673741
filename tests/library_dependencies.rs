//! The library alone (`default-features = false`) compiles none of the server's, the command
//! line's or the load generator's dependencies, as `cargo tree` resolves them from `Cargo.lock`.

use std::collections::BTreeSet;
use std::process::Command;

/// Crates that only the server, the binary or the load generator may bring.
const NOT_IN_THE_LIBRARY: &[&str] = &[
    "anyhow",
    "axum",
    "clap",
    "envoy-types",
    "hdrhistogram",
    "hyper",
    "metrics-exporter-prometheus",
    "mimalloc",
    "notify",
    "prost",
    "rustix",
    "tonic",
    "tonic-health",
    "tracing-subscriber",
];

/// Every crate `cargo tree -e normal --prefix none` lists with `features`.
fn normal_dependencies(features: &[&str]) -> BTreeSet<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--manifest-path", manifest])
        .args(["-e", "normal", "--prefix", "none", "--format", "{p}"])
        .args(features)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_library_alone_has_no_server_dependency() {
    let library = normal_dependencies(&["--no-default-features"]);
    for present in ["tollgate", "fred", "metrics", "tokio"] {
        assert!(library.contains(present), "{present} in {library:?}");
    }
    let server: Vec<_> = NOT_IN_THE_LIBRARY
        .iter()
        .filter(|name| library.contains(**name))
        .collect();
    assert!(server.is_empty(), "the library depends on {server:?}");
}

#[test]
fn the_default_build_has_what_the_binary_needs() {
    let binary = normal_dependencies(&[]);
    for needed in [
        "axum",
        "clap",
        "hdrhistogram",
        "notify",
        "tonic",
        "tracing-subscriber",
    ] {
        assert!(binary.contains(needed), "{needed} in {binary:?}");
    }
}
