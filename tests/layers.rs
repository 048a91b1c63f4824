//! The layering rule, checked by a tool rather than by eye: every module's imports, read
//! from the source with `syn`, form a graph that must have no cycle, and each layer of
//! `cookie-crud` may import only from the layers below it (the diagram in `src/lib.rs` and
//! `docs/architecture.md`). The `cookie-raft` crate gets the cycle check too.
//!
//! An edge is any path that names a module of the crate: `use crate::a::b::Item`,
//! `super::x`, `self::y`, a child module's name, in a `use` or anywhere in the code. The
//! edge goes from the file's module to the deepest module the path names. A module
//! declaring a child (`mod x;`) is not an edge; using an item from it is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A crate's modules (as `a::b` paths, the root as "") and the edges between them.
#[derive(Debug, Default)]
struct Graph {
    modules: BTreeSet<String>,
    /// module -> modules it imports from, with one example path each.
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Collects the module paths one file names, resolved to absolute `a::b::c` form.
struct Names<'a> {
    /// The module the code being visited is in (the file's, plus inline `mod`s).
    here: Vec<String>,
    children: &'a BTreeSet<String>,
    found: Vec<Vec<String>>,
}

impl Names<'_> {
    fn resolve(&self, segs: &[String]) -> Option<Vec<String>> {
        let first = segs.first()?;
        let mut base = self.here.clone();
        let mut rest = segs;
        match first.as_str() {
            "crate" => {
                base.clear();
                rest = &segs[1..];
            }
            "self" => rest = &segs[1..],
            "super" => {
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            name => {
                let mut child = self.here.clone();
                child.push(name.to_string());
                if !self.children.contains(&child.join("::")) {
                    return None; // an external crate, a local item or a prelude name
                }
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.record(prefix, Some(n.ident.to_string())),
            syn::UseTree::Rename(r) => self.record(prefix, Some(r.ident.to_string())),
            syn::UseTree::Glob(_) => self.record(prefix, None),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn record(&mut self, prefix: &[String], last: Option<String>) {
        let mut segs = prefix.to_vec();
        segs.extend(last.filter(|l| l != "self"));
        if let Some(abs) = self.resolve(&segs) {
            self.found.push(abs);
        }
    }
}

impl<'ast> Visit<'ast> for Names<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if m.content.is_some() {
            self.here.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.here.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if segs.len() > 1 {
            if let Some(abs) = self.resolve(&segs) {
                self.found.push(abs);
            }
        }
        syn::visit::visit_path(self, p);
    }
}

/// The graph of the crate whose root file is `root/lib.rs`.
fn crate_graph(root: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.retain(|f| !f.ends_with("main.rs")); // the binary is a crate of its own
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(root, f)).collect();
    let mut g = Graph {
        modules: modules.clone(),
        ..Graph::default()
    };
    for file in &files {
        let here = module_of(root, file);
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut names = Names {
            here: here
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            children: &modules,
            found: Vec::new(),
        };
        names.visit_file(&ast);
        for path in names.found {
            // The deepest module the path names.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains(m))
                .unwrap_or_default();
            // Items used from an ancestor count too: that is how `super::Shared` makes a
            // cycle with a parent that uses its child. The crate root only declares modules.
            if !target.is_empty() && target != here {
                g.edges
                    .entry(here.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| path.join("::"));
            }
        }
    }
    g
}

/// A cycle in the graph, as the list of modules around it; `None` when acyclic.
fn find_cycle(edges: &BTreeMap<String, BTreeMap<String, String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn dfs(
        n: &str,
        edges: &BTreeMap<String, BTreeMap<String, String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for next in edges.get(n).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next.as_str()) {
                Some(Mark::Open) => {
                    let start = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = dfs(next, edges, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in edges.keys() {
        if !marks.contains_key(n.as_str()) {
            if let Some(c) = dfs(n, edges, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The layers of `cookie-crud`, lowest first; a module is in the layer of its first path
/// segment. A layer may import from lower layers and from itself only.
const LAYERS: &[&[&str]] = &[
    &["certs", "clock", "config", "metrics", "process", "tasks"],
    &["cluster", "tls"],
    &["ctl", "read", "write"],
    &["http"],
    &["node"],
];

fn layer_of(module: &str) -> Option<(usize, &str)> {
    let top = module.split("::").next()?;
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .map(|rank| (rank, top))
}

/// Every import that goes up a layer, or sideways into another layer of the same rank.
fn layer_violations(g: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for (from, targets) in &g.edges {
        for (to, example) in targets {
            let (Some((rf, tf)), Some((rt, tt))) = (layer_of(from), layer_of(to)) else {
                continue; // the crate root
            };
            if tf != tt && rt >= rf {
                out.push(format!("{from} imports {example} ({tf} may not use {tt})"));
            }
        }
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn no_module_of_cookie_crud_is_in_an_import_cycle() {
    let g = crate_graph(&root().join("src"));
    assert!(g.modules.len() > 20, "found only {:?}", g.modules);
    assert_eq!(find_cycle(&g.edges), None, "edges: {:#?}", g.edges);
}

#[test]
fn no_module_of_cookie_raft_is_in_an_import_cycle() {
    let g = crate_graph(&root().join("raft/src"));
    assert!(g.modules.len() > 8, "found only {:?}", g.modules);
    assert_eq!(find_cycle(&g.edges), None, "edges: {:#?}", g.edges);
}

#[test]
fn each_layer_imports_only_from_the_layers_below() {
    let g = crate_graph(&root().join("src"));
    for m in &g.modules {
        assert!(
            m.is_empty() || layer_of(m).is_some(),
            "module {m} is in no layer: add it to LAYERS and the docs"
        );
    }
    assert_eq!(layer_violations(&g), Vec::<String>::new());
    // The leaves import nothing from this crate.
    for leaf in LAYERS[0] {
        let deps: Vec<_> = g
            .edges
            .iter()
            .filter(|(from, _)| from.split("::").next() == Some(leaf))
            .flat_map(|(_, to)| to.keys())
            .filter(|to| to.split("::").next() != Some(leaf))
            .collect();
        assert!(deps.is_empty(), "{leaf} imports {deps:?}");
    }
}

/// The checks can fail: a cycle through `super`, and an import that goes up a layer, in
/// a made-up crate on disk.
#[test]
fn the_checks_catch_a_cycle_and_an_upward_import() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod http; pub mod cluster; pub mod clock;");
    write(
        "http/mod.rs",
        "pub mod cookies; pub struct Shared; use cookies::get;",
    );
    write("http/cookies.rs", "use super::Shared; pub fn get() {}");
    write(
        "cluster/mod.rs",
        "pub fn f() { crate::http::cookies::get() }",
    );
    write("clock.rs", "pub fn now() -> u64 { 0 }");
    let g = crate_graph(dir.path());
    let cycle = find_cycle(&g.edges).expect("the http <-> http::cookies cycle");
    assert!(cycle.contains(&"http".to_string()), "{cycle:?}");
    let v = layer_violations(&g);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(
        v[0].starts_with("cluster imports http::cookies::get"),
        "{v:?}"
    );
}
