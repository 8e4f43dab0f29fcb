//! The shape of gateway-lite's source: no module imports one that imports it back, and no
//! source file outgrows one job.
//!
//! The import graph is read from the source text: `crate::…`, `super::…` and `self::…`
//! paths, and a module's own children named bare (`lifecycle::start`). A path is resolved to
//! the longest prefix that is a module of the crate; an item path ends at the module that
//! defines it. Test modules (`#[cfg(test)] mod tests` at the end of a file) and comments are
//! left out. The edges are printed (`--nocapture`), so a reviewer can read the layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines a source file may have.
const MAX_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its module path (`kernels::lifecycle`; `crate` for
/// lib.rs). main.rs is the binary, not a module of the library.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let mut p = prefix.to_vec();
        match name.as_str() {
            "main" if prefix.is_empty() => continue,
            "lib" if prefix.is_empty() => {}
            "mod" => {}
            _ => p.push(name),
        }
        let module = if p.is_empty() {
            "crate".to_owned()
        } else {
            p.join("::")
        };
        out.insert(module, path);
    }
}

/// The code of a file without comments and without its trailing test module.
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn parent(module: &str) -> String {
    match module.rsplit_once("::") {
        Some((p, _)) => p.to_owned(),
        None => "crate".to_owned(),
    }
}

fn join(base: &str, name: &str) -> String {
    if base == "crate" {
        name.to_owned()
    } else {
        format!("{base}::{name}")
    }
}

/// The module a path names: the longest module prefix of `base::segments`.
fn resolve(known: &BTreeMap<String, PathBuf>, base: &str, segments: &[&str]) -> String {
    let mut at = base.to_owned();
    for s in segments {
        let next = join(&at, s);
        if known.contains_key(&next) {
            at = next;
        } else {
            break;
        }
    }
    at
}

/// Splits `rest` (what follows `crate::` or `super::`) into the paths it names: one for a
/// plain path, one per entry of a `{...}` group (first segments only inside the group).
fn paths(rest: &str) -> Vec<Vec<&str>> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut segments = Vec::new();
    let mut s = rest;
    loop {
        if let Some(group) = s.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            return group[..end]
                .split(',')
                .map(|e| {
                    let e = e.trim();
                    let mut p = segments.clone();
                    p.extend(e.split("::").map(str::trim).filter(|x| !x.is_empty()));
                    p
                })
                .collect();
        }
        let n = ident(s);
        if n == 0 {
            break;
        }
        segments.push(&s[..n]);
        match s[n..].strip_prefix("::") {
            Some(r) => s = r,
            None => break,
        }
    }
    vec![segments]
}

fn edges(known: &BTreeMap<String, PathBuf>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (module, path) in known {
        let text = code(&std::fs::read_to_string(path).unwrap());
        let children: Vec<&str> = known
            .keys()
            .filter(|m| m.as_str() != "crate" && parent(m) == *module)
            .map(|m| m.rsplit("::").next().unwrap())
            .collect();
        let bytes = text.as_bytes();
        for (i, _) in text.match_indices("::") {
            // The identifier before this `::`.
            let start = text[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let head = &text[start..i];
            if start > 0 && bytes[start - 1] == b':' {
                continue; // inside a longer path
            }
            let rest = &text[i + 2..];
            let (base, paths) = match head {
                "crate" => ("crate".to_owned(), paths(rest)),
                "super" => (parent(module), paths(rest)),
                "self" => (module.clone(), paths(rest)),
                child if children.contains(&child) => (join(module, child), vec![Vec::new()]),
                _ => continue,
            };
            for p in paths {
                let target = resolve(known, &base, &p);
                if &target != module {
                    out.insert((module.clone(), target));
                }
            }
        }
    }
    out
}

/// Modules that reach themselves again through imports (strongly connected components of
/// more than one module).
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (a, b) in edges {
                if *a == n && seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for n in &nodes {
        let mut group: Vec<String> = nodes
            .iter()
            .filter(|m| reached[*n].contains(**m) && reached[**m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        if group.len() > 1 {
            group.sort();
            found.insert(group);
        }
    }
    found.into_iter().collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut known = BTreeMap::new();
    modules(&src(), &[], &mut known);
    assert!(known.contains_key("kernels::lifecycle"), "{known:?}");
    let edges = edges(&known);
    for (a, b) in &edges {
        println!("{a} -> {b}");
    }
    // The reader must see the layering it claims: the registry's owners use the kernels'
    // pieces, and the configuration imports nothing of the gateway.
    assert!(edges.contains(&("kernels::lifecycle".into(), "kernels::registry".into())));
    let outside: Vec<_> = edges
        .iter()
        .filter(|(a, b)| a.starts_with("config") && !b.starts_with("config"))
        .collect();
    assert!(
        outside.is_empty(),
        "config imports from the gateway: {outside:?}"
    );
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles: {found:?}");
}

#[test]
fn the_checker_sees_a_cycle() {
    let e: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(cycles(&e), vec![vec!["a", "b", "c"]]);
    let mut known = BTreeMap::new();
    for m in ["crate", "x", "x::y", "z"] {
        known.insert(m.to_owned(), PathBuf::new());
    }
    assert_eq!(resolve(&known, "crate", &["x", "y", "Item"]), "x::y");
    assert_eq!(resolve(&known, "x", &["Item"]), "x");
    assert_eq!(paths("{a::B, c}"), vec![vec!["a", "B"], vec!["c"]]);
    assert_eq!(paths("x::{a, b}"), vec![vec!["x", "a"], vec!["x", "b"]]);
}

#[test]
fn no_source_file_outgrows_one_job() {
    let mut known = BTreeMap::new();
    modules(&src(), &[], &mut known);
    let big: Vec<String> = known
        .values()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(big.is_empty(), "split these: {big:?}");
}
