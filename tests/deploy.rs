//! The operator files under `deploy/` (Prometheus, Grafana, Dockerfile, docker compose,
//! Kubernetes) agree with each other, with `config/node*.toml`, and with real nodes:
//!
//! - every YAML and JSON file parses;
//! - the Kubernetes objects fit together (ports, probes, service names, replicas, data
//!   directory, disruption budget, selectors), and so do the compose services;
//! - the binary accepts the environment each container gets (`cookie-crud healthcheck`
//!   exits 2 on a configuration it refuses);
//! - the probe paths answer 200 on real nodes, and every metric, label and label value the
//!   dashboard and the Prometheus configs use appears in real `/metrics` output;
//! - the checks reject deliberately broken copies of the real files.
//!
//! Each check is a function returning `Result<(), String>` listing every problem it found,
//! so the real files and the broken copies go through the same code.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, BIN, FAST_RAFT};
use serde::Deserialize;
use serde_json::{json, Value};

type Check = Result<(), String>;

/// Environment variables of a container.
type Env = BTreeMap<String, String>;

/// The job name the dashboard filters on and every Prometheus config must scrape as.
const JOB: &str = "cookie-crud-cluster";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// Collects every problem a check finds, so one run reports all of them.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }

    fn merge(&mut self, r: Check) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    fn finish(self, what: &str) -> Check {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}:\n  - {}", self.0.join("\n  - ")))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loading files

fn files_under(dir: &Path) -> Vec<PathBuf> {
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

fn files_if_dir(dir: &Path) -> Vec<PathBuf> {
    if dir.is_dir() {
        files_under(dir)
    } else {
        Vec::new()
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

/// Every document of a (possibly multi-document) YAML text, as JSON values. Empty
/// documents (a trailing `---`) are skipped; merge keys (`<<: *anchor`) are applied.
fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

fn load_yaml(path: &Path) -> Vec<Value> {
    parse_yaml(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

fn load_yaml_one(path: &Path) -> Value {
    let mut docs = load_yaml(path);
    assert_eq!(docs.len(), 1, "{}: expected one YAML document", rel(path));
    docs.remove(0)
}

fn load_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", rel(path)))
}

/// Every object of every file under `deploy/k8s/`.
fn k8s_objects() -> Vec<Value> {
    files_under(&deploy_dir().join("k8s"))
        .iter()
        .filter(|p| is_yaml(p))
        .flat_map(|p| load_yaml(p))
        .collect()
}

fn dockerfile_text() -> String {
    read(&deploy_dir().join("Dockerfile"))
}

// ---------------------------------------------------------------------------------------
// Small helpers on JSON values

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

fn name_of(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// A string-to-string map (labels, selectors, ConfigMap data); other scalars are shown in
/// their JSON form.
fn str_map(v: &Value) -> BTreeMap<String, String> {
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
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port of `host:port`.
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

fn objects_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

// ---------------------------------------------------------------------------------------
// Kubernetes

/// `(name, containerPort)` of a container's ports.
fn container_ports(c: &Value) -> Vec<(Option<String>, u16)> {
    c["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let port = u16::try_from(p["containerPort"].as_u64()?).ok()?;
                    Some((p["name"].as_str().map(String::from), port))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A probe's or service's port: a number, or the name of a container port.
fn resolve_port(v: &Value, ports: &[(Option<String>, u16)]) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(name) => ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()))
            .map(|(_, p)| *p),
        _ => None,
    }
}

/// The StatefulSet's main container: the one named like the StatefulSet, else the first.
fn main_container(sts: &Value) -> Option<&Value> {
    let cs = sts["spec"]["template"]["spec"]["containers"].as_array()?;
    cs.iter()
        .find(|c| c["name"].as_str() == Some(name_of(sts)))
        .or_else(|| cs.first())
}

/// The ConfigMap the container takes its environment from.
fn env_config_map<'a>(objects: &'a [Value], container: &Value) -> Option<&'a Value> {
    let names: Vec<&str> = container["envFrom"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["configMapRef"]["name"].as_str())
        .collect();
    objects_of(objects, "ConfigMap")
        .into_iter()
        .find(|cm| names.contains(&name_of(cm)))
}

/// The whole `deploy/k8s/` set: a StatefulSet whose pods find each other through the
/// headless service the ConfigMap names, with probes, ports, storage and a disruption
/// budget that agree with the node's configuration.
fn check_kubernetes(objects: &[Value]) -> Check {
    let mut p = Problems::default();
    for o in objects {
        p.check(
            o["apiVersion"].is_string() && o["kind"].is_string() && !name_of(o).is_empty(),
            || format!("an object lacks apiVersion, kind or metadata.name: {o}"),
        );
    }
    let sets = objects_of(objects, "StatefulSet");
    let [sts] = sets.as_slice() else {
        return Err(format!(
            "Kubernetes manifests: expected one StatefulSet, found {}",
            sets.len()
        ));
    };
    let spec = &sts["spec"];
    let pod_labels = str_map(&spec["template"]["metadata"]["labels"]);
    p.check(
        selects(&str_map(&spec["selector"]["matchLabels"]), &pod_labels),
        || {
            format!(
                "StatefulSet selector {} does not select its own pod labels {pod_labels:?}",
                spec["selector"]["matchLabels"]
            )
        },
    );
    let Some(c) = main_container(sts) else {
        p.add("StatefulSet has no container");
        return p.finish("Kubernetes manifests");
    };
    let Some(cm) = env_config_map(objects, c) else {
        p.add(format!(
            "container {} takes no environment from a ConfigMap in these files (envFrom: {})",
            c["name"], c["envFrom"]
        ));
        return p.finish("Kubernetes manifests");
    };
    for (k, v) in cm["data"].as_object().into_iter().flatten() {
        p.check(v.is_string(), || {
            format!(
                "ConfigMap {}: data.{k} = {v} must be a string (quote it)",
                name_of(cm)
            )
        });
    }
    let data = str_map(&cm["data"]);
    let var = |k: &str| data.get(k).map(String::as_str);

    // Ports: the listen port is the container port, the probes' port and the services'.
    let ports = container_ports(c);
    let http = ports
        .iter()
        .find(|(n, _)| n.as_deref() == Some("http"))
        .or(ports.first())
        .map(|(_, p)| *p);
    let listen_port = var("COOKIE_CRUD_LISTEN").and_then(port_of);
    p.check(listen_port.is_some(), || {
        format!(
            "ConfigMap COOKIE_CRUD_LISTEN {:?} is not host:port",
            var("COOKIE_CRUD_LISTEN")
        )
    });
    p.check(http.is_some() && http == listen_port, || {
        format!(
            "container port {http:?} differs from the port of COOKIE_CRUD_LISTEN {listen_port:?}"
        )
    });
    for (probe, want) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
        let get = &c[probe]["httpGet"];
        p.check(get["path"].as_str() == Some(want), || {
            format!("{probe} path is {} (want {want})", get["path"])
        });
        let port = resolve_port(&get["port"], &ports);
        p.check(port.is_some() && port == listen_port, || {
            format!(
                "{probe} port {} is {port:?}, not the listen port {listen_port:?}",
                get["port"]
            )
        });
    }

    // The peers' DNS names: <pod>.<serviceName>.<namespace>.svc... from the headless
    // service, which must publish pods before they are ready.
    p.check(
        var("COOKIE_CRUD_CLUSTER__DISCOVERY") == Some("kubernetes"),
        || {
            format!(
                "COOKIE_CRUD_CLUSTER__DISCOVERY is {:?}, not kubernetes",
                var("COOKIE_CRUD_CLUSTER__DISCOVERY")
            )
        },
    );
    let service_name = spec["serviceName"].as_str().unwrap_or("");
    p.check(var("COOKIE_CRUD_CLUSTER__SERVICE") == Some(service_name), || {
        format!(
            "StatefulSet serviceName {service_name:?} differs from COOKIE_CRUD_CLUSTER__SERVICE {:?}",
            var("COOKIE_CRUD_CLUSTER__SERVICE")
        )
    });
    let peer_port = match var("COOKIE_CRUD_CLUSTER__PEER_PORT") {
        Some(v) => v.parse().ok(),
        None => listen_port,
    };
    let services = objects_of(objects, "Service");
    match services.iter().find(|s| name_of(s) == service_name) {
        None => p.add(format!(
            "no Service named {service_name:?} (the StatefulSet's serviceName)"
        )),
        Some(h) => {
            let hs = &h["spec"];
            p.check(hs["clusterIP"].as_str() == Some("None"), || {
                format!(
                    "Service {service_name}: clusterIP is {}, not None (headless)",
                    hs["clusterIP"]
                )
            });
            p.check(hs["publishNotReadyAddresses"] == true, || {
                format!(
                    "Service {service_name}: publishNotReadyAddresses must be true (nodes resolve \
                     each other before /ready, which needs a leader)"
                )
            });
            p.check(selects(&str_map(&hs["selector"]), &pod_labels), || {
                format!(
                    "Service {service_name}: selector {} does not select the pods",
                    hs["selector"]
                )
            });
            let ok = hs["ports"].as_array().into_iter().flatten().any(|sp| {
                let port = sp["port"].as_u64().and_then(|n| u16::try_from(n).ok());
                let target = match &sp["targetPort"] {
                    Value::Null => port,
                    t => resolve_port(t, &ports),
                };
                port == peer_port && target == http
            });
            p.check(ok, || {
                format!(
                    "Service {service_name}: no port {peer_port:?} reaching container port {http:?}: {}",
                    hs["ports"]
                )
            });
        }
    }

    // Members: replicas = expected nodes; all pods start together.
    let replicas = spec["replicas"].as_u64().unwrap_or(1);
    let expected = var("COOKIE_CRUD_CLUSTER__EXPECTED_NODES").and_then(|v| v.parse::<u64>().ok());
    p.check(expected == Some(replicas), || {
        format!("StatefulSet replicas {replicas} differs from COOKIE_CRUD_CLUSTER__EXPECTED_NODES {expected:?}")
    });
    p.check(spec["podManagementPolicy"] == "Parallel", || {
        format!(
            "podManagementPolicy is {}, not Parallel (a new cluster needs every pod up)",
            spec["podManagementPolicy"]
        )
    });

    // Storage: the claim template is mounted where the node keeps its data.
    let data_dir = var("COOKIE_CRUD_DATA_DIR").unwrap_or("");
    let claims: Vec<&str> = spec["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(name_of)
        .collect();
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str() == Some(data_dir));
    match mount {
        None => p.add(format!(
            "no volumeMount at COOKIE_CRUD_DATA_DIR {data_dir:?}: {}",
            c["volumeMounts"]
        )),
        Some(m) => p.check(
            m["name"].as_str().is_some_and(|n| claims.contains(&n)),
            || {
                format!(
                    "the data mount {} is not a volumeClaimTemplate ({claims:?})",
                    m["name"]
                )
            },
        ),
    }

    // Environment: the namespace from the downward API; nothing that contradicts discovery.
    let env = c["env"].as_array().cloned().unwrap_or_default();
    let ns = env
        .iter()
        .find(|e| e["name"] == "COOKIE_CRUD_CLUSTER__NAMESPACE");
    p.check(
        ns.is_some_and(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        || "COOKIE_CRUD_CLUSTER__NAMESPACE must come from fieldRef metadata.namespace".into(),
    );
    for bad in ["COOKIE_CRUD_NODES", "COOKIE_CRUD_NODE_ID", "HOSTNAME"] {
        p.check(
            !data.contains_key(bad) && !env.iter().any(|e| e["name"] == bad),
            || format!("{bad} must not be set: the pod name and discovery define it"),
        );
    }

    // Security.
    let sc = &spec["template"]["spec"]["securityContext"];
    p.check(sc["runAsNonRoot"] == true, || {
        "pod securityContext.runAsNonRoot must be true".into()
    });
    p.check(sc["runAsUser"].as_u64().is_some_and(|u| u != 0), || {
        format!(
            "pod securityContext.runAsUser {} must be a non-root uid",
            sc["runAsUser"]
        )
    });
    p.check(sc["fsGroup"].as_u64().is_some(), || {
        "pod securityContext.fsGroup must be set (the volume must be writable)".into()
    });

    // Disruptions: a majority must stay up.
    let pdbs: Vec<&Value> = objects_of(objects, "PodDisruptionBudget")
        .into_iter()
        .filter(|b| selects(&str_map(&b["spec"]["selector"]["matchLabels"]), &pod_labels))
        .collect();
    p.check(!pdbs.is_empty(), || {
        "no PodDisruptionBudget whose selector matches the pod labels".into()
    });
    for b in pdbs {
        let bs = &b["spec"];
        let down = match (bs["maxUnavailable"].as_u64(), bs["minAvailable"].as_u64()) {
            (Some(m), _) => Some(m),
            (None, Some(n)) => Some(replicas.saturating_sub(n)),
            _ => None,
        };
        p.check(
            down.is_some_and(|d| replicas - d.min(replicas) > replicas / 2),
            || {
                format!(
                    "PodDisruptionBudget {}: {} down of {replicas} loses the Raft majority \
                     (integer maxUnavailable/minAvailable needed)",
                    name_of(b),
                    down.map_or("an unknown number".into(), |d| d.to_string())
                )
            },
        );
    }

    // Clients: a non-headless service over the same pods and port.
    let clients: Vec<&&Value> = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"] != "None")
        .collect();
    p.check(!clients.is_empty(), || {
        "no client (non-headless) Service".into()
    });
    for svc in clients {
        p.check(
            selects(&str_map(&svc["spec"]["selector"]), &pod_labels),
            || {
                format!(
                    "Service {}: selector {} does not select the pods {pod_labels:?}",
                    name_of(svc),
                    svc["spec"]["selector"]
                )
            },
        );
        let targets: Vec<Option<u16>> = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|sp| match &sp["targetPort"] {
                Value::Null => sp["port"].as_u64().and_then(|n| u16::try_from(n).ok()),
                t => resolve_port(t, &ports),
            })
            .collect();
        p.check(
            !targets.is_empty() && targets.iter().all(|t| *t == http),
            || {
                format!(
                    "Service {}: ports {} do not reach container port {http:?}",
                    name_of(svc),
                    svc["spec"]["ports"]
                )
            },
        );
    }

    // Scrape annotations, when present, point at the metrics.
    let ann = str_map(&spec["template"]["metadata"]["annotations"]);
    if let Some(port) = ann.get("prometheus.io/port") {
        p.check(port.parse().ok() == http, || {
            format!("annotation prometheus.io/port {port} differs from container port {http:?}")
        });
    }
    if let Some(path) = ann.get("prometheus.io/path") {
        p.check(path == "/metrics", || {
            format!("annotation prometheus.io/path {path} is not /metrics")
        });
    }
    p.finish("Kubernetes manifests")
}

/// The environment of pod `ordinal` of the StatefulSet: the image's `ENV`, the ConfigMap,
/// the container's `env` (the namespace as "default"), and `HOSTNAME` = the pod name.
fn pod_environment(
    objects: &[Value],
    image_env: &BTreeMap<String, String>,
    ordinal: u64,
) -> BTreeMap<String, String> {
    let sts = objects_of(objects, "StatefulSet")[0];
    let c = main_container(sts).expect("a container");
    let mut env = image_env.clone();
    if let Some(cm) = env_config_map(objects, c) {
        env.extend(str_map(&cm["data"]));
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("").to_string();
        if let Some(v) = e["value"].as_str() {
            env.insert(name, v.into());
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace" {
            env.insert(name, "default".into());
        }
    }
    env.insert("HOSTNAME".into(), format!("{}-{ordinal}", name_of(sts)));
    env
}

/// Whether the binary accepts a container's environment: `cookie-crud healthcheck` loads
/// the configuration like the server does, and exits 2 when it refuses it (then 0 or 1
/// depending on whether something answers on that port, which does not matter here).
fn config_accepted(env: &BTreeMap<String, String>) -> Check {
    let out = Command::new(BIN)
        .arg("healthcheck")
        .env_clear()
        .envs(env)
        .output()
        .expect("run cookie-crud healthcheck");
    if out.status.code() == Some(2) {
        Err(format!(
            "cookie-crud refuses the environment {env:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Dockerfile

#[derive(Debug, Default, Clone)]
struct Stage {
    image: String,
    alias: Option<String>,
    /// `(INSTRUCTION, arguments)`, continuation lines joined, comments dropped.
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(body) => {
                cur.push_str(body.trim());
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.is_empty() {
        logical.push(cur);
    }
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical {
        let (instr, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let instr = instr.to_ascii_uppercase();
        let args = args.trim().to_string();
        if instr == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let alias = match words.as_slice() {
                [_, as_, alias] if as_.eq_ignore_ascii_case("as") => Some(alias.to_string()),
                _ => None,
            };
            stages.push(Stage {
                image: words.first().unwrap_or(&"").to_string(),
                alias,
                instructions: Vec::new(),
            });
        } else if let Some(st) = stages.last_mut() {
            st.instructions.push((instr, args));
        }
    }
    stages
}

impl Stage {
    fn all(&self, instr: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(i, _)| i == instr)
            .map(|(_, a)| a.as_str())
            .collect()
    }

    /// `ENV` of this stage (`K=V ...` or the legacy `K V`).
    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for args in self.all("ENV") {
            let words: Vec<&str> = args.split_whitespace().collect();
            if words.first().is_some_and(|w| w.contains('=')) {
                for w in words {
                    if let Some((k, v)) = w.split_once('=') {
                        env.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                }
            } else if let Some((k, v)) = args.split_once(char::is_whitespace) {
                env.insert(k.to_string(), v.trim().trim_matches('"').to_string());
            }
        }
        env
    }

    /// `COPY` instructions as `(flags, sources, destination)`.
    fn copies(&self) -> Vec<(Vec<String>, Vec<String>, String)> {
        self.all("COPY")
            .into_iter()
            .filter_map(|args| {
                let (flags, rest): (Vec<&str>, Vec<&str>) =
                    args.split_whitespace().partition(|w| w.starts_with("--"));
                let (dest, srcs) = rest.split_last()?;
                Some((
                    flags.iter().map(|f| f.to_string()).collect(),
                    srcs.iter()
                        .map(|s| s.trim_start_matches("./").trim_end_matches('/').to_string())
                        .collect(),
                    dest.to_string(),
                ))
            })
            .collect()
    }
}

/// A JSON-array (exec form) argument, e.g. of `ENTRYPOINT` or `HEALTHCHECK ... CMD`.
fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args.trim()).ok()
}

fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// `.dockerignore` patterns, as plain paths (globs are left out).
fn dockerignore(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string()
        })
        .collect()
}

/// The Dockerfile builds the workspace from everything its manifest needs, with a Rust at
/// least the manifest's rust-version, and runs the binary as an unprivileged user with the
/// data volume, port and health check the rest of `deploy/` expects.
fn check_dockerfile(text: &str, ignore: &str, repo: &Path) -> Check {
    let mut p = Problems::default();
    let stages = dockerfile_stages(text);
    if stages.len() < 2 {
        return Err(format!(
            "Dockerfile: expected a builder and a runtime stage, found {}",
            stages.len()
        ));
    }
    let builder = &stages[0];
    let runtime = stages.last().unwrap();
    let manifest: toml::Table =
        toml::from_str(&read(&repo.join("Cargo.toml"))).expect("Cargo.toml");

    // The toolchain.
    let want = manifest["workspace"]["package"]["rust-version"]
        .as_str()
        .and_then(parse_version);
    let have = builder
        .image
        .strip_prefix("rust:")
        .and_then(|tag| parse_version(tag.split('-').next().unwrap_or("")));
    p.check(have.is_some() && have >= want, || {
        format!(
            "builder image {} is older than the manifest's rust-version {want:?}",
            builder.image
        )
    });
    p.check(runtime.image == "debian:bookworm-slim", || {
        format!(
            "runtime image {} (want debian:bookworm-slim, the builder's Debian)",
            runtime.image
        )
    });

    // The sources: everything cargo needs to resolve the workspace, present and not ignored.
    let ignored = dockerignore(ignore);
    for want in ["target", ".git", "run", "results"] {
        p.check(ignored.iter().any(|i| i == want), || {
            format!(".dockerignore does not exclude {want}")
        });
    }
    let copied: Vec<String> = builder
        .copies()
        .into_iter()
        .flat_map(|(_, s, _)| s)
        .collect();
    for src in &copied {
        p.check(repo.join(src).exists(), || {
            format!("Dockerfile copies {src}, which does not exist")
        });
        p.check(
            !ignored
                .iter()
                .any(|i| src == i || src.starts_with(&format!("{i}/"))),
            || format!("Dockerfile copies {src}, which .dockerignore excludes"),
        );
    }
    let covered = |path: &str| {
        copied
            .iter()
            .any(|c| path == c || path.starts_with(&format!("{c}/")))
    };
    let mut needed: Vec<String> = vec![
        "Cargo.toml".into(),
        "Cargo.lock".into(),
        "src/main.rs".into(),
    ];
    for m in manifest["workspace"]["members"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let m = m.as_str().unwrap_or(".");
        if m != "." {
            needed.push(format!("{m}/Cargo.toml"));
            needed.push(format!("{m}/src"));
        }
    }
    for kind in ["bench", "test", "bin", "example"] {
        for t in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let path = match t.get("path").and_then(|v| v.as_str()) {
                Some(path) => path.to_string(),
                None => {
                    let dir = match kind {
                        "bench" => "benches",
                        "test" => "tests",
                        "example" => "examples",
                        _ => "src/bin",
                    };
                    let name = t.get("name").and_then(|v| v.as_str()).unwrap_or("");
                    format!("{dir}/{name}.rs")
                }
            };
            needed.push(path);
        }
    }
    if repo.join("tests").is_dir() {
        needed.push("tests".into());
    }
    for n in needed {
        p.check(covered(&n), || {
            format!("Dockerfile does not copy {n}, which the manifest needs")
        });
    }
    let build = builder.all("RUN").join(" ");
    p.check(
        build.contains("cargo build") && build.contains("--release") && build.contains("--locked"),
        || "builder does not run cargo build --release --locked".into(),
    );

    // The runtime image.
    let from_builder = runtime.copies().into_iter().any(|(flags, _, dest)| {
        let alias = builder.alias.clone().unwrap_or_else(|| "0".into());
        flags.contains(&format!("--from={alias}")) && dest == "/usr/local/bin/cookie-crud"
    });
    p.check(from_builder, || {
        "runtime does not copy the binary to /usr/local/bin/cookie-crud".into()
    });
    let entry = runtime.all("ENTRYPOINT").last().and_then(|a| exec_form(a));
    p.check(
        entry.as_deref().is_some_and(|e| {
            e.len() == 1 && (e[0] == "cookie-crud" || e[0] == "/usr/local/bin/cookie-crud")
        }),
        || format!("ENTRYPOINT is {entry:?}, want [\"cookie-crud\"] (exec form)"),
    );
    let health = runtime
        .all("HEALTHCHECK")
        .last()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let cmd = health.split_once("CMD").and_then(|(_, c)| exec_form(c));
    p.check(
        cmd.as_deref().is_some_and(|c| {
            c.len() == 2 && c[0].ends_with("cookie-crud") && c[1] == "healthcheck"
        }),
        || format!("HEALTHCHECK is {health:?}, want CMD [\"cookie-crud\", \"healthcheck\"]"),
    );
    let env = runtime.env();
    let listen_port = env.get("COOKIE_CRUD_LISTEN").and_then(|l| port_of(l));
    let exposed: Vec<u16> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .filter_map(|w| w.trim_end_matches("/tcp").parse().ok())
        .collect();
    p.check(
        listen_port.is_some() && exposed == [listen_port.unwrap()],
        || {
            format!(
                "EXPOSE {exposed:?} differs from the port of COOKIE_CRUD_LISTEN {listen_port:?}"
            )
        },
    );
    p.check(
        env.get("COOKIE_CRUD_LISTEN")
            .is_some_and(|l| l.starts_with("0.0.0.0:")),
        || "COOKIE_CRUD_LISTEN must listen on 0.0.0.0 in a container".into(),
    );
    let data_dir = env.get("COOKIE_CRUD_DATA_DIR").cloned().unwrap_or_default();
    let volumes: Vec<String> = runtime
        .all("VOLUME")
        .iter()
        .flat_map(|a| {
            exec_form(a).unwrap_or_else(|| a.split_whitespace().map(String::from).collect())
        })
        .collect();
    p.check(!data_dir.is_empty() && volumes.contains(&data_dir), || {
        format!("VOLUME {volumes:?} does not hold COOKIE_CRUD_DATA_DIR {data_dir:?}")
    });
    let (uid, _) = image_user(runtime);
    p.check(uid.is_some_and(|u| u != 0), || {
        "USER must be a numeric non-root uid".into()
    });
    let runs = runtime.all("RUN").join(" ");
    if let Some(uid) = uid {
        p.check(runs.contains(&format!("--uid {uid}")), || {
            format!("no user is created with uid {uid}")
        });
        p.check(runs.contains("chown") && runs.contains(&data_dir), || {
            format!("{data_dir} is not chowned to the user")
        });
    }
    p.finish("deploy/Dockerfile")
}

/// `USER uid[:gid]` of a stage.
fn image_user(stage: &Stage) -> (Option<u64>, Option<u64>) {
    let user = stage
        .all("USER")
        .last()
        .map(|u| u.to_string())
        .unwrap_or_default();
    let (u, g) = user.split_once(':').unwrap_or((&user, ""));
    (u.parse().ok(), g.parse().ok())
}

/// The image's user and volume are the ones the StatefulSet runs with and mounts.
fn check_image_matches_pods(dockerfile: &str, objects: &[Value]) -> Check {
    let mut p = Problems::default();
    let stages = dockerfile_stages(dockerfile);
    let runtime = stages.last().ok_or("no stage")?;
    let (uid, gid) = image_user(runtime);
    let sts = objects_of(objects, "StatefulSet");
    let sc = &sts.first().ok_or("no StatefulSet")?["spec"]["template"]["spec"]["securityContext"];
    p.check(sc["runAsUser"].as_u64() == uid, || {
        format!(
            "StatefulSet runAsUser {} differs from the image's USER {uid:?}",
            sc["runAsUser"]
        )
    });
    if let Some(gid) = gid {
        p.check(sc["fsGroup"].as_u64() == Some(gid), || {
            format!(
                "StatefulSet fsGroup {} differs from the image's group {gid}",
                sc["fsGroup"]
            )
        });
    }
    let env = pod_environment(objects, &runtime.env(), 0);
    let image_dir = runtime.env().get("COOKIE_CRUD_DATA_DIR").cloned();
    p.check(
        env.get("COOKIE_CRUD_DATA_DIR") == image_dir.as_ref(),
        || {
            format!(
                "the pods' COOKIE_CRUD_DATA_DIR {:?} is not the image's volume {image_dir:?}",
                env.get("COOKIE_CRUD_DATA_DIR")
            )
        },
    );
    p.finish("Dockerfile and StatefulSet")
}

fn image_env() -> BTreeMap<String, String> {
    dockerfile_stages(&dockerfile_text())
        .last()
        .expect("a runtime stage")
        .env()
}

// ---------------------------------------------------------------------------------------
// Prometheus

/// The `cookie-crud-cluster` job scrapes exactly `expected` (target -> node name, checked
/// against a `node` target label when there is one) on `/metrics`.
fn check_prometheus(cfg: &Value, expected: &BTreeMap<String, String>, what: &str) -> Check {
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
fn local_cluster_targets() -> BTreeMap<String, String> {
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
fn yaml_exprs(v: &Value, whence: &str, out: &mut Vec<(String, String)>) {
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

// ---------------------------------------------------------------------------------------
// docker compose

fn compose_env(svc: &Value) -> Result<BTreeMap<String, String>, String> {
    match &svc["environment"] {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(_) => Ok(str_map(&svc["environment"])),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let i = i
                    .as_str()
                    .ok_or(format!("environment entry {i} is not a string"))?;
                let (k, v) = i
                    .split_once('=')
                    .ok_or(format!("environment entry {i:?} has no ="))?;
                Ok((k.to_string(), v.to_string()))
            })
            .collect(),
        other => Err(format!("environment {other} is neither a map nor a list")),
    }
}

/// `(source, target)` of a service's volumes (short `src:dst[:mode]` or long syntax).
fn compose_mounts(svc: &Value) -> Vec<(String, String)> {
    svc["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| match v {
            Value::String(m) => {
                let parts: Vec<&str> = m.split(':').collect();
                (parts.len() >= 2).then(|| (parts[0].to_string(), parts[1].to_string()))
            }
            Value::Object(_) => Some((s(&v["source"])?.to_string(), s(&v["target"])?.to_string())),
            _ => None,
        })
        .collect()
}

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// `(host, container)` ports of a service.
fn compose_ports(svc: &Value) -> Vec<(Option<u16>, Option<u16>)> {
    svc["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p {
            Value::String(m) => {
                let m = m.trim_end_matches("/tcp");
                let parts: Vec<&str> = m.rsplitn(3, ':').collect();
                let container = parts.first().and_then(|c| c.parse().ok());
                let host = parts.get(1).and_then(|h| h.parse().ok());
                (host, container)
            }
            Value::Number(n) => (None, n.as_u64().and_then(|n| u16::try_from(n).ok())),
            Value::Object(_) => (
                p["published"]
                    .as_u64()
                    .or_else(|| p["published"].as_str().and_then(|x| x.parse().ok()))
                    .and_then(|n| u16::try_from(n).ok()),
                p["target"].as_u64().and_then(|n| u16::try_from(n).ok()),
            ),
            _ => (None, None),
        })
        .collect()
}

/// A `COOKIE_CRUD_NODES` value, read as the node reads it: TOML.
fn parse_members(raw: &str) -> Result<Vec<(u64, String, Option<String>)>, String> {
    let t: toml::Table = toml::from_str(&format!("v = {raw}"))
        .map_err(|e| format!("COOKIE_CRUD_NODES is not TOML: {e}"))?;
    t["v"]
        .as_array()
        .ok_or("COOKIE_CRUD_NODES is not an array")?
        .iter()
        .map(|m| {
            let id = m
                .get("id")
                .and_then(|v| v.as_integer())
                .ok_or(format!("member {m} has no id"))?;
            let addr = m
                .get("addr")
                .and_then(|v| v.as_str())
                .ok_or(format!("member {m} has no addr"))?;
            let name = m.get("name").and_then(|v| v.as_str()).map(String::from);
            Ok((id as u64, addr.to_string(), name))
        })
        .collect()
}

/// The node services of the compose file (those built from deploy/Dockerfile), with their
/// effective environment (the image's `ENV`, then the service's).
fn compose_nodes(
    compose: &Value,
    image_env: &BTreeMap<String, String>,
) -> Result<Vec<(String, Env)>, String> {
    let services = compose["services"]
        .as_object()
        .ok_or("compose: no services")?;
    let mut out = Vec::new();
    for (name, svc) in services {
        if svc["build"].is_null() {
            continue;
        }
        let mut env = image_env.clone();
        env.extend(compose_env(svc).map_err(|e| format!("service {name}: {e}"))?);
        out.push((name.clone(), env));
    }
    Ok(out)
}

/// The three node services agree with each other (one member list, each node's own entry
/// at its service name and listen port), each keeps its data in a volume of its own, and
/// Prometheus and Grafana find the nodes, the dashboard and each other.
fn check_compose(compose: &Value, image_env: &BTreeMap<String, String>, dir: &Path) -> Check {
    let mut p = Problems::default();
    let services = compose["services"]
        .as_object()
        .ok_or("compose: no services")?;
    let nodes = compose_nodes(compose, image_env)?;
    p.check(nodes.len() == 3, || {
        format!(
            "expected three cookie-crud services, found {:?}",
            nodes.iter().map(|n| &n.0).collect::<Vec<_>>()
        )
    });
    let declared: BTreeSet<String> = compose["volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut first_members: Option<Vec<(u64, String, Option<String>)>> = None;
    let mut ids = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut data_volumes = BTreeSet::new();
    let mut scrape_targets = BTreeMap::new();
    for (name, env) in &nodes {
        let svc = &services[name];
        let build = &svc["build"];
        let context = dir.join(build["context"].as_str().unwrap_or("."));
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
        p.check(
            context.join("Cargo.toml").exists()
                && dockerfile.canonicalize().ok() == dir.join("Dockerfile").canonicalize().ok(),
            || format!("{name}: build {build} is not deploy/Dockerfile with the repository root as context"),
        );
        let port = env.get("COOKIE_CRUD_LISTEN").and_then(|l| port_of(l));
        let id: Option<u64> = env.get("COOKIE_CRUD_NODE_ID").and_then(|i| i.parse().ok());
        p.check(id.is_some_and(|id| ids.insert(id)), || {
            format!(
                "{name}: COOKIE_CRUD_NODE_ID {:?} is missing or not unique",
                env.get("COOKIE_CRUD_NODE_ID")
            )
        });
        match env.get("COOKIE_CRUD_NODES").map(|raw| parse_members(raw)) {
            None => p.add(format!("{name}: no COOKIE_CRUD_NODES")),
            Some(Err(e)) => p.add(format!("{name}: {e}")),
            Some(Ok(members)) => {
                let host = svc["hostname"].as_str().unwrap_or(name.as_str());
                let me = members.iter().find(|m| Some(m.0) == id);
                match (me, port) {
                    (Some((mid, addr, mname)), Some(port)) => {
                        p.check(*addr == format!("{host}:{port}"), || {
                            format!(
                                "{name}: its own member entry says {addr}, but it is {host}:{port}"
                            )
                        });
                        let node_name = env
                            .get("COOKIE_CRUD_NODE_NAME")
                            .cloned()
                            .or(mname.clone())
                            .unwrap_or_else(|| format!("node{mid}"));
                        scrape_targets.insert(format!("{host}:{port}"), node_name);
                    }
                    _ => p.add(format!(
                        "{name}: node id {id:?} is not among COOKIE_CRUD_NODES, or no listen port"
                    )),
                }
                match &first_members {
                    None => first_members = Some(members),
                    Some(f) => p.check(*f == members, || {
                        format!("{name}: COOKIE_CRUD_NODES {members:?} differs from the other services' {f:?}")
                    }),
                }
            }
        }
        let ports = compose_ports(svc);
        let published: Vec<_> = ports.iter().filter(|(_, c)| *c == port).collect();
        p.check(!published.is_empty(), || {
            format!(
                "{name}: no published port maps to the listen port {port:?}: {}",
                svc["ports"]
            )
        });
        for (h, _) in published {
            p.check(h.is_some_and(|h| host_ports.insert(h)), || {
                format!("{name}: host port {h:?} is missing or used twice")
            });
        }
        let data_dir = env.get("COOKIE_CRUD_DATA_DIR").cloned().unwrap_or_default();
        let mounts = compose_mounts(svc);
        match mounts.iter().find(|(_, t)| *t == data_dir) {
            None => p.add(format!(
                "{name}: nothing is mounted at COOKIE_CRUD_DATA_DIR {data_dir:?}"
            )),
            Some((src, _)) => {
                p.check(!is_bind(src) && declared.contains(src), || {
                    format!("{name}: the data volume {src} is not a declared named volume")
                });
                p.check(data_volumes.insert(src.clone()), || {
                    format!("{name}: data volume {src} is shared")
                });
            }
        }
    }
    let members = first_members.unwrap_or_default();
    let member_ids: BTreeSet<u64> = members.iter().map(|m| m.0).collect();
    p.check(member_ids == ids, || {
        format!("the services' node ids {ids:?} differ from the members {member_ids:?}")
    });

    // Every bind mount's source exists.
    for (name, svc) in services {
        for (src, _) in compose_mounts(svc) {
            if is_bind(&src) {
                p.check(dir.join(&src).exists(), || {
                    format!("{name}: mount source {src} does not exist")
                });
            }
        }
    }

    // Prometheus scrapes the node services.
    let image =
        |svc: &Value, prefix: &str| svc["image"].as_str().is_some_and(|i| i.starts_with(prefix));
    let prom = services
        .iter()
        .find(|(_, svc)| image(svc, "prom/prometheus"));
    let Some((prom_name, prom_svc)) = prom else {
        p.add("no prom/prometheus service");
        return p.finish("deploy/docker-compose.yml");
    };
    match compose_mounts(prom_svc)
        .into_iter()
        .find(|(_, t)| t == "/etc/prometheus/prometheus.yml")
    {
        None => p.add(format!(
            "{prom_name}: no config mounted at /etc/prometheus/prometheus.yml"
        )),
        Some((src, _)) => {
            match parse_yaml(&std::fs::read_to_string(dir.join(&src)).unwrap_or_default()) {
                Ok(docs) if docs.len() == 1 => p.merge(check_prometheus(
                    &docs[0],
                    &scrape_targets,
                    &format!("compose Prometheus config {src}"),
                )),
                other => p.add(format!(
                    "{prom_name}: {src} is not one YAML document: {other:?}"
                )),
            }
        }
    }

    // Grafana: its data source is that Prometheus, and the provisioned dashboard path holds
    // the mounted dashboard.
    let Some((graf_name, graf)) = services
        .iter()
        .find(|(_, svc)| image(svc, "grafana/grafana"))
    else {
        p.add("no grafana/grafana service");
        return p.finish("deploy/docker-compose.yml");
    };
    let mounts = compose_mounts(graf);
    let Some((prov_src, _)) = mounts
        .iter()
        .find(|(_, t)| t == "/etc/grafana/provisioning")
    else {
        p.add(format!(
            "{graf_name}: nothing mounted at /etc/grafana/provisioning"
        ));
        return p.finish("deploy/docker-compose.yml");
    };
    let prov = dir.join(prov_src);
    let mut sources = 0;
    for f in files_if_dir(&prov.join("datasources"))
        .iter()
        .filter(|f| is_yaml(f))
    {
        for doc in load_yaml(f) {
            for ds in doc["datasources"].as_array().into_iter().flatten() {
                sources += 1;
                let url = ds["url"].as_str().unwrap_or("");
                let host = url
                    .strip_prefix("http://")
                    .unwrap_or("")
                    .trim_end_matches('/');
                p.check(
                    ds["type"] == "prometheus" && host == format!("{prom_name}:9090"),
                    || {
                        format!(
                            "{}: data source {} points at {url:?}, not http://{prom_name}:9090",
                            rel(f),
                            ds["name"]
                        )
                    },
                );
            }
        }
    }
    p.check(sources > 0, || {
        format!("{}: no data source provisioned", rel(&prov))
    });
    let mut dashboards = 0;
    for f in files_if_dir(&prov.join("dashboards"))
        .iter()
        .filter(|f| is_yaml(f))
    {
        for doc in load_yaml(f) {
            for prv in doc["providers"].as_array().into_iter().flatten() {
                let path = prv["options"]["path"].as_str().unwrap_or("");
                let served: Vec<&(String, String)> = mounts
                    .iter()
                    .filter(|(_, t)| t == path || t.starts_with(&format!("{path}/")))
                    .collect();
                for (src, _) in &served {
                    let src = dir.join(src);
                    let files = if src.is_dir() {
                        files_under(&src)
                    } else {
                        vec![src]
                    };
                    dashboards += files
                        .iter()
                        .filter(|f| f.extension().is_some_and(|e| e == "json"))
                        .count();
                }
                p.check(!served.is_empty(), || {
                    format!(
                        "{}: provider path {path} has nothing mounted in {graf_name}",
                        rel(f)
                    )
                });
            }
        }
    }
    p.check(dashboards > 0, || {
        "no dashboard JSON is mounted where a provider reads".into()
    });
    let genv = compose_env(graf).unwrap_or_default();
    if let Some(home) = genv.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        p.check(mounts.iter().any(|(_, t)| t == home), || {
            format!("{graf_name}: the home dashboard {home} is not mounted")
        });
    }
    p.finish("deploy/docker-compose.yml")
}

/// The uids of the data sources provisioned for Grafana.
fn provisioned_datasource_uids() -> BTreeSet<String> {
    files_under(&deploy_dir().join("grafana/provisioning/datasources"))
        .iter()
        .filter(|f| is_yaml(f))
        .flat_map(|f| load_yaml(f))
        .flat_map(|d| d["datasources"].as_array().cloned().unwrap_or_default())
        .filter_map(|ds| ds["uid"].as_str().map(String::from))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Grafana dashboard

fn dashboard_panels(v: &Value, out: &mut Vec<Value>) {
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        dashboard_panels(p, out);
    }
}

/// Every query of a dashboard: each panel target's `expr`, and the templating queries
/// (`label_values(...)` included), with where they are, for messages.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels = Vec::new();
    dashboard_panels(dash, &mut panels);
    for p in &panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or("");
                let re = t["refId"].as_str().unwrap_or("");
                out.push((format!("panel {title:?} target {re}"), e.to_string()));
            }
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query" {
            let q = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .unwrap_or("");
            out.push((
                format!("variable {}", var["name"].as_str().unwrap_or("")),
                q.to_string(),
            ));
        }
    }
    out
}

/// The dashboard's structure: unique panel ids, a query in each panel, and every data
/// source either the `prometheus`-typed variable or a provisioned uid.
fn check_dashboard(dash: &Value, provisioned: &BTreeSet<String>) -> Check {
    let mut p = Problems::default();
    for key in ["title", "uid"] {
        p.check(dash[key].as_str().is_some_and(|v| !v.is_empty()), || {
            format!("no {key}")
        });
    }
    p.check(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        || format!("schemaVersion {} (want 36 or newer)", dash["schemaVersion"]),
    );
    let ds_vars: BTreeSet<String> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    let ds_ok = |uid: &str| {
        let var = uid
            .strip_prefix("${")
            .and_then(|u| u.strip_suffix('}'))
            .or(uid.strip_prefix('$'));
        var.map_or(provisioned.contains(uid), |v| ds_vars.contains(v))
    };
    let mut panels = Vec::new();
    dashboard_panels(dash, &mut panels);
    p.check(!panels.is_empty(), || "no panels".into());
    let mut ids = BTreeSet::new();
    let check_ds = |p: &mut Problems, whence: &str, ds: &Value| match ds {
        Value::Null => {}
        Value::Object(_) => p.check(
            ds["type"] == "prometheus" && ds["uid"].as_str().is_some_and(ds_ok),
            || {
                format!(
                    "{whence}: data source {ds} is neither a prometheus variable nor provisioned"
                )
            },
        ),
        other => p.check(other.as_str().is_some_and(ds_ok), || {
            format!("{whence}: data source {other} is unknown")
        }),
    };
    for panel in &panels {
        let title = &panel["title"];
        p.check(
            panel["id"].as_u64().is_some_and(|id| ids.insert(id)),
            || format!("panel {title}: id {} missing or not unique", panel["id"]),
        );
        let g = &panel["gridPos"];
        p.check(
            g["w"]
                .as_u64()
                .is_some_and(|w| w > 0 && g["x"].as_u64().unwrap_or(99) + w <= 24)
                && g["h"].as_u64().is_some_and(|h| h > 0),
            || format!("panel {title}: gridPos {g} is outside the 24-column grid"),
        );
        check_ds(&mut p, &format!("panel {title}"), &panel["datasource"]);
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        p.check(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            || format!("panel {title}: a panel without a query"),
        );
        for t in &targets {
            check_ds(
                &mut p,
                &format!("panel {title} target {}", t["refId"]),
                &t["datasource"],
            );
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        check_ds(
            &mut p,
            &format!("variable {}", var["name"]),
            &var["datasource"],
        );
    }
    p.finish("Grafana dashboard")
}

// ---------------------------------------------------------------------------------------
// PromQL references and /metrics

/// What an expression refers to: metric names, label matchers `(metric, label, op,
/// value)`, and the labels of `by`/`without`/`on`/`ignoring` lists.
#[derive(Debug, Default)]
struct PromRefs {
    metrics: BTreeSet<String>,
    matchers: Vec<(String, String, String, String)>,
    grouping: BTreeSet<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The end (exclusive) of the string literal starting at `i`.
fn skip_string(c: &[char], i: usize) -> Result<usize, String> {
    let quote = c[i];
    let mut j = i + 1;
    while j < c.len() {
        if c[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if c[j] == quote {
            return Ok(j + 1);
        }
        j += 1;
    }
    Err("unterminated string".into())
}

fn read_ident(c: &[char], i: usize) -> (String, usize) {
    let mut j = i;
    while j < c.len() && is_ident(c[j]) {
        j += 1;
    }
    (c[i..j].iter().collect(), j)
}

fn skip_ws(c: &[char], mut i: usize) -> usize {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    i
}

/// The metrics, matchers and grouping labels of a PromQL expression (Grafana variables
/// such as `$instance` or `$__rate_interval` allowed). Not a full parser: enough to name
/// every series an expression selects.
fn promql_refs(expr: &str) -> Result<PromRefs, String> {
    let c: Vec<char> = expr.chars().collect();
    let mut refs = PromRefs::default();
    let mut last_metric: Option<String> = None;
    let mut depth = 0i32;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i)?;
            last_metric = None;
        } else if ch == '[' {
            let end = c[i..].iter().position(|&x| x == ']').ok_or("unclosed [")?;
            i += end + 1;
        } else if ch == '{' {
            let metric = last_metric.take().unwrap_or_default();
            i += 1;
            loop {
                i = skip_ws(&c, i);
                while i < c.len() && (c[i] == ',' || c[i].is_whitespace()) {
                    i += 1;
                }
                if i >= c.len() {
                    return Err("unclosed {".into());
                }
                if c[i] == '}' {
                    i += 1;
                    break;
                }
                if !is_ident_start(c[i]) {
                    return Err(format!("unexpected {:?} in a label matcher", c[i]));
                }
                let (label, j) = read_ident(&c, i);
                i = skip_ws(&c, j);
                let op: String = ["=~", "!~", "!=", "="]
                    .iter()
                    .find(|op| c[i..].starts_with(&op.chars().collect::<Vec<_>>()))
                    .ok_or(format!("no operator after label {label}"))?
                    .to_string();
                i = skip_ws(&c, i + op.len());
                if i >= c.len() || !matches!(c[i], '"' | '\'' | '`') {
                    return Err(format!("label {label}: the value must be a string"));
                }
                let end = skip_string(&c, i)?;
                let value: String = c[i + 1..end - 1].iter().collect();
                refs.matchers.push((metric.clone(), label, op, value));
                i = end;
            }
        } else if ch == '$' {
            i += 1;
            if i < c.len() && c[i] == '{' {
                i += c[i..].iter().position(|&x| x == '}').ok_or("unclosed ${")? + 1;
            } else {
                i = read_ident(&c, i).1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(ch) {
            let (word, j) = read_ident(&c, i);
            i = j;
            let next = c.get(skip_ws(&c, i)).copied();
            last_metric = None;
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    let open = skip_ws(&c, i);
                    let close = open
                        + c[open..]
                            .iter()
                            .position(|&x| x == ')')
                            .ok_or("unclosed (")?;
                    let list: String = c[open + 1..close].iter().collect();
                    refs.grouping.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = close + 1;
                }
            } else if next == Some('(')
                || AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                // A function, an aggregation or an operator keyword.
            } else {
                refs.metrics.insert(word.clone());
                last_metric = Some(word);
            }
        } else {
            match ch {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth < 0 {
                return Err("unbalanced )".into());
            }
            last_metric = None;
            i += 1;
        }
    }
    if depth != 0 {
        return Err("unbalanced (".into());
    }
    Ok(refs)
}

/// Grafana's `label_values(selector, label)` (or a plain expression).
fn query_refs(q: &str) -> Result<PromRefs, String> {
    let t = q.trim();
    if let Some(inner) = t
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (selector, label) = match inner.rsplit_once(',') {
            Some((sel, label)) => (sel, label),
            None => ("", inner),
        };
        let mut refs = promql_refs(selector)?;
        refs.grouping.insert(label.trim().to_string());
        return Ok(refs);
    }
    promql_refs(t)
}

/// `/metrics` text: `# TYPE` per family, and per sample name its labels and their values.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exposition {
    fn add(&mut self, text: &str) -> Check {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    self.types.insert(n.into(), t.into());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let c: Vec<char> = line.chars().collect();
            let (name, mut i) = read_ident(&c, 0);
            if name.is_empty() {
                return Err(format!("/metrics: bad line {line:?}"));
            }
            let labels = self.series.entry(name).or_default();
            if c.get(i) == Some(&'{') {
                i += 1;
                while i < c.len() && c[i] != '}' {
                    if c[i] == ',' || c[i].is_whitespace() {
                        i += 1;
                        continue;
                    }
                    let (label, j) = read_ident(&c, i);
                    if c.get(j) != Some(&'=') || c.get(j + 1) != Some(&'"') {
                        return Err(format!("/metrics: bad labels in {line:?}"));
                    }
                    let end =
                        skip_string(&c, j + 1).map_err(|e| format!("/metrics: {e} in {line:?}"))?;
                    let value: String = c[j + 2..end - 1].iter().collect();
                    labels.entry(label).or_default().insert(value);
                    i = end;
                }
            }
        }
        Ok(())
    }

    /// The histogram a `_bucket`/`_sum`/`_count` sample belongs to.
    fn histogram_of<'a>(&self, sample: &'a str) -> Option<&'a str> {
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            (self.types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
        })
    }
}

/// Every metric a query names is exported by the nodes (`up` is Prometheus's own), with
/// the labels and label values it matches or groups by; the labels Prometheus adds itself
/// (`scrape_labels`: job, instance, target labels, with their allowed values when known)
/// are allowed everywhere and must not collide with exported ones.
fn check_metric_refs(
    queries: &[(String, String)],
    expo: &Exposition,
    scrape_labels: &BTreeMap<String, BTreeSet<String>>,
) -> Check {
    let mut p = Problems::default();
    for (name, labels) in &expo.series {
        for l in labels.keys() {
            p.check(!scrape_labels.contains_key(l), || {
                format!("{name} exports label {l}, which Prometheus sets itself on scrape")
            });
        }
    }
    let none = BTreeMap::new();
    for (whence, q) in queries {
        let refs = match query_refs(q) {
            Ok(r) => r,
            Err(e) => {
                p.add(format!("{whence}: cannot read {q:?}: {e}"));
                continue;
            }
        };
        for m in &refs.metrics {
            if m == "up" {
                continue;
            }
            if !expo.series.contains_key(m) {
                let hint = match expo.types.get(m).map(String::as_str) {
                    Some("histogram") => {
                        format!(" ({m} is a histogram: use {m}_bucket, {m}_sum or {m}_count)")
                    }
                    _ => String::new(),
                };
                p.add(format!(
                    "{whence}: metric {m} is not in the nodes' /metrics{hint}  [in {q}]"
                ));
            } else if let Some(h) = expo.histogram_of(m) {
                p.check(expo.types.contains_key(h), || {
                    format!("{whence}: {m} has no histogram {h}")
                });
            }
        }
        let labels_of = |m: &str| expo.series.get(m).unwrap_or(&none);
        for (metric, label, op, value) in &refs.matchers {
            let variable = value.contains('$');
            if let Some(allowed) = scrape_labels.get(label) {
                p.check(
                    op != "=" || variable || allowed.is_empty() || allowed.contains(value),
                    || format!("{whence}: {label}=\"{value}\" is not one of {allowed:?}  [in {q}]"),
                );
            } else if metric.is_empty() || (!expo.series.contains_key(metric) && metric != "up") {
                // An unknown metric is reported above; `{__name__=...}` is not checked.
            } else if !labels_of(metric).contains_key(label) {
                p.add(format!(
                    "{whence}: {metric} has no label {label} (it has {:?})  [in {q}]",
                    labels_of(metric).keys().collect::<Vec<_>>()
                ));
            } else if op == "=" && !variable && !labels_of(metric)[label].contains(value) {
                p.add(format!(
                    "{whence}: {metric}{{{label}=\"{value}\"}} matches nothing; {label} is one of {:?}  [in {q}]",
                    labels_of(metric)[label]
                ));
            }
        }
        for g in &refs.grouping {
            let known = scrape_labels.contains_key(g)
                || refs.metrics.iter().any(|m| labels_of(m).contains_key(g));
            p.check(known, || {
                format!("{whence}: no metric of {q:?} has the label {g}")
            });
        }
    }
    p.finish("metric references")
}

/// The labels Prometheus adds on scrape, from the Prometheus configs: `job` (with the job
/// names), `instance`, and each static target label.
fn scrape_labels(configs: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    out.insert("instance".into(), BTreeSet::new());
    for cfg in configs {
        for job in cfg["scrape_configs"].as_array().into_iter().flatten() {
            if let Some(j) = job["job_name"].as_str() {
                out.entry("job".into()).or_default().insert(j.into());
            }
            for sc in job["static_configs"].as_array().into_iter().flatten() {
                for l in str_map(&sc["labels"]).keys() {
                    out.entry(l.clone()).or_default();
                }
            }
        }
    }
    out
}

fn prometheus_configs() -> Vec<(PathBuf, Value)> {
    [
        deploy_dir().join("prometheus.yml"),
        deploy_dir().join("compose/prometheus.yml"),
    ]
    .into_iter()
    .map(|p| {
        let v = load_yaml_one(&p);
        (p, v)
    })
    .collect()
}

/// Every query of the dashboard and of the Prometheus configs (rules, if any).
fn all_queries() -> Vec<(String, String)> {
    let mut out = dashboard_queries(&load_json(&deploy_dir().join("grafana/cookie-crud.json")));
    for (path, cfg) in prometheus_configs() {
        yaml_exprs(&cfg, &rel(&path), &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The tests

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

#[test]
fn kubernetes_manifests_fit_together() {
    let objects = k8s_objects();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in ["StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"] {
        assert!(kinds.contains(kind), "deploy/k8s has no {kind}: {kinds:?}");
    }
    check_kubernetes(&objects).unwrap_or_else(|e| panic!("{e}"));
    check_image_matches_pods(&dockerfile_text(), &objects).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn dockerfile_builds_the_workspace_and_runs_it_unprivileged() {
    let ignore = read(&root().join(".dockerignore"));
    check_dockerfile(&dockerfile_text(), &ignore, &root()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn compose_services_agree() {
    let compose = load_yaml_one(&deploy_dir().join("docker-compose.yml"));
    check_compose(&compose, &image_env(), &deploy_dir()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn local_prometheus_scrapes_the_cluster_start_nodes() {
    let cfg = load_yaml_one(&deploy_dir().join("prometheus.yml"));
    check_prometheus(&cfg, &local_cluster_targets(), "deploy/prometheus.yml")
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn dashboard_is_consistent_with_the_provisioning() {
    let dash = load_json(&deploy_dir().join("grafana/cookie-crud.json"));
    let uids = provisioned_datasource_uids();
    assert!(
        uids.contains("prometheus"),
        "provisioned data sources: {uids:?}"
    );
    check_dashboard(&dash, &uids).unwrap_or_else(|e| panic!("{e}"));
    // Every query at least reads as PromQL (the metric names are checked against a node).
    for (whence, q) in all_queries() {
        query_refs(&q).unwrap_or_else(|e| panic!("{whence}: {q:?}: {e}"));
    }
}

/// The binary takes the configuration each container gets: the compose services' and each
/// StatefulSet pod's (with its pod name as `HOSTNAME`).
#[test]
fn the_binary_accepts_every_container_environment() {
    let image = image_env();
    let compose = load_yaml_one(&deploy_dir().join("docker-compose.yml"));
    for (name, env) in compose_nodes(&compose, &image).unwrap() {
        config_accepted(&env).unwrap_or_else(|e| panic!("compose service {name}: {e}"));
    }
    let objects = k8s_objects();
    let replicas = objects_of(&objects, "StatefulSet")[0]["spec"]["replicas"]
        .as_u64()
        .unwrap_or(1);
    for ordinal in 0..replicas {
        config_accepted(&pod_environment(&objects, &image, ordinal))
            .unwrap_or_else(|e| panic!("StatefulSet pod {ordinal}: {e}"));
    }
}

async fn http_get(c: &Cluster, i: usize, path: &str) -> (u16, String) {
    let r = c
        .client
        .get(format!("{}{path}", c.url(i)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} on node{}: {e}", i + 1));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The probe paths of the StatefulSet answer 200 on real nodes, and every metric the
/// dashboard and Prometheus configs query is in their real `/metrics`. Three nodes, because
/// the peer, replication and forwarding series exist only in a cluster; the leader is
/// killed at the end so that forward errors are exported too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_answer_and_every_queried_metric_is_exported() {
    let objects = k8s_objects();
    let sts = objects_of(&objects, "StatefulSet")[0];
    let c0 = main_container(sts).unwrap();
    let live = c0["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let ready = c0["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = "/metrics";

    let mut c = Cluster::start(3, &format!("health_check_interval_ms = 200\n{FAST_RAFT}")).await;
    for i in 0..3 {
        let (status, body) = http_get(&c, i, &live).await;
        assert_eq!(status, 200, "liveness {live} on node{}: {body}", i + 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = http_get(&c, i, &ready).await;
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "readiness {ready} on node{}: {status} {body}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = http_get(&c, i, metrics).await;
        assert_eq!(status, 200, "{metrics} on node{}: {body}", i + 1);
    }

    // Requests, so that the per-request series exist: writes through a follower (forwarded)
    // and the leader, linearizable reads (a read index through the follower), hits, misses.
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    for (n, i) in [follower, leader].into_iter().enumerate() {
        let id = format!("deploy-{n}");
        let r = c.create(i, json!({"cookie": id, "user_id": 1})).await;
        assert_eq!(r.status, 201, "{}", r.text);
        let (status, body) = http_get(&c, i, "/cookies").await;
        assert_eq!(status, 200, "{body}");
        c.get(i, &id, "linearizable").await;
        c.get(i, &id, "linearizable").await;
        c.get(i, "absent", "local").await;
    }
    // The leader's per-peer series come with its health checks and replication.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, text) = http_get(&c, leader, metrics).await;
        if [
            "raft_peer_reachable{",
            "raft_replication_lag_entries{",
            "raft_peer_last_seen_age_seconds{",
        ]
        .iter()
        .all(|s| text.contains(s))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no per-peer series on the leader:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut expo = Exposition::default();
    for i in 0..3 {
        expo.add(&http_get(&c, i, metrics).await.1).unwrap();
    }
    // Forward errors: with the leader killed, the followers still forward to it at first.
    c.kill(leader);
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let writes = others.iter().map(|&i| {
        c.client
            .post(format!("{}/cookies", c.url(i)))
            .json(&json!({"cookie": format!("after-kill-{i}"), "user_id": 1}))
            .send()
    });
    let _ = futures::future::join_all(writes).await;
    for &i in &others {
        expo.add(&http_get(&c, i, metrics).await.1).unwrap();
    }

    let configs: Vec<Value> = prometheus_configs().into_iter().map(|(_, v)| v).collect();
    let queries = all_queries();
    assert!(queries.len() > 20, "only {} queries", queries.len());
    check_metric_refs(&queries, &expo, &scrape_labels(&configs)).unwrap_or_else(|e| {
        panic!(
            "{e}\nexported sample names: {:?}",
            expo.series.keys().collect::<Vec<_>>()
        )
    });
}

// ---------------------------------------------------------------------------------------
// The checks reject broken copies

fn find_mut<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && (name.is_empty() || name_of(o) == name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Replace the value at a JSON pointer, or add it as a new key of an existing object.
fn set(v: &mut Value, pointer: &str, new: Value) {
    let shown = v.to_string();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key.to_string(), new);
        }
        Some(Value::Array(a)) => a[key.parse::<usize>().unwrap()] = new,
        _ => panic!("no {parent} in {shown}"),
    }
}

type Breakage<T> = (&'static str, &'static str, fn(&mut T));

/// Each broken copy fails, and its message names the problem.
fn assert_rejected<T: Clone>(real: &T, check: impl Fn(&T) -> Check, cases: &[Breakage<T>]) {
    check(real).unwrap_or_else(|e| panic!("the real files must pass: {e}"));
    for (what, needle, break_it) in cases {
        let mut copy = real.clone();
        break_it(&mut copy);
        match check(&copy) {
            Ok(()) => panic!("a broken copy passed: {what}"),
            Err(e) => {
                assert!(
                    e.contains(needle),
                    "{what}: the message does not mention {needle:?}:\n{e}"
                );
                eprintln!("rejected as expected ({what}): {e}");
            }
        }
    }
}

#[test]
fn broken_kubernetes_manifests_are_rejected() {
    const C: &str = "/spec/template/spec/containers/0";
    let cases: &[Breakage<Vec<Value>>] = &[
        ("readiness probe on /readyz", "/readyz", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/readinessProbe/httpGet/path"),
                json!("/readyz"),
            )
        }),
        ("liveness probe on /ready", "livenessProbe path", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/livenessProbe/httpGet/path"),
                json!("/ready"),
            )
        }),
        ("container port 9090, listen 8080", "container port", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/ports/0/containerPort"),
                json!(9090),
            )
        }),
        (
            "readiness probe on a numeric wrong port",
            "readinessProbe port",
            |o| {
                set(
                    find_mut(o, "StatefulSet", ""),
                    &format!("{C}/readinessProbe/httpGet/port"),
                    json!(8081),
                )
            },
        ),
        ("listen port 9000", "COOKIE_CRUD_LISTEN", |o| {
            set(
                find_mut(o, "ConfigMap", ""),
                "/data/COOKIE_CRUD_LISTEN",
                json!("0.0.0.0:9000"),
            )
        }),
        (
            "peers service without publishNotReadyAddresses",
            "publishNotReadyAddresses",
            |o| {
                set(
                    find_mut(o, "Service", "cookie-crud-peers"),
                    "/spec/publishNotReadyAddresses",
                    json!(false),
                )
            },
        ),
        ("peers service with a cluster IP", "headless", |o| {
            find_mut(o, "Service", "cookie-crud-peers")["spec"]
                .as_object_mut()
                .unwrap()
                .remove("clusterIP");
        }),
        (
            "serviceName differs from the ConfigMap",
            "serviceName",
            |o| {
                set(
                    find_mut(o, "StatefulSet", ""),
                    "/spec/serviceName",
                    json!("cookie-crud-headless"),
                )
            },
        ),
        ("replicas 4, expected nodes 3", "replicas 4", |o| {
            set(find_mut(o, "StatefulSet", ""), "/spec/replicas", json!(4))
        }),
        ("ordered pod management", "podManagementPolicy", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                "/spec/podManagementPolicy",
                json!("OrderedReady"),
            )
        }),
        ("data mounted at /data", "COOKIE_CRUD_DATA_DIR", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/volumeMounts/0/mountPath"),
                json!("/data"),
            )
        }),
        (
            "a disruption budget of two of three",
            "loses the Raft majority",
            |o| {
                set(
                    find_mut(o, "PodDisruptionBudget", ""),
                    "/spec/maxUnavailable",
                    json!(2),
                )
            },
        ),
        (
            "a disruption budget over other pods",
            "PodDisruptionBudget",
            |o| {
                set(
                    find_mut(o, "PodDisruptionBudget", ""),
                    "/spec/selector/matchLabels",
                    json!({"app.kubernetes.io/name": "other"}),
                )
            },
        ),
        (
            "client service selecting other pods",
            "does not select the pods",
            |o| {
                set(
                    find_mut(o, "Service", "cookie-crud"),
                    "/spec/selector",
                    json!({"app": "cookie"}),
                )
            },
        ),
        ("expected nodes as a YAML number", "must be a string", |o| {
            set(
                find_mut(o, "ConfigMap", ""),
                "/data/COOKIE_CRUD_CLUSTER__EXPECTED_NODES",
                json!(3),
            )
        }),
        ("namespace not from the downward API", "fieldRef", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/env"),
                json!([]),
            )
        }),
        (
            "a manual member list next to discovery",
            "COOKIE_CRUD_NODES",
            |o| {
                set(
                    find_mut(o, "ConfigMap", ""),
                    "/data/COOKIE_CRUD_NODES",
                    json!("[{ id = 1, addr = \"a:8080\" }]"),
                )
            },
        ),
    ];
    assert_rejected(&k8s_objects(), |o| check_kubernetes(o), cases);
}

#[test]
fn broken_compose_and_prometheus_files_are_rejected() {
    let image = image_env();
    let compose = load_yaml_one(&deploy_dir().join("docker-compose.yml"));
    let dir = deploy_dir();
    let check = |c: &Value| check_compose(c, &image, &dir);
    let cases: &[Breakage<Value>] = &[
        (
            "node 3 listed on another port by node 2",
            "differs from the other services",
            |c| {
                set(
                c,
                "/services/cookie-crud-2/environment/COOKIE_CRUD_NODES",
                json!("[{ id = 1, addr = \"cookie-crud-1:8080\" }, { id = 2, addr = \"cookie-crud-2:8080\" }, { id = 3, addr = \"cookie-crud-3:8081\" }]"),
            )
            },
        ),
        ("two services with node id 1", "not unique", |c| {
            set(
                c,
                "/services/cookie-crud-3/environment/COOKIE_CRUD_NODE_ID",
                json!("1"),
            )
        }),
        ("a node listening on 9000", "its own member entry", |c| {
            set(
                c,
                "/services/cookie-crud-1/environment/COOKIE_CRUD_LISTEN",
                json!("0.0.0.0:9000"),
            )
        }),
        (
            "a port mapped to the wrong container port",
            "no published port",
            |c| set(c, "/services/cookie-crud-2/ports/0", json!("8082:8081")),
        ),
        ("two nodes sharing a volume", "shared", |c| {
            set(
                c,
                "/services/cookie-crud-2/volumes/0",
                json!("cookie-crud-1-data:/var/lib/cookie-crud"),
            )
        }),
        ("a missing Prometheus config", "does not exist", |c| {
            set(
                c,
                "/services/prometheus/volumes/0",
                json!("./compose/missing.yml:/etc/prometheus/prometheus.yml:ro"),
            )
        }),
        (
            "Prometheus given the local cluster's config",
            "targets",
            |c| {
                set(
                    c,
                    "/services/prometheus/volumes/0",
                    json!("./prometheus.yml:/etc/prometheus/prometheus.yml:ro"),
                )
            },
        ),
    ];
    assert_rejected(&compose, check, cases);

    let local = load_yaml_one(&deploy_dir().join("prometheus.yml"));
    let targets = local_cluster_targets();
    let cases: &[Breakage<Value>] = &[
        ("a target on 8084", "targets", |c| {
            set(
                c,
                "/scrape_configs/0/static_configs/2/targets/0",
                json!("127.0.0.1:8084"),
            )
        }),
        ("another job name", "cookie-crud-cluster", |c| {
            set(c, "/scrape_configs/0/job_name", json!("cookie-crud"))
        }),
        ("node labels swapped", "labelled node=node2", |c| {
            set(
                c,
                "/scrape_configs/0/static_configs/0/labels/node",
                json!("node2"),
            )
        }),
    ];
    assert_rejected(
        &local,
        |c| check_prometheus(c, &targets, "deploy/prometheus.yml"),
        cases,
    );
}

#[test]
fn broken_dockerfile_and_dashboard_are_rejected() {
    let ignore = read(&root().join(".dockerignore"));
    let repo = root();
    let cases: &[Breakage<String>] = &[
        ("EXPOSE 9090", "EXPOSE", |d| {
            *d = d.replace("EXPOSE 8080", "EXPOSE 9090")
        }),
        ("benches not copied", "benches", |d| {
            *d = d.replace("COPY benches ./benches\n", "")
        }),
        ("an old Rust", "rust-version", |d| {
            *d = d.replace("rust:1.95-bookworm", "rust:1.80-bookworm")
        }),
        ("running as root", "USER", |d| {
            *d = d.replace("USER 10001:10001", "USER root")
        }),
        ("a shell-form health check with curl", "HEALTHCHECK", |d| {
            *d = d.replace(
                r#"CMD ["cookie-crud", "healthcheck"]"#,
                "CMD curl -f http://localhost:8080/health",
            )
        }),
    ];
    assert_rejected(
        &dockerfile_text(),
        |d| check_dockerfile(d, &ignore, &repo),
        cases,
    );

    let uids = provisioned_datasource_uids();
    let dash = load_json(&deploy_dir().join("grafana/cookie-crud.json"));
    let cases: &[Breakage<Value>] = &[
        ("an unprovisioned data source", "data source", |d| {
            set(
                d,
                "/panels/1/datasource",
                json!({"type": "prometheus", "uid": "prom-main"}),
            )
        }),
        ("duplicate panel ids", "not unique", |d| {
            set(d, "/panels/2/id", json!(2))
        }),
        ("a panel wider than the grid", "gridPos", |d| {
            set(d, "/panels/1/gridPos/x", json!(20))
        }),
    ];
    assert_rejected(&dash, |d| check_dashboard(d, &uids), cases);
}

/// The metric check against a small fixed `/metrics` text: real names pass, misspelled
/// names, wrong label values, unknown labels and bare histogram names fail.
#[test]
fn broken_metric_references_are_rejected() {
    let mut expo = Exposition::default();
    expo.add(
        "# TYPE cache_hits_total counter\ncache_hits_total 3\n\
         # TYPE raft_state gauge\nraft_state{field=\"term\"} 2\nraft_state{field=\"committed_index\"} 9\n\
         # TYPE http_request_duration_seconds histogram\n\
         http_request_duration_seconds_bucket{endpoint=\"/cookies/{cookie}\",method=\"GET\",le=\"+Inf\"} 1\n\
         http_request_duration_seconds_sum{endpoint=\"/cookies/{cookie}\",method=\"GET\"} 0.1\n\
         http_request_duration_seconds_count{endpoint=\"/cookies/{cookie}\",method=\"GET\"} 1\n",
    )
    .unwrap();
    let labels = scrape_labels(&[load_yaml_one(&deploy_dir().join("prometheus.yml"))]);
    let q = |e: &str| vec![("test".to_string(), e.to_string())];
    let good = [
        "sum(rate(cache_hits_total{job=\"cookie-crud-cluster\", instance=~\"$instance\"}[$__rate_interval]))",
        "histogram_quantile(0.99, sum by (le, method, endpoint) (rate(http_request_duration_seconds_bucket[5m])))",
        "raft_state{field=\"committed_index\"} - ignoring(field) raft_state{field=\"term\"}",
        "label_values(up{job=\"cookie-crud-cluster\"}, instance)",
        "max by (node) (raft_state{field=\"term\"}) > bool 0",
    ];
    for e in good {
        check_metric_refs(&q(e), &expo, &labels).unwrap_or_else(|err| panic!("{e}: {err}"));
    }
    let bad = [
        ("rate(cache_hit_total[1m])", "cache_hit_total"),
        ("raft_state{field=\"commit_index\"}", "commit_index"),
        (
            "sum by (route) (rate(http_request_duration_seconds_count[1m]))",
            "route",
        ),
        ("raft_state{role=\"leader\"}", "no label role"),
        (
            "histogram_quantile(0.9, rate(http_request_duration_seconds[1m]))",
            "is a histogram",
        ),
        ("up{job=\"cookie-crud\"}", "cookie-crud-cluster"),
        ("sum(rate(cache_hits_total[1m])", "unbalanced"),
    ];
    for (e, needle) in bad {
        match check_metric_refs(&q(e), &expo, &labels) {
            Ok(()) => panic!("a broken query passed: {e}"),
            Err(err) => assert!(err.contains(needle), "{e}: {err}"),
        }
    }
}

/// The binary's own refusal, through the same helper the real environments pass.
#[test]
fn a_broken_container_environment_is_refused_by_the_binary() {
    let image = image_env();
    let objects = k8s_objects();
    let mut typo = pod_environment(&objects, &image, 0);
    let n = typo.remove("COOKIE_CRUD_CLUSTER__EXPECTED_NODES").unwrap();
    typo.insert("COOKIE_CRUD_CLUSTER__EXPECTED_NODE".into(), n);
    let err = config_accepted(&typo).expect_err("a misspelled key must be refused");
    assert!(err.contains("unknown field `expected_node`"), "{err}");
    let beyond = pod_environment(&objects, &image, 3);
    let err = config_accepted(&beyond).expect_err("pod cookie-crud-3 of 3 must be refused");
    assert!(err.contains("expected_nodes"), "{err}");
}
