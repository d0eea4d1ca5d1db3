//! The layout of `src/` is the one `docs/architecture.md` describes: every
//! top-level module sits in a layer and imports only from layers below it,
//! and inside a module no file imports one that imports it back. Test code
//! (`tests.rs` files and `#[cfg(test)] mod tests` blocks) is left out: tests
//! may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may import from any lower layer, never
/// from its own or a higher one.
const LAYERS: &[&[&str]] = &[
    &[
        "bounded",
        "clock",
        "exit",
        "failpoint",
        "http",
        "metrics",
        "notify",
        "random",
        "secret",
        "text",
    ],
    &["audit", "values"],
    &["mixpanel"],
    &["sink"],
    &["policy"],
    &["hooks", "simulator"],
    &["rotation"],
    &["render", "server"],
    &["daemon", "demo"],
    &["cli"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's text without its test module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len());
    lines[..cut].join("\n")
}

/// Identifiers that follow `prefix` in `text` (e.g. `crate::` -> `rotation`).
fn after<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = vec![];
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            out.push(&rest[..end]);
        }
    }
    out
}

struct File {
    /// Top-level module (`rotation`), or `main`/`lib`.
    top: String,
    /// The file inside it (`engine`, `mod`), `None` for a top-level file.
    unit: Option<String>,
    code: String,
}

fn files() -> Vec<File> {
    let mut paths = vec![];
    rust_files(&src(), &mut paths);
    let mut out = vec![];
    for p in paths {
        let rel: Vec<String> = p
            .strip_prefix(src())
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if rel.last().is_some_and(|n| n == "tests") || rel.len() > 2 {
            continue; // test modules, and nested test directories
        }
        out.push(File {
            top: rel[0].clone(),
            unit: rel.get(1).cloned(),
            code: code(&p),
        });
    }
    out
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn top_level_modules_only_import_from_lower_layers() {
    let mut violations = BTreeSet::new();
    let mut modules = BTreeSet::new();
    for f in files() {
        if f.top == "main" || f.top == "lib" {
            continue;
        }
        modules.insert(f.top.clone());
        let Some(from) = layer_of(&f.top) else {
            violations.insert(format!(
                "`{}` is in no layer: add it to LAYERS and docs/architecture.md",
                f.top
            ));
            continue;
        };
        for to in after(&f.code, "crate::") {
            if to == f.top {
                continue;
            }
            match layer_of(to) {
                Some(l) if l < from => {}
                _ => {
                    violations.insert(format!("{} imports {to}, which is not in a lower layer", f.top));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap();
    for m in &modules {
        assert!(
            doc.contains(&format!("`{m}`")),
            "docs/architecture.md does not mention `{m}`"
        );
    }
    let listed: BTreeSet<String> = LAYERS.iter().flat_map(|l| l.iter().map(|s| s.to_string())).collect();
    assert_eq!(listed, modules, "LAYERS lists exactly the modules of src/");
}

/// A cycle in `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut vec![], &mut done))
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let files = files();
    let mut by_top: BTreeMap<&str, Vec<&File>> = BTreeMap::new();
    for f in &files {
        if f.unit.is_some() {
            by_top.entry(&f.top).or_default().push(f);
        }
    }
    let mut cycles = vec![];
    for (top, fs) in by_top {
        let units: BTreeSet<&str> = fs.iter().filter_map(|f| f.unit.as_deref()).collect();
        let resolve = |name: &str| {
            if units.contains(name) {
                name.to_string()
            } else {
                "mod".to_string()
            }
        };
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &fs {
            let unit = f.unit.clone().unwrap_or_default();
            let mut to: Vec<String> = vec![];
            if unit == "mod" {
                for child in &units {
                    if after(&f.code, &format!("{child}::")).len() + after(&f.code, &format!("self::{child}::")).len()
                        > 0
                    {
                        to.push(child.to_string());
                    }
                }
            } else {
                to.extend(after(&f.code, "super::").into_iter().map(resolve));
            }
            to.extend(after(&f.code, &format!("crate::{top}::")).into_iter().map(resolve));
            let e = edges.entry(unit.clone()).or_default();
            e.extend(to.into_iter().filter(|t| *t != unit));
        }
        if let Some(c) = cycle(&edges) {
            cycles.push(format!("{top}: {}", c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

/// The README's install lines for each systemd unit are its header's
/// `Install:` lines (which CI runs verbatim in a booted systemd), comments
/// aside: the two cannot drift apart.
#[test]
fn the_readmes_systemd_install_lines_are_the_units_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let strip = |l: &str| l.split("   #").next().unwrap_or(l).trim_end().to_string();
    let readme_lines: Vec<String> = readme.lines().map(strip).collect();
    for unit in ["mixpanel-rotator.service", "mixpanel-rotator-reconcile.service"] {
        let text = std::fs::read_to_string(root.join("systemd").join(unit)).unwrap();
        let lines: Vec<String> = text
            .lines()
            .skip_while(|l| *l != "# Install:")
            .skip(1)
            .map_while(|l| l.strip_prefix("#   "))
            .map(strip)
            .collect();
        assert!(lines.len() > 5, "{unit}: no Install: lines");
        // The README shows the daemon's lines whole, the timer's as the
        // daemon's with the last three replaced: every line is in it, in order.
        let mut at = 0;
        for l in &lines {
            match readme_lines[at..].iter().position(|r| r == l) {
                Some(p) => at += p + 1,
                None => panic!("{unit}: `{l}` is not in README.md (after line {at})"),
            }
        }
    }
}
