//! What every check shares: the repository's paths, the `Problems` collector behind each
//! `Check`, loading the YAML and JSON files, and small helpers on JSON values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

pub(crate) type Check = Result<(), String>;

/// Environment variables of a container.
pub(crate) type Env = BTreeMap<String, String>;

/// The job name the dashboard filters on and every Prometheus config must scrape as.
pub(crate) const JOB: &str = "cookie-crud-cluster";

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// Collects every problem a check finds, so one run reports all of them.
#[derive(Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn add(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    pub(crate) fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    pub(crate) fn merge(&mut self, r: Check) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    pub(crate) fn finish(self, what: &str) -> Check {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}:\n  - {}", self.0.join("\n  - ")))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loading files

pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn files_if_dir(dir: &Path) -> Vec<PathBuf> {
    if dir.is_dir() {
        files_under(dir)
    } else {
        Vec::new()
    }
}

pub(crate) fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
}

pub(crate) fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Every document of a (possibly multi-document) YAML text, as JSON values. Empty
/// documents (a trailing `---`) are skipped; merge keys (`<<: *anchor`) are applied.
pub(crate) fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut v = serde_yaml_ng::Value::deserialize(doc)
            .map_err(|e| format!("YAML document {}: {e}", i + 1))?;
        v.apply_merge()
            .map_err(|e| format!("YAML document {}: {e}", i + 1))?;
        if v.is_null() {
            continue;
        }
        docs.push(
            serde_json::to_value(&v)
                .map_err(|e| format!("YAML document {}: not plain data: {e}", i + 1))?,
        );
    }
    Ok(docs)
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

pub(crate) fn load_yaml(path: &Path) -> Vec<Value> {
    parse_yaml(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

pub(crate) fn load_yaml_one(path: &Path) -> Value {
    let mut docs = load_yaml(path);
    assert_eq!(docs.len(), 1, "{}: expected one YAML document", rel(path));
    docs.remove(0)
}

pub(crate) fn load_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

/// Every object of every file under `deploy/k8s/`.
pub(crate) fn k8s_objects() -> Vec<Value> {
    files_under(&deploy_dir().join("k8s"))
        .iter()
        .filter(|p| is_yaml(p))
        .flat_map(|p| load_yaml(p))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Small helpers on JSON values

pub(crate) fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

pub(crate) fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// A string-to-string map (labels, selectors, ConfigMap data); other scalars are shown in
/// their JSON form.
pub(crate) fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), String::from),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A selector selects the pods when it is not empty and every pair is among their labels.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port of `host:port`.
pub(crate) fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// The host of `host:port`.
pub(crate) fn host_of(addr: &str) -> Option<&str> {
    Some(addr.rsplit_once(':')?.0)
}

/// How far the node puts its peer port from its client port when none is given: the
/// default `peer_listen` is `listen`'s IP at port + 1000, and a member's default
/// `peer_addr` is its `addr`'s host at port + 1000 (`src/config.rs`).
pub(crate) const PEER_PORT_OFFSET: u16 = 1000;

/// `host:port` moved to the node's default peer port (port 0 stays 0, as in the node).
pub(crate) fn default_peer_addr(addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    let peer = match port.parse::<u16>().ok()? {
        0 => 0,
        p => p.checked_add(PEER_PORT_OFFSET)?,
    };
    Some(format!("{host}:{peer}"))
}

/// The address a node binds for peer traffic, given its environment:
/// `COOKIE_CRUD_PEER_LISTEN`, else the default derived from `COOKIE_CRUD_LISTEN`.
pub(crate) fn peer_listen(env: &Env) -> Option<String> {
    match env.get("COOKIE_CRUD_PEER_LISTEN") {
        Some(addr) => Some(addr.clone()),
        None => default_peer_addr(env.get("COOKIE_CRUD_LISTEN")?),
    }
}

/// Whether a container's listener binds every interface, so that other containers (and,
/// for the client port, the port mapping or Service) reach it.
pub(crate) fn binds_all_interfaces(addr: &str) -> bool {
    matches!(host_of(addr), Some("0.0.0.0" | "[::]"))
}

pub(crate) fn objects_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[test]
fn every_yaml_and_json_file_is_well_formed() {
    let files = files_under(&deploy_dir());
    let mut checked = 0;
    for f in &files {
        let text = read(f);
        if is_yaml(f) {
            let docs = parse_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", rel(f)));
            assert!(!docs.is_empty(), "{}: no YAML document", rel(f));
            checked += 1;
        } else if f.extension().is_some_and(|e| e == "json") {
            let v: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", rel(f)));
            assert!(v.is_object(), "{}: not a JSON object", rel(f));
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} YAML/JSON files under deploy/: {files:?}"
    );
}
