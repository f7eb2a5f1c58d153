//! The shape of the code, checked so it only gets better: which files import
//! which (every `crate::` path outside comments and test modules), and the
//! loops that makes. No file joins an import loop and no top-level modules
//! import each other in a loop: every layer imports downward, so a module
//! can be read, tested and changed knowing only what lies below it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// File loops tolerated, each as its sorted files: none.
const KNOWN_FILE_LOOPS: &[&[&str]] = &[];
/// Modules that must stay leaves: they import nothing else of the crate
/// (but the vocabulary below them), so any layer can use them.
const LEAVES: &[(&str, &[&str])] = &[
    ("src/failure.rs", &[]),
    ("src/clock.rs", &[]),
    ("src/shutdown.rs", &[]),
    ("src/board.rs", &["src/clock.rs"]),
    ("src/pacing/mod.rs", &["src/pacing/backoff.rs"]),
    ("src/pacing/backoff.rs", &[]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

/// The file a `crate::a::b::c` path names: the longest prefix that is one.
fn resolve(files: &BTreeSet<String>, path: &[&str]) -> Option<String> {
    (1..=path.len()).rev().find_map(|n| {
        let stem = path[..n].join("/");
        [format!("src/{stem}.rs"), format!("src/{stem}/mod.rs")]
            .into_iter()
            .find(|f| files.contains(f))
    })
}

/// `text` without its `#[cfg(test)] mod … { … }` blocks: what tests import
/// is not part of the shape.
fn without_tests(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "#[cfg(test)]".len()..];
        let head = after.trim_start();
        let is_mod = head.starts_with("mod ")
            || head.starts_with("pub mod ")
            || head.starts_with("pub(crate) mod ");
        match (is_mod, after.find('{'), after.find(';')) {
            (true, Some(open), semi) if semi.is_none_or(|s| s > open) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (j, c) in after[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// `crate::` paths in `text`, segment by segment, braces expanded one level.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in without_tests(text).lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let mut segs = Vec::new();
            let mut s = rest;
            loop {
                let n = s
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(s.len());
                if n == 0 {
                    break;
                }
                segs.push(s[..n].to_string());
                s = &s[n..];
                match s.strip_prefix("::") {
                    Some(t) => s = t,
                    None => break,
                }
            }
            if let Some(group) = s.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let mut p = segs.clone();
                    p.extend(item.trim().split("::").map(|x| x.trim().to_string()));
                    out.push(p);
                }
            } else if !segs.is_empty() {
                out.push(segs);
            }
        }
    }
    out
}

/// Strongly connected components of more than one node (Kosaraju).
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(n.to_string()) {
            return;
        }
        for m in g.get(n).into_iter().flatten() {
            visit(m, g, seen, order);
        }
        order.push(n.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for n in graph.keys() {
        visit(n, graph, &mut seen, &mut order);
    }
    let mut reverse: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in graph {
        for b in bs {
            reverse.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.iter().rev() {
        let mut comp = Vec::new();
        visit(n, &reverse, &mut assigned, &mut comp);
        if comp.len() > 1 {
            out.push(comp.into_iter().collect());
        }
    }
    out
}

fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    rust_files(&root.join("src"), &mut paths);
    let rel = |p: &Path| {
        p.strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/")
    };
    let files: BTreeSet<String> = paths.iter().map(|p| rel(p)).collect();
    let mut graph = BTreeMap::new();
    for p in &paths {
        let from = rel(p);
        let text = std::fs::read_to_string(p).unwrap();
        let to: BTreeSet<String> = crate_paths(&text)
            .iter()
            .filter_map(|segs| {
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                resolve(&files, &segs)
            })
            .filter(|t| *t != from)
            .collect();
        graph.insert(from, to);
    }
    graph
}

fn top_module(file: &str) -> String {
    let rest = file.trim_start_matches("src/");
    rest.split('/')
        .next()
        .unwrap_or(rest)
        .trim_end_matches(".rs")
        .to_string()
}

#[test]
fn no_file_joins_an_import_loop() {
    let graph = file_graph();
    assert!(graph.len() > 50, "the sources were read");
    let found: Vec<Vec<String>> = loops(&graph)
        .into_iter()
        .map(|c| c.into_iter().collect())
        .collect();
    for c in &found {
        assert!(
            KNOWN_FILE_LOOPS
                .iter()
                .any(|k| k.iter().map(|s| s.to_string()).collect::<Vec<_>>() == *c),
            "a new import loop between files: {c:?}"
        );
    }
}

#[test]
fn no_top_level_modules_import_each_other_in_a_loop() {
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in file_graph() {
        let m = top_module(&from);
        if m == "lib" || m == "main" {
            continue;
        }
        let entry = modules.entry(m.clone()).or_default();
        for t in tos {
            let tm = top_module(&t);
            if tm != m && tm != "lib" {
                entry.insert(tm);
            }
        }
    }
    let found = loops(&modules);
    assert!(
        found.is_empty(),
        "top-level modules import each other in a loop: {found:?}"
    );
}

#[test]
fn the_vocabulary_modules_stay_leaves() {
    let graph = file_graph();
    for (leaf, allowed) in LEAVES {
        let imports = graph.get(*leaf).expect("the leaf exists");
        let extra: Vec<&String> = imports
            .iter()
            .filter(|i| !allowed.contains(&i.as_str()))
            .collect();
        assert!(extra.is_empty(), "{leaf} imports {extra:?}");
    }
}
