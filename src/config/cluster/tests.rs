//! `[cluster]` validation, by the messages an operator sees.

use std::path::Path;

use crate::config::{ClusterConfig, parse_and_validate};

const SERVICE: &str =
    "\n[[service]]\nname = \"m\"\nroute = \"/\"\nupstream = \"http://127.0.0.1:5001\"\n";

fn issues(dir: &Path, cluster: &str) -> Vec<String> {
    match parse_and_validate(&format!("{cluster}{SERVICE}"), &dir.join("s.toml")) {
        Ok(_) => panic!("unexpectedly valid:\n{cluster}"),
        Err(e) => e.issues(),
    }
}

fn seal_file(dir: &Path) {
    std::fs::write(
        dir.join("seal.key"),
        crate::seal::SealKey::generate().expect("key"),
    )
    .expect("write");
}

#[test]
fn local_is_the_default_and_takes_no_etcd_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = parse_and_validate(SERVICE, &dir.path().join("s.toml")).expect("valid");
    assert_eq!(c.cluster, ClusterConfig::Local);
    assert_eq!(
        issues(
            dir.path(),
            "[cluster]\nbackend = \"local\"\nnamespace = \"x\"\n"
        ),
        vec!["cluster.namespace: applies only to backend = \"etcd\""]
    );
    assert_eq!(
        issues(dir.path(), "[cluster]\nbackend = \"zookeeper\"\n"),
        vec!["cluster.backend: \"zookeeper\" is not \"local\" or \"etcd\""]
    );
}

#[test]
fn etcd_settings_are_validated_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let got = issues(
        dir.path(),
        "[cluster]\nbackend = \"etcd\"\nendpoints = [\"ftp://x\", \"http://a:2379/v3\"]\nnamespace = \"a/b\"\ninstance = \"\"\ncert = \"c.pem\"\nusername = \"u\"\ndial_timeout_ms = 1\n",
    );
    let want = [
        "cluster.endpoints[0]: \"ftp://x\" must be http://host:port or https://host:port",
        "cluster.endpoints[1]: \"http://a:2379/v3\" must not have a path",
        "cluster.namespace: \"a/b\" must be 1 to 64 letters, digits, '.', '_' or '-'",
        "cluster.instance: \"\" must be 1 to 253 letters, digits, '.', '_' or '-'",
        "cluster.seal_key_file: is required with backend = \"etcd\" (`scoregate cluster seal-key` prints a new key)",
        "cluster.key: is required when cluster.cert is set",
        "cluster.cert: applies only to https:// endpoints",
        "cluster.password_file: is required when cluster.username is set",
        "cluster.dial_timeout_ms: 1 is below the minimum of 50 ms",
    ];
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
    }
    assert_eq!(got.len(), want.len(), "{got:#?}");
}

#[test]
fn a_bad_seal_key_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("seal.key"), "c2hvcnQ=").expect("write");
    let got = issues(
        dir.path(),
        "[cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nnamespace = \"n\"\ninstance = \"a\"\nseal_key_file = \"seal.key\"\n",
    );
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("cluster.seal_key_file: ") && got[0].contains("32 random bytes"),
        "{got:#?}"
    );
}

#[test]
fn a_valid_etcd_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    seal_file(dir.path());
    let text = format!(
        "[cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"http://127.0.0.1:22379\"]\nnamespace = \"prod\"\ninstance = \"pod-a\"\nseal_key_file = \"seal.key\"\n{SERVICE}"
    );
    let c = parse_and_validate(&text, &dir.path().join("s.toml")).expect("valid");
    let e = c.cluster.etcd().expect("etcd");
    assert_eq!(e.prefix(), "/scoregate/prod/");
    assert_eq!(e.instance, "pod-a");
    assert_eq!(e.endpoints.len(), 2);
    assert_eq!(e.dial_timeout, std::time::Duration::from_secs(2));
    assert!(!e.tls());
    assert!(
        !format!("{e:?}")
            .contains(&std::fs::read_to_string(dir.path().join("seal.key")).expect("read")),
        "the seal key is never printed"
    );
}
