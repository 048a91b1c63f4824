//! The `deploy/k8s/` objects: a StatefulSet whose pods find each other through the
//! headless service the ConfigMap names, with probes, ports, storage, a disruption budget
//! and client services that agree with the node's configuration; and the environment each
//! pod gets.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::dockerfile::{check_image_matches_pods, dockerfile_text};
use crate::files::{k8s_objects, name_of, objects_of, port_of, selects, str_map, Check, Problems};

/// `(name, containerPort)` of a container's ports.
pub(crate) fn container_ports(c: &Value) -> Vec<(Option<String>, u16)> {
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
pub(crate) fn resolve_port(v: &Value, ports: &[(Option<String>, u16)]) -> Option<u16> {
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
pub(crate) fn main_container(sts: &Value) -> Option<&Value> {
    let cs = sts["spec"]["template"]["spec"]["containers"].as_array()?;
    cs.iter()
        .find(|c| c["name"].as_str() == Some(name_of(sts)))
        .or_else(|| cs.first())
}

/// The ConfigMap the container takes its environment from.
pub(crate) fn env_config_map<'a>(objects: &'a [Value], container: &Value) -> Option<&'a Value> {
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
pub(crate) fn check_kubernetes(objects: &[Value]) -> Check {
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
/// the container's `env` (the namespace as "default", a Secret's key as a placeholder), and
/// `HOSTNAME` = the pod name.
pub(crate) fn pod_environment(
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
        } else if e["valueFrom"]["secretKeyRef"]["key"].is_string() {
            // Made by the operator (deploy/README.md); any value will do here.
            env.insert(name, "from-a-secret".into());
        }
    }
    env.insert("HOSTNAME".into(), format!("{}-{ordinal}", name_of(sts)));
    env
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
