//! The Prometheus configs: the `cookie-crud-cluster` job scrapes exactly the nodes (those
//! of `make cluster-start` for `deploy/prometheus.yml`), and the PromQL of any rules.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::files::{deploy_dir, files_under, load_yaml_one, read, root, Check, Problems, JOB};

/// The `cookie-crud-cluster` job scrapes exactly `expected` (target -> node name, checked
/// against a `node` target label when there is one) on `/metrics`.
pub(crate) fn check_prometheus(
    cfg: &Value,
    expected: &BTreeMap<String, String>,
    what: &str,
) -> Check {
    let mut p = Problems::default();
    let jobs: Vec<&Value> = cfg["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["job_name"] == JOB)
        .collect();
    let [job] = jobs.as_slice() else {
        return Err(format!(
            "{what}: expected one scrape job named {JOB}, found {}",
            jobs.len()
        ));
    };
    p.check(
        job["metrics_path"].is_null() || job["metrics_path"] == "/metrics",
        || format!("metrics_path is {}, not /metrics", job["metrics_path"]),
    );
    p.check(job["scheme"].is_null() || job["scheme"] == "http", || {
        format!("scheme is {}, the nodes serve plain http", job["scheme"])
    });
    let mut seen = BTreeSet::new();
    for sc in job["static_configs"].as_array().into_iter().flatten() {
        let node = sc["labels"]["node"].as_str();
        for t in sc["targets"].as_array().into_iter().flatten() {
            let t = t.as_str().unwrap_or("").to_string();
            if let (Some(node), Some(want)) = (node, expected.get(&t)) {
                p.check(node == want, || {
                    format!("target {t} is labelled node={node}, but it is {want}")
                });
            }
            p.check(seen.insert(t.clone()), || {
                format!("target {t} is listed twice")
            });
        }
    }
    let seen: BTreeSet<&String> = seen.iter().collect();
    let want: BTreeSet<&String> = expected.keys().collect();
    p.check(seen == want, || {
        format!("targets {seen:?} differ from the nodes {want:?}")
    });
    p.finish(what)
}

/// The targets of `make cluster-start`: each `config/node*.toml`'s listen address.
pub(crate) fn local_cluster_targets() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for path in files_under(&root().join("config")) {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        if !(file.starts_with("node") && file.ends_with(".toml")) {
            continue;
        }
        let t: toml::Table = toml::from_str(&read(&path)).unwrap();
        let listen = t["listen"]
            .as_str()
            .unwrap()
            .replace("0.0.0.0", "127.0.0.1");
        let id = t.get("node_id").and_then(|v| v.as_integer()).unwrap_or(1);
        let name = t
            .get("node_name")
            .and_then(|v| v.as_str())
            .map_or_else(|| format!("node{id}"), String::from);
        out.insert(listen, name);
    }
    assert!(out.len() >= 3, "config/node*.toml: found {out:?}");
    out
}

/// Every PromQL expression in a YAML document (recording and alerting rules): `expr` keys.
pub(crate) fn yaml_exprs(v: &Value, whence: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push((whence.to_string(), e.clone())),
                    _ => yaml_exprs(x, whence, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| yaml_exprs(x, whence, out)),
        _ => {}
    }
}

#[test]
fn local_prometheus_scrapes_the_cluster_start_nodes() {
    let cfg = load_yaml_one(&deploy_dir().join("prometheus.yml"));
    check_prometheus(&cfg, &local_cluster_targets(), "deploy/prometheus.yml")
        .unwrap_or_else(|e| panic!("{e}"));
}
