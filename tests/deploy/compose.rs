//! `deploy/docker-compose.yml`: three node services that agree on one member list (each
//! member at its service's client and peer ports), publish their client ports only, each
//! with a data volume of its own, and a Prometheus and a Grafana that find the nodes, the
//! dashboard and each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::dockerfile::image_env;
use crate::files::{
    binds_all_interfaces, default_peer_addr, deploy_dir, files_if_dir, files_under, host_of,
    is_yaml, load_yaml, load_yaml_one, parse_yaml, peer_listen, port_of, rel, s, str_map, Check,
    Env, Problems,
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

/// A member of `COOKIE_CRUD_NODES`, as the node reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub(crate) id: u64,
    /// Where clients reach it.
    pub(crate) addr: String,
    /// Where the other nodes reach it: `peer_addr`, else the node's default (`addr`'s host
    /// at port + 1000); so two lists that differ only in spelling out the default are equal.
    pub(crate) peer_addr: Option<String>,
    pub(crate) name: Option<String>,
}

/// A `COOKIE_CRUD_NODES` value, read as the node reads it: TOML.
pub(crate) fn parse_members(raw: &str) -> Result<Vec<Member>, String> {
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
            let peer_addr = match m.get("peer_addr") {
                None => default_peer_addr(addr),
                Some(v) => Some(
                    v.as_str()
                        .ok_or(format!("member {m}: peer_addr is not a string"))?
                        .to_string(),
                ),
            };
            let name = m.get("name").and_then(|v| v.as_str()).map(String::from);
            Ok(Member {
                id: id as u64,
                addr: addr.to_string(),
                peer_addr,
                name,
            })
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

/// A node service as the member lists see it: the name the other containers dial, and the
/// ports of its two listeners.
struct NodeService<'a> {
    name: &'a str,
    /// The name it is dialled at: `hostname`, else the service name.
    host: &'a str,
    id: Option<u64>,
    /// The client port (COOKIE_CRUD_LISTEN's).
    listen: Option<u16>,
    /// The peer port (COOKIE_CRUD_PEER_LISTEN's, else the node's default).
    peer: Option<u16>,
    /// COOKIE_CRUD_NODE_NAME, when set.
    node_name: Option<&'a str>,
}

impl<'a> NodeService<'a> {
    fn of(name: &'a str, svc: &'a Value, env: &'a Env) -> NodeService<'a> {
        NodeService {
            name,
            host: svc["hostname"].as_str().unwrap_or(name),
            id: env.get("COOKIE_CRUD_NODE_ID").and_then(|i| i.parse().ok()),
            listen: env.get("COOKIE_CRUD_LISTEN").and_then(|l| port_of(l)),
            peer: peer_listen(env).as_deref().and_then(port_of),
            node_name: env.get("COOKIE_CRUD_NODE_NAME").map(String::as_str),
        }
    }

    /// Whether a member address's host names this service on the compose network.
    fn answers_to(&self, host: &str) -> bool {
        host == self.name || host == self.host
    }
}

/// The service is built from deploy/Dockerfile with the repository root as context.
fn check_build(name: &str, svc: &Value, dir: &Path) -> Check {
    let build = &svc["build"];
    let context = dir.join(build["context"].as_str().unwrap_or("."));
    let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
    if context.join("Cargo.toml").exists()
        && dockerfile.canonicalize().ok() == dir.join("Dockerfile").canonicalize().ok()
    {
        Ok(())
    } else {
        Err(format!(
            "{name}: build {build} is not deploy/Dockerfile with the repository root as context"
        ))
    }
}

/// A node publishes its client port on a host port of its own, and nothing else: its peer
/// port stays on the compose network, where only the other nodes reach it (on the host,
/// the cluster secret would be all that guards Raft and forwarding; issue 13).
fn check_node_ports(
    p: &mut Problems,
    ns: &NodeService,
    svc: &Value,
    host_ports: &mut BTreeSet<u16>,
) {
    let name = ns.name;
    let ports = compose_ports(svc);
    p.check(
        ports.iter().any(|(_, c)| c.is_some() && *c == ns.listen),
        || {
            format!(
                "{name}: no published port maps to the listen port {:?}: {}",
                ns.listen, svc["ports"]
            )
        },
    );
    for (host, container) in ports {
        if container.is_some() && container == ns.listen {
            p.check(host.is_some_and(|h| host_ports.insert(h)), || {
                format!("{name}: host port {host:?} is missing or used twice")
            });
        } else if container.is_some() && container == ns.peer {
            p.add(format!(
                "{name}: publishes the peer port {container:?} on the host (host port \
                 {host:?}); only the other nodes may reach it"
            ));
        } else {
            p.add(format!(
                "{name}: publishes container port {container:?}, which is not its client port \
                 {:?}",
                ns.listen
            ));
        }
    }
    p.check(svc["network_mode"] != "host", || {
        format!("{name}: network_mode host would put the peer port on the host's network")
    });
    p.check(ns.peer.is_some() && ns.peer != ns.listen, || {
        format!(
            "{name}: the peer port {:?} is missing or is the client port: peers need a \
             listener of their own",
            ns.peer
        )
    });
}

/// Every member of one service's list is a node service, named as the compose network knows
/// it, with that service's node id, at its client port for `addr` and at its peer port for
/// `peer_addr` (given or derived): the port the other nodes dial.
fn check_members(p: &mut Problems, owner: &str, members: &[Member], nodes: &[NodeService]) {
    for m in members {
        let found = host_of(&m.addr).and_then(|h| nodes.iter().find(|n| n.answers_to(h)));
        let Some(ns) = found else {
            p.add(format!(
                "{owner}: member {} at {} is no node service",
                m.id, m.addr
            ));
            continue;
        };
        p.check(ns.id == Some(m.id), || {
            format!(
                "{owner}: member {} at {} is service {}, which is node {:?}",
                m.id, m.addr, ns.name, ns.id
            )
        });
        p.check(
            port_of(&m.addr).is_some() && port_of(&m.addr) == ns.listen,
            || {
                format!(
                    "{owner}: member {} at {} is not service {}'s client port {:?}",
                    m.id, m.addr, ns.name, ns.listen
                )
            },
        );
        let peer = m.peer_addr.as_deref();
        p.check(
            peer.and_then(host_of).is_some_and(|h| ns.answers_to(h))
                && peer.and_then(port_of).is_some()
                && peer.and_then(port_of) == ns.peer,
            || {
                format!(
                    "{owner}: member {}'s peer_addr {peer:?} is not service {}'s peer port {:?}",
                    m.id, ns.name, ns.peer
                )
            },
        );
    }
}

/// What Prometheus must scrape: each node service's client port, under its node name
/// (COOKIE_CRUD_NODE_NAME, else its member's name, else `node<id>`, as the node names
/// itself).
fn scrape_targets(nodes: &[NodeService], members: &[Member]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for ns in nodes {
        let (Some(id), Some(port)) = (ns.id, ns.listen) else {
            continue;
        };
        let member_name = members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.name.as_deref());
        let node_name = ns
            .node_name
            .or(member_name)
            .map_or_else(|| format!("node{id}"), String::from);
        out.insert(format!("{}:{port}", ns.host), node_name);
    }
    out
}

/// The three node services agree with each other (one member list, each member at its
/// service's client and peer ports), publish only their client ports, each keeps its data
/// in a volume of its own, and Prometheus and Grafana find the nodes, the dashboard and
/// each other.
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
    let mut lists: Vec<(&str, Vec<Member>)> = Vec::new();
    let mut node_services = Vec::new();
    let mut ids = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut data_volumes = BTreeSet::new();
    for (name, env) in &nodes {
        let svc = &services[name];
        p.merge(check_build(name, svc, dir));
        let ns = NodeService::of(name, svc, env);
        p.check(ns.id.is_some_and(|id| ids.insert(id)), || {
            format!(
                "{name}: COOKIE_CRUD_NODE_ID {:?} is missing or not unique",
                env.get("COOKIE_CRUD_NODE_ID")
            )
        });
        match env.get("COOKIE_CRUD_NODES").map(|raw| parse_members(raw)) {
            None => p.add(format!("{name}: no COOKIE_CRUD_NODES")),
            Some(Err(e)) => p.add(format!("{name}: {e}")),
            Some(Ok(members)) => {
                if let Some((_, f)) = lists.first() {
                    p.check(*f == members, || {
                        format!("{name}: COOKIE_CRUD_NODES {members:?} differs from the other services' {f:?}")
                    });
                }
                lists.push((name, members));
            }
        }
        check_node_ports(&mut p, &ns, svc, &mut host_ports);
        p.check(
            peer_listen(env).is_some_and(|l| binds_all_interfaces(&l)),
            || {
                format!(
                "{name}: its peer listener {:?} must listen on 0.0.0.0 (the other nodes dial it)",
                peer_listen(env)
            )
            },
        );
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
        node_services.push(ns);
    }
    for (name, members) in &lists {
        check_members(&mut p, name, members, &node_services);
    }
    let members = lists.first().map(|l| l.1.as_slice()).unwrap_or_default();
    let member_ids: BTreeSet<u64> = members.iter().map(|m| m.id).collect();
    p.check(
        member_ids == ids && member_ids.len() == members.len(),
        || format!("the services' node ids {ids:?} differ from the members' {member_ids:?}"),
    );
    let scrape_targets = scrape_targets(&node_services, members);

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
