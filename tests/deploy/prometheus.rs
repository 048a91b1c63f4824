//! The Prometheus configs: the `cookie-crud-cluster` job scrapes exactly the nodes (those
//! of `make cluster-start` for `deploy/prometheus.yml`), both load the alerting rules of
//! `deploy/alerts.yml` (compose through its mount), and the rules are complete: a severity,
//! a `for`, a summary and a description each, and a firing case in `deploy/alerts.test.yml`
//! for each alert. Their PromQL is checked against real nodes' `/metrics` with the
//! dashboard's (`promql`, `nodes`); `make deploy-check` also runs `promtool` on them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::compose::compose_mounts;
use crate::files::{deploy_dir, files_under, load_yaml_one, read, rel, root, Check, Problems, JOB};

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

/// The alerting rules file both Prometheus configs load.
pub(crate) fn alerts_path() -> PathBuf {
    deploy_dir().join("alerts.yml")
}

/// The `rule_files` of a Prometheus config, as written.
pub(crate) fn rule_files(cfg: &Value) -> Vec<String> {
    cfg["rule_files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect()
}

/// A path of a Prometheus config resolved as Prometheus does: relative to the directory
/// of the config file.
fn resolve(config_dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

/// Lexically normalized (`a/./b/../c` -> `a/c`), so paths from different places compare.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The rule files a config loads, as files of this repository: `config_dir` is where the
/// config is read from by Prometheus, `mounts` maps paths there to repository files (the
/// compose service's bind mounts; empty when Prometheus reads the repository itself).
/// A rule file that is neither mounted nor present is a problem.
pub(crate) fn loaded_rule_files(
    cfg: &Value,
    config_dir: &Path,
    mounts: &[(PathBuf, PathBuf)],
    what: &str,
) -> Result<Vec<PathBuf>, String> {
    let mut p = Problems::default();
    let mut out = Vec::new();
    for f in rule_files(cfg) {
        let at = normalize(&resolve(config_dir, &f));
        let file = if mounts.is_empty() {
            Some(at.clone())
        } else {
            mounts
                .iter()
                .find(|(target, _)| *target == at)
                .map(|(_, src)| src.clone())
        };
        match file {
            Some(file) if file.is_file() => out.push(file),
            _ => p.add(format!(
                "rule file {f} (at {}) is not {}",
                at.display(),
                if mounts.is_empty() {
                    "a file"
                } else {
                    "mounted from a file of the repository"
                }
            )),
        }
    }
    p.finish(what).map(|()| out)
}

/// The rule files of `deploy/prometheus.yml` (read next to it) and of the compose
/// Prometheus (read in its container, from the compose service's bind mounts).
pub(crate) fn prometheus_rule_files() -> Result<Vec<(String, Vec<PathBuf>)>, String> {
    let dir = deploy_dir();
    let local = load_yaml_one(&dir.join("prometheus.yml"));
    let mut out = vec![(
        "deploy/prometheus.yml".to_string(),
        loaded_rule_files(&local, &dir, &[], "deploy/prometheus.yml")?,
    )];
    let compose = load_yaml_one(&dir.join("docker-compose.yml"));
    let services = compose["services"].as_object().cloned().unwrap_or_default();
    let prom = services
        .values()
        .find(|svc| {
            svc["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("prom/prometheus"))
        })
        .ok_or("deploy/docker-compose.yml: no prom/prometheus service")?;
    let mounts: Vec<(PathBuf, PathBuf)> = compose_mounts(prom)
        .into_iter()
        .map(|(src, target)| (normalize(Path::new(&target)), normalize(&dir.join(src))))
        .collect();
    let config_target = Path::new("/etc/prometheus/prometheus.yml");
    let (_, config_src) = mounts
        .iter()
        .find(|(t, _)| t == config_target)
        .ok_or("deploy/docker-compose.yml: no Prometheus config mounted")?;
    let cfg = load_yaml_one(config_src);
    let what = format!("compose Prometheus config {}", rel(config_src));
    let files = loaded_rule_files(&cfg, config_target.parent().unwrap(), &mounts, &what)?;
    out.push((what, files));
    Ok(out)
}

/// Every alerting rule has a name (unique), an expression, a `for` (an alert on one bad
/// scrape pages nobody usefully), a `severity` of `warning` or `critical`, and a summary
/// and a description; and `tests` (the `tests:` of a `promtool test rules` file) has a case
/// in which each alert fires.
pub(crate) fn check_alert_rules(rules: &Value, tests: &Value) -> Check {
    let mut p = Problems::default();
    let mut names = BTreeSet::new();
    let all: Vec<&Value> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    p.check(!all.is_empty(), || "no rules".into());
    for r in all {
        let Some(name) = r["alert"].as_str() else {
            continue; // a recording rule: its expr is checked with the others
        };
        p.check(names.insert(name.to_string()), || {
            format!("alert {name} is defined twice")
        });
        p.check(
            r["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
            || format!("alert {name} has no expr"),
        );
        p.check(r["for"].is_string(), || {
            format!("alert {name} has no `for`")
        });
        let severity = r["labels"]["severity"].as_str();
        p.check(matches!(severity, Some("warning" | "critical")), || {
            format!("alert {name}: severity {severity:?} is not warning or critical")
        });
        for a in ["summary", "description"] {
            p.check(
                r["annotations"][a]
                    .as_str()
                    .is_some_and(|t| !t.trim().is_empty()),
                || format!("alert {name} has no {a} annotation"),
            );
        }
    }
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str())
        .collect();
    for name in &names {
        p.check(fired.contains(name.as_str()), || {
            format!("alert {name} has no unit test in which it fires")
        });
    }
    for name in fired.iter().filter(|n| !names.contains(**n)) {
        p.add(format!(
            "the unit tests expect an alert {name} that no rule defines"
        ));
    }
    p.finish("alerting rules")
}

#[test]
fn both_prometheus_configs_load_the_alerting_rules() {
    let want = normalize(&alerts_path());
    for (what, files) in prometheus_rule_files().unwrap_or_else(|e| panic!("{e}")) {
        assert!(
            files.iter().any(|f| normalize(f) == want),
            "{what} does not load {}: it loads {files:?}",
            rel(&want)
        );
    }
}

#[test]
fn every_alert_is_complete_and_unit_tested() {
    let tests_path = deploy_dir().join("alerts.test.yml");
    let tests = load_yaml_one(&tests_path);
    // The unit tests load the same file.
    let loaded: Vec<PathBuf> = rule_files(&tests)
        .iter()
        .map(|f| normalize(&resolve(&deploy_dir(), f)))
        .collect();
    assert_eq!(loaded, [normalize(&alerts_path())], "{}", rel(&tests_path));
    check_alert_rules(&load_yaml_one(&alerts_path()), &tests).unwrap_or_else(|e| panic!("{e}"));
}

/// The rules check rejects an alert without `for`, severity or description, a duplicate,
/// and an alert no unit test fires.
#[test]
fn broken_alerting_rules_are_rejected() {
    let rules = load_yaml_one(&alerts_path());
    let tests = load_yaml_one(&deploy_dir().join("alerts.test.yml"));
    type Break = (&'static str, fn(&mut Value, &mut Value));
    let cases: &[Break] = &[
        ("has no `for`", |r, _| {
            r["groups"][0]["rules"][0]
                .as_object_mut()
                .unwrap()
                .remove("for");
        }),
        ("is not warning or critical", |r, _| {
            r["groups"][0]["rules"][0]["labels"]["severity"] = "page".into();
        }),
        ("has no description annotation", |r, _| {
            r["groups"][0]["rules"][0]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("description");
        }),
        ("is defined twice", |r, _| {
            let first = r["groups"][0]["rules"][0].clone();
            r["groups"][0]["rules"].as_array_mut().unwrap().push(first);
        }),
        ("has no unit test in which it fires", |_, t| {
            t["tests"].as_array_mut().unwrap().remove(0);
        }),
        ("that no rule defines", |r, _| {
            r["groups"][0]["rules"].as_array_mut().unwrap().remove(0);
        }),
    ];
    for (needle, break_it) in cases {
        let (mut r, mut t) = (rules.clone(), tests.clone());
        break_it(&mut r, &mut t);
        match check_alert_rules(&r, &t) {
            Ok(()) => panic!("a broken copy passed: {needle}"),
            Err(e) => assert!(e.contains(needle), "{needle}: {e}"),
        }
    }
}
