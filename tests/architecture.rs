//! The layering of `src/` (docs/architecture.md): no two top-level modules import each other,
//! except the pairs listed in `KNOWN_CYCLES`, which are being removed and may not grow.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Cycles that exist today, as (lower, upper) module pairs. Remove an entry when its cycle is
/// gone (the test fails on a stale entry too, so the list stays true).
const KNOWN_CYCLES: &[(&str, &str)] = &[
    // runtime::service holds proxy::upstream's pooled client.
    ("proxy", "runtime"),
];

/// The top-level module a file under `src/` belongs to (`auth/jwt/signing.rs` → `auth`).
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// `crate::name` references in non-test code.
fn imports(text: &str) -> BTreeSet<String> {
    // Unit tests at the bottom of a file may reach anywhere.
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

fn collect(dir: &Path, root: &Path, edges: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(&path, root, edges);
            continue;
        }
        let relative = path.strip_prefix(root).expect("under src");
        let is_test_file = path.file_name().is_some_and(|n| n == "tests.rs")
            || relative.components().any(|c| c.as_os_str() == "tests");
        if path.extension().is_none_or(|e| e != "rs") || is_test_file {
            continue;
        }
        let Some(module) = module_of(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("read source");
        let targets = edges.entry(module.clone()).or_default();
        targets.extend(imports(&text).into_iter().filter(|t| *t != module));
    }
}

#[test]
fn top_level_modules_do_not_import_each_other_in_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges = BTreeMap::new();
    collect(&root, &root, &mut edges);
    assert!(edges.len() > 10, "the scan found the modules: {edges:?}");

    let mut cycles = BTreeSet::new();
    for (a, targets) in &edges {
        for b in targets {
            if a < b && edges.get(b).is_some_and(|t| t.contains(a)) {
                cycles.insert((a.clone(), b.clone()));
            }
        }
    }
    let known: BTreeSet<(String, String)> = KNOWN_CYCLES
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    let new: Vec<_> = cycles.difference(&known).collect();
    assert!(new.is_empty(), "new import cycles between layers: {new:?}");
    let gone: Vec<_> = known.difference(&cycles).collect();
    assert!(
        gone.is_empty(),
        "these cycles are gone: remove them from KNOWN_CYCLES: {gone:?}"
    );
}
