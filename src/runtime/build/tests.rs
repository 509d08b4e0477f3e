//! The builder on real configurations: routing order, what a first start generates, and that
//! building writes nothing.

use std::path::Path;

use super::*;
use crate::source::Fingerprint;

/// Parses `services` (TOML `[[service]]` tables) with a state directory in `dir`.
fn config(dir: &Path, services: &str) -> Arc<Config> {
    let text = format!(
        "[server]\nstate_dir = \"{}\"\n{services}",
        dir.join("state").display()
    );
    Arc::new(crate::config::parse_and_validate(&text, &dir.join("scoregate.toml")).expect("config"))
}

fn service(name: &str, route: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nroute = \"{route}\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n"
    )
}

fn inputs(config: &Arc<Config>) -> Inputs {
    let state_dir = &config.server.state_dir;
    let mut keys = BTreeMap::new();
    let mut signing = BTreeMap::new();
    for s in &config.services {
        if let Some(source) = &s.keys {
            let file = KeyFile::new(source.clone());
            let state = file.read(None).expect("read keys");
            keys.insert(s.name.clone(), (file, Arc::new(state)));
        }
        if let Some(t) = &s.token {
            let file = SigningFile::new(t.signing.clone(), t.algorithm, TokenAuthority::overlap(t));
            let state = file.read(false).expect("read signing keys");
            signing.insert(s.name.clone(), (file, Arc::new(state)));
        }
    }
    let admin = CredentialFile::new(state_dir);
    let current = admin.read().expect("admin credential");
    Inputs {
        config: Arc::clone(config),
        cert: None,
        keys,
        signing,
        jwks: BTreeMap::new(),
        assignments: Arc::default(),
        admin: (admin, current),
    }
}

fn built(config: &Arc<Config>) -> Candidate {
    let metrics = Metrics::new();
    let resolver = Arc::new(StateCert::default());
    let (fetched, _rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Context {
        metrics: &metrics,
        resolver: &resolver,
        fetched: &fetched,
        previous: None,
        dialer: None,
    };
    build(&ctx, &inputs(config)).expect("build")
}

#[test]
fn longest_route_wins_on_segment_boundaries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &[
            service("root", "/", ""),
            service("iris", "/api/v1/service/iris", ""),
            service("iris2", "/api/v1/service/iris2", ""),
        ]
        .concat(),
    );
    let state = built(&config).state;
    let name = |p: &str| {
        state
            .route(p)
            .map(|(s, rest)| (s.config.name.clone(), rest.to_owned()))
    };
    assert_eq!(
        name("/api/v1/service/iris/score"),
        Some(("iris".into(), "/score".into()))
    );
    assert_eq!(
        name("/api/v1/service/iris"),
        Some(("iris".into(), "/".into()))
    );
    assert_eq!(
        name("/api/v1/service/iris2/score"),
        Some(("iris2".into(), "/score".into()))
    );
    // "iris" must not match "/api/v1/service/irisx": not a segment boundary.
    assert_eq!(
        name("/api/v1/service/irisx/score"),
        Some(("root".into(), "/api/v1/service/irisx/score".into()))
    );
    assert_eq!(name("/"), Some(("root".into(), "/".into())));
}

#[test]
fn no_root_route_means_no_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &service("iris", "/iris", ""));
    let state = built(&config).state;
    assert!(state.route("/other").is_none());
    assert!(state.route("/iri").is_none());
}

#[test]
fn a_first_start_generates_keys_and_credentials_but_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &[
            service("k", "/k", "auth = \"key\""),
            service("t", "/t", "auth = \"token\""),
        ]
        .concat(),
    );
    let candidate = built(&config);
    assert!(
        !dir.path().join("state").exists(),
        "the builder wrote nothing"
    );
    let mut paths: Vec<_> = candidate.writes.iter().map(|w| w.path.clone()).collect();
    paths.sort();
    let state = dir.path().join("state");
    assert_eq!(
        paths,
        [
            state.join("admin.token"),
            state.join("keys/k.json"),
            state.join("signing/t.json"),
        ]
    );
    // The state already holds what the writes will persist.
    let keys = candidate
        .state
        .by_name("k")
        .and_then(|s| s.keys().cloned())
        .expect("keys");
    let listed = keys.list().expect("plain keys");
    let write = candidate
        .writes
        .iter()
        .find(|w| w.path.ends_with("keys/k.json"))
        .expect("key write");
    let text = String::from_utf8(write.bytes.to_vec()).expect("utf8");
    assert!(text.contains(listed.primary.expose()));
    assert_eq!(Fingerprint::of(&write.path), None);
}
