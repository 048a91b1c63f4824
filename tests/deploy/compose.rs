//! `deploy/docker-compose.yml`: three node services that agree on one member list, each
//! with a data volume of its own, and a Prometheus and a Grafana that find the nodes, the
//! dashboard and each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::dockerfile::image_env;
use crate::files::{
    deploy_dir, files_if_dir, files_under, is_yaml, load_yaml, load_yaml_one, parse_yaml, port_of,
    rel, s, str_map, Check, Env, Problems,
};
use crate::prometheus::check_prometheus;

pub(crate) fn compose_env(svc: &Value) -> Result<BTreeMap<String, String>, String> {
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
pub(crate) fn compose_mounts(svc: &Value) -> Vec<(String, String)> {
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

pub(crate) fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// `(host, container)` ports of a service.
pub(crate) fn compose_ports(svc: &Value) -> Vec<(Option<u16>, Option<u16>)> {
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
pub(crate) fn parse_members(raw: &str) -> Result<Vec<(u64, String, Option<String>)>, String> {
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
pub(crate) fn compose_nodes(
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
pub(crate) fn check_compose(
    compose: &Value,
    image_env: &BTreeMap<String, String>,
    dir: &Path,
) -> Check {
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

#[test]
fn compose_services_agree() {
    let compose = load_yaml_one(&deploy_dir().join("docker-compose.yml"));
    check_compose(&compose, &image_env(), &deploy_dir()).unwrap_or_else(|e| panic!("{e}"));
}
