//! The layering of `src/` (docs/architecture.md): the imports between top-level modules form no
//! cycle, of any length, so the modules can be ordered in layers, each importing only below it.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads as one scenario, top to bottom; the 80-line bound is for src/"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

/// A cycle through `node`'s imports, if there is one (depth-first search; `path` is the chain
/// being explored, `done` the modules already shown to reach no cycle).
fn cycle_from(
    node: &str,
    edges: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut cycle = path[at..].to_vec();
        cycle.push(node.to_owned());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in edges.get(node).into_iter().flatten() {
        if let Some(cycle) = cycle_from(next, edges, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn top_level_modules_import_each_other_in_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges = BTreeMap::new();
    collect(&root, &root, &mut edges);
    assert!(edges.len() > 10, "the scan found the modules: {edges:?}");
    // The scan sees what it should: a known edge in each direction of the layering.
    assert!(edges["proxy"].contains("upstream") && edges["runtime"].contains("telemetry"));

    let mut done = BTreeSet::new();
    for module in edges.keys() {
        let cycle = cycle_from(module, &edges, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "an import cycle between layers: {}",
            cycle.unwrap_or_default().join(" -> ")
        );
    }
}
