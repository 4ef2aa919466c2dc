//! The product's source (controller, agent, proto) stays easy to find one's
//! way in: within each crate the top-level modules (folders and files of
//! `src/`) import each other without a cycle, so each can be read knowing
//! only those below it; and no source file passes 600 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file that ships: no comment lines, nothing from its
/// `#[cfg(test)]` module on (tests may reach anywhere).
fn shipped_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Which top-level modules each top-level module of `src` uses.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" || top == "bin" {
            continue;
        }
        let code = shipped_code(&std::fs::read_to_string(&file).unwrap());
        let used = graph.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let name = ident_at(item.trim());
                    if !name.is_empty() && name != "self" {
                        used.insert(name);
                    }
                }
            } else {
                used.insert(ident_at(rest));
            }
        }
        used.remove(&top);
    }
    graph
}

/// A cycle in `graph`, as the path around it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut around = path[at..].to_vec();
            around.push(node.to_string());
            return Some(around);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut vec![], &mut done))
}

#[test]
fn no_crate_has_an_import_cycle_between_its_top_level_modules() {
    for krate in ["controller", "agent", "proto"] {
        let graph = imports(&root().join(krate).join("src"));
        assert!(graph.len() > 1 || krate == "proto", "{krate}: {graph:?}");
        if let Some(c) = cycle(&graph) {
            panic!(
                "{krate}/src: its modules import each other in a circle: {}\n\
                 move what both need into a module below them (names.rs, settings.rs, ...)",
                c.join(" -> ")
            );
        }
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("x")).unwrap();
    std::fs::write(
        dir.path().join("x/mod.rs"),
        "use crate::{y::Y, self};\n// crate::z in a comment\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("y.rs"),
        "fn f() { crate::x::g() }\n#[cfg(test)]\nmod t { use crate::z; }\n",
    )
    .unwrap();
    let g = imports(dir.path());
    assert_eq!(g["x"], BTreeSet::from(["y".to_string()]));
    assert_eq!(g["y"], BTreeSet::from(["x".to_string()]));
    assert!(cycle(&g).is_some());
}

#[test]
fn no_source_file_passes_600_lines() {
    let mut too_long = vec![];
    for krate in ["controller", "agent", "proto"] {
        for file in rust_files(&root().join(krate).join("src")) {
            let rel = file
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .to_string();
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            if lines > MAX_LINES {
                too_long.push(format!("{rel}: {lines} lines"));
            }
        }
    }
    assert!(
        too_long.is_empty(),
        "split these by what they do:\n{}",
        too_long.join("\n")
    );
}
