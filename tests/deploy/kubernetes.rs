//! The `deploy/k8s/` objects: a StatefulSet whose pods find each other through the
//! headless service the ConfigMap names, on their peer port, with probes, ports, storage, a
//! disruption budget and client services (on the client port only) that agree with the
//! node's configuration; and the environment each pod gets.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::dockerfile::{check_image_matches_pods, dockerfile_text};
use crate::files::{
    binds_all_interfaces, k8s_objects, name_of, objects_of, peer_listen, port_of, selects, str_map,
    Check, Env, Problems,
};

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

    // Ports: the client port (`http`, COOKIE_CRUD_LISTEN) takes the API, the probes and the
    // scrapes; the peer port (`peer`, COOKIE_CRUD_PEER_LISTEN) takes the other nodes only.
    let pod = Pod::of(&data, c, &pod_labels);
    check_pod_ports(&mut p, &data, &pod);
    check_probes(&mut p, c, &pod);
    check_resources(&mut p, c);
    check_spread(&mut p, &spec["template"]["spec"], &pod_labels);
    // Service links (on by default) put COOKIE_CRUD_SERVICE_HOST, COOKIE_CRUD_PORT=tcp://...
    // and the like, named after the Service cookie-crud, into every pod's environment,
    // where the node reads its configuration.
    p.check(
        spec["template"]["spec"]["enableServiceLinks"] == false,
        || {
            format!(
                "the pod spec's enableServiceLinks is {}, not false: the Service cookie-crud \
                 would put COOKIE_CRUD_PORT=tcp://... and other non-config COOKIE_CRUD_* \
                 variables into every pod",
                spec["template"]["spec"]["enableServiceLinks"]
            )
        },
    );

    // The peers' DNS names: <pod>.<serviceName>.<namespace>.svc...:<peer port> from the
    // headless service, which must publish pods before they are ready.
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
    // A pod's DNS name resolves to the pod's own IP, where no Service maps ports: the port
    // discovery dials must be the one the peer listener binds.
    let discovery_port = match var("COOKIE_CRUD_CLUSTER__PEER_PORT") {
        Some(v) => v.parse().ok(),
        None => pod.peer_listen,
    };
    p.check(
        discovery_port.is_some() && discovery_port == pod.peer,
        || {
            format!(
                "COOKIE_CRUD_CLUSTER__PEER_PORT {:?} (port {discovery_port:?}) is not the peer \
                 container port {:?}: discovery dials each pod's own IP on it",
                var("COOKIE_CRUD_CLUSTER__PEER_PORT"),
                pod.peer
            )
        },
    );
    let services = objects_of(objects, "Service");
    match services.iter().find(|s| name_of(s) == service_name) {
        None => p.add(format!(
            "no Service named {service_name:?} (the StatefulSet's serviceName)"
        )),
        Some(h) => check_peer_service(&mut p, h, &pod, discovery_port),
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

    // Clients: non-headless services over the same pods, on the client port only.
    let clients: Vec<&&Value> = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"] != "None")
        .collect();
    p.check(!clients.is_empty(), || {
        "no client (non-headless) Service".into()
    });
    for svc in clients {
        check_client_service(&mut p, svc, &pod);
    }

    // Scrape annotations, when present, point at the metrics on the client port.
    let ann = str_map(&spec["template"]["metadata"]["annotations"]);
    if ann.get("prometheus.io/scrape").is_some_and(|v| v == "true") {
        // Without it, pod discovery makes a target of every declared port, the peer port too.
        p.check(ann.contains_key("prometheus.io/port"), || {
            "annotation prometheus.io/scrape without prometheus.io/port: the peer port would \
             be scraped too"
                .into()
        });
    }
    if let Some(port) = ann.get("prometheus.io/port") {
        p.check(port.parse().ok() == pod.http, || {
            format!(
                "annotation prometheus.io/port {port} differs from the http container port {:?}",
                pod.http
            )
        });
    }
    if let Some(path) = ann.get("prometheus.io/path") {
        p.check(path == "/metrics", || {
            format!("annotation prometheus.io/path {path} is not /metrics")
        });
    }
    p.finish("Kubernetes manifests")
}

/// The pods as the Services and probes see them: their labels, and their two listeners as
/// the ConfigMap configures them and the container declares them.
struct Pod {
    labels: BTreeMap<String, String>,
    /// The container's ports, `(name, containerPort)`.
    declared: Vec<(Option<String>, u16)>,
    /// The port of COOKIE_CRUD_LISTEN: the client API, the probes, the scrapes.
    listen: Option<u16>,
    /// The container port named `http` (else the first).
    http: Option<u16>,
    /// The port of COOKIE_CRUD_PEER_LISTEN, else the node's default (listen + 1000).
    peer_listen: Option<u16>,
    /// The container port named `peer` (else another one at `peer_listen`).
    peer: Option<u16>,
}

impl Pod {
    fn of(data: &Env, c: &Value, labels: &BTreeMap<String, String>) -> Pod {
        let ports = container_ports(c);
        let named = |name: &str| {
            ports
                .iter()
                .find(|(n, _)| n.as_deref() == Some(name))
                .map(|(_, p)| *p)
        };
        let listen = data.get("COOKIE_CRUD_LISTEN").and_then(|l| port_of(l));
        let http = named("http").or(ports.first().map(|(_, p)| *p));
        let peer_listen = peer_listen(data).as_deref().and_then(port_of);
        let peer = named("peer").or_else(|| {
            ports
                .iter()
                .map(|(_, p)| Some(*p))
                .find(|p| *p == peer_listen && *p != http)
                .flatten()
        });
        Pod {
            labels: labels.clone(),
            declared: ports,
            listen,
            http,
            peer_listen,
            peer,
        }
    }
}

/// The container declares both listeners at the configured ports, as two ports, and both
/// bind every interface of the pod (the kubelet, the Services and the other pods dial its
/// IP).
fn check_pod_ports(p: &mut Problems, data: &Env, pod: &Pod) {
    let listen = data.get("COOKIE_CRUD_LISTEN");
    let peer = peer_listen(data);
    p.check(pod.listen.is_some(), || {
        format!("ConfigMap COOKIE_CRUD_LISTEN {listen:?} is not host:port")
    });
    p.check(pod.http.is_some() && pod.http == pod.listen, || {
        format!(
            "container port {:?} differs from the port of COOKIE_CRUD_LISTEN {:?}",
            pod.http, pod.listen
        )
    });
    p.check(
        pod.peer_listen.is_some() && pod.peer_listen != pod.listen,
        || {
            format!(
                "COOKIE_CRUD_PEER_LISTEN {peer:?} is not host:port, or is the client port: peers \
             need a listener of their own"
            )
        },
    );
    p.check(pod.peer.is_some() && pod.peer == pod.peer_listen, || {
        format!(
            "no peer container port at the port of COOKIE_CRUD_PEER_LISTEN {:?} (the container \
             declares {:?} as `peer`)",
            pod.peer_listen, pod.peer
        )
    });
    for (key, addr) in [
        ("COOKIE_CRUD_LISTEN", listen.cloned()),
        ("COOKIE_CRUD_PEER_LISTEN", peer),
    ] {
        p.check(addr.as_deref().is_some_and(binds_all_interfaces), || {
            format!("{key} {addr:?} must listen on 0.0.0.0: the pod's IP is dialled")
        });
    }
}

/// The probes ask the client port: the peer port answers only requests with the cluster
/// secret, which the kubelet does not have.
fn check_probes(p: &mut Problems, c: &Value, pod: &Pod) {
    check_startup_probe(p, c, pod);
    for (probe, want) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
        let get = &c[probe]["httpGet"];
        p.check(get["path"].as_str() == Some(want), || {
            format!("{probe} path is {} (want {want})", get["path"])
        });
        let port = resolve_port(&get["port"], &pod.declared);
        p.check(port.is_some() && port == pod.listen, || {
            format!(
                "{probe} port {} is {port:?}, not the client listen port {:?}",
                get["port"], pod.listen
            )
        });
    }
}

/// The startup probe: how long a starting pod may take before liveness counts. A node
/// opening a large store, or a new pod receiving a snapshot, is not live for a while.
pub(crate) const MIN_STARTUP_SECONDS: u64 = 300;

/// The startup probe asks what the liveness probe asks (`/health` on the client port), and
/// gives the pod at least [`MIN_STARTUP_SECONDS`] before the kubelet restarts it.
fn check_startup_probe(p: &mut Problems, c: &Value, pod: &Pod) {
    let probe = &c["startupProbe"];
    if probe.is_null() {
        p.add(format!(
            "no startupProbe: a pod catching up by snapshot needs time before liveness \
             counts (want /health on the client port, {MIN_STARTUP_SECONDS} s or more)"
        ));
        return;
    }
    let get = &probe["httpGet"];
    p.check(get["path"].as_str() == Some("/health"), || {
        format!("startupProbe path is {} (want /health)", get["path"])
    });
    let port = resolve_port(&get["port"], &pod.declared);
    p.check(port.is_some() && port == pod.listen, || {
        format!(
            "startupProbe port {} is {port:?}, not the client listen port {:?}",
            get["port"], pod.listen
        )
    });
    // Kubernetes' defaults: every 10 s, 3 failures.
    let period = probe["periodSeconds"].as_u64().unwrap_or(10);
    let failures = probe["failureThreshold"].as_u64().unwrap_or(3);
    p.check(period * failures >= MIN_STARTUP_SECONDS, || {
        format!(
            "startupProbe allows {} s (periodSeconds {period} x failureThreshold {failures}); \
             want at least {MIN_STARTUP_SECONDS} s",
            period * failures
        )
    });
}

/// A Kubernetes quantity (`1536Mi`, `1Gi`, `500M`, `1e9`, `2`) in bytes (or units).
pub(crate) fn quantity(v: &Value) -> Option<f64> {
    let text = match v {
        Value::Number(n) => return n.as_f64(),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    let split = text
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e')
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// The container's memory: a request and a limit, the request no more than the limit. A
/// limit it does not have would let one node's growth take its machine's memory; a request
/// it does not have would let the scheduler place it where the measured size does not fit.
fn check_resources(p: &mut Problems, c: &Value) {
    let res = &c["resources"];
    let limit = quantity(&res["limits"]["memory"]);
    let request = quantity(&res["requests"]["memory"]);
    p.check(limit.is_some(), || {
        format!(
            "container {} has no memory limit (resources.limits.memory: {})",
            c["name"], res["limits"]["memory"]
        )
    });
    p.check(request.is_some(), || {
        format!(
            "container {} has no memory request (resources.requests.memory: {})",
            c["name"], res["requests"]["memory"]
        )
    });
    if let (Some(l), Some(r)) = (limit, request) {
        p.check(r <= l, || {
            format!(
                "memory request {} is above the limit {}",
                res["requests"]["memory"], res["limits"]["memory"]
            )
        });
    }
}

/// The pods spread over machines (a preferred anti-affinity by host name) and zones (a
/// topology spread that still schedules when it cannot), each selecting these pods.
fn check_spread(p: &mut Problems, pod_spec: &Value, pod_labels: &BTreeMap<String, String>) {
    let anti = pod_spec["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| &t["podAffinityTerm"])
        .chain(
            pod_spec["affinity"]["podAntiAffinity"]
                ["requiredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .any(|term| {
            term["topologyKey"] == "kubernetes.io/hostname"
                && selects(&str_map(&term["labelSelector"]["matchLabels"]), pod_labels)
        });
    p.check(anti, || {
        format!(
            "no podAntiAffinity term on kubernetes.io/hostname selecting the pods \
             {pod_labels:?}: two members may share a machine"
        )
    });
    let spread = pod_spec["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            t["topologyKey"] == "topology.kubernetes.io/zone"
                && selects(&str_map(&t["labelSelector"]["matchLabels"]), pod_labels)
        });
    p.check(spread, || {
        format!(
            "no topologySpreadConstraints on topology.kubernetes.io/zone selecting the pods \
             {pod_labels:?}"
        )
    });
}

/// `(port, container port it reaches)` of each port of a Service.
fn service_targets(
    svc: &Value,
    ports: &[(Option<String>, u16)],
) -> Vec<(Option<u16>, Option<u16>)> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|sp| {
            let port = sp["port"].as_u64().and_then(|n| u16::try_from(n).ok());
            let target = match &sp["targetPort"] {
                Value::Null => port,
                t => resolve_port(t, ports),
            };
            (port, target)
        })
        .collect()
}

/// The headless service the pods' DNS names come from: published before the pods are
/// ready, over these pods, with the port discovery dials, and for peers only.
fn check_peer_service(p: &mut Problems, h: &Value, pod: &Pod, discovery_port: Option<u16>) {
    let name = name_of(h);
    let hs = &h["spec"];
    p.check(hs["clusterIP"].as_str() == Some("None"), || {
        format!(
            "Service {name}: clusterIP is {}, not None (headless)",
            hs["clusterIP"]
        )
    });
    p.check(hs["publishNotReadyAddresses"] == true, || {
        format!(
            "Service {name}: publishNotReadyAddresses must be true (nodes resolve each other \
             before /ready, which needs a leader)"
        )
    });
    p.check(selects(&str_map(&hs["selector"]), &pod.labels), || {
        format!(
            "Service {name}: selector {} does not select the pods",
            hs["selector"]
        )
    });
    let targets = service_targets(h, &pod.declared);
    p.check(
        targets
            .iter()
            .any(|&(port, target)| port == discovery_port && target == pod.peer),
        || {
            format!(
                "Service {name}: no port {discovery_port:?} reaching the peer container port \
                 {:?}: {}",
                pod.peer, hs["ports"]
            )
        },
    );
    // (Without a peer container port, that is reported once, with the container's ports.)
    for (port, target) in targets.into_iter().filter(|_| pod.peer.is_some()) {
        p.check(target == pod.peer, || {
            format!(
                "Service {name}: port {port:?} reaches container port {target:?}, not the peer \
                 container port {:?} (the headless service is the peers'; clients use the \
                 client Service)",
                pod.peer
            )
        });
    }
}

/// A client Service selects the pods and reaches their client port only: the peer port
/// behind a client Service would hand clients the Raft and forwarding routes, which only the
/// cluster secret guards (issue 13, docs/security.md).
fn check_client_service(p: &mut Problems, svc: &Value, pod: &Pod) {
    let name = name_of(svc);
    p.check(
        selects(&str_map(&svc["spec"]["selector"]), &pod.labels),
        || {
            format!(
                "Service {name}: selector {} does not select the pods {:?}",
                svc["spec"]["selector"], pod.labels
            )
        },
    );
    let targets = service_targets(svc, &pod.declared);
    p.check(!targets.is_empty(), || format!("Service {name}: no ports"));
    for (port, target) in targets {
        if target.is_some() && target == pod.peer {
            p.add(format!(
                "Service {name}: port {port:?} exposes the peer port {target:?} to clients; \
                 only peers may reach it (issue 13, docs/security.md)"
            ));
        } else {
            p.check(target.is_some() && target == pod.http, || {
                format!(
                    "Service {name}: port {port:?} reaches container port {target:?}, not the \
                     http container port {:?}",
                    pod.http
                )
            });
        }
    }
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
