//! The checks reject deliberately broken copies of the real files: each copy goes through
//! the same check as the real file, and the check's message must name the problem.

use serde_json::{json, Value};

use crate::compose::check_compose;
use crate::dashboard::{check_dashboard, provisioned_datasource_uids};
use crate::dockerfile::{check_dockerfile, check_image_matches_pods, dockerfile_text, image_env};
use crate::files::{deploy_dir, k8s_objects, load_json, load_yaml_one, name_of, read, root, Check};
use crate::kubernetes::{check_kubernetes, pod_environment};
use crate::nodes::config_accepted;
use crate::prometheus::{check_prometheus, local_cluster_targets};
use crate::promql::{check_metric_refs, scrape_labels, Exposition};

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
    let key = key.replace("~1", "/").replace("~0", "~");
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key, new);
        }
        Some(Value::Array(a)) => a[key.parse::<usize>().unwrap()] = new,
        _ => panic!("no {parent} in {shown}"),
    }
}

/// Append to the array at a JSON pointer.
fn push(v: &mut Value, pointer: &str, new: Value) {
    let shown = v.to_string();
    match v.pointer_mut(pointer) {
        Some(Value::Array(a)) => a.push(new),
        _ => panic!("no array {pointer} in {shown}"),
    }
}

/// Remove the value at a JSON pointer (a key of an object or an element of an array).
fn remove(v: &mut Value, pointer: &str) {
    let shown = v.to_string();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    let gone = match v.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&key).is_some(),
        Some(Value::Array(a)) => {
            let i: usize = key.parse().unwrap();
            (i < a.len()).then(|| a.remove(i)).is_some()
        }
        _ => false,
    };
    assert!(gone, "no {pointer} in {shown}");
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
        // The peer listener: its own container port, reached through the headless service
        // only, never through the client Service (issue 13).
        (
            "the peer port also on the client Service",
            "exposes the peer port",
            |o| {
                push(
                    find_mut(o, "Service", "cookie-crud"),
                    "/spec/ports",
                    json!({"name": "peer", "port": 9080, "targetPort": "peer"}),
                )
            },
        ),
        (
            "the client Service on the peer port by number",
            "exposes the peer port",
            |o| {
                set(
                    find_mut(o, "Service", "cookie-crud"),
                    "/spec/ports/0",
                    json!({"name": "http", "port": 8080, "targetPort": 9080}),
                )
            },
        ),
        (
            "the headless service on the client port",
            "reaching the peer container port",
            |o| {
                set(
                    find_mut(o, "Service", "cookie-crud-peers"),
                    "/spec/ports/0",
                    json!({"name": "http", "port": 8080, "targetPort": "http"}),
                )
            },
        ),
        (
            "the headless service on both ports",
            "not the peer container port",
            |o| {
                push(
                    find_mut(o, "Service", "cookie-crud-peers"),
                    "/spec/ports",
                    json!({"name": "http", "port": 8080, "targetPort": "http"}),
                )
            },
        ),
        ("no peer container port", "no peer container port", |o| {
            remove(find_mut(o, "StatefulSet", ""), &format!("{C}/ports/1"))
        }),
        (
            "the peer container port not at COOKIE_CRUD_PEER_LISTEN",
            "no peer container port",
            |o| {
                set(
                    find_mut(o, "StatefulSet", ""),
                    &format!("{C}/ports/1/containerPort"),
                    json!(9081),
                )
            },
        ),
        (
            "the peer listener on the client port",
            "is the client port",
            |o| {
                set(
                    find_mut(o, "ConfigMap", ""),
                    "/data/COOKIE_CRUD_PEER_LISTEN",
                    json!("0.0.0.0:8080"),
                )
            },
        ),
        (
            "the peer listener on loopback",
            "must listen on 0.0.0.0",
            |o| {
                set(
                    find_mut(o, "ConfigMap", ""),
                    "/data/COOKIE_CRUD_PEER_LISTEN",
                    json!("127.0.0.1:9080"),
                )
            },
        ),
        (
            "discovery dialling the client port",
            "COOKIE_CRUD_CLUSTER__PEER_PORT",
            |o| {
                set(
                    find_mut(o, "ConfigMap", ""),
                    "/data/COOKIE_CRUD_CLUSTER__PEER_PORT",
                    json!("8080"),
                )
            },
        ),
        (
            "the readiness probe on the peer port",
            "readinessProbe port",
            |o| {
                set(
                    find_mut(o, "StatefulSet", ""),
                    &format!("{C}/readinessProbe/httpGet/port"),
                    json!("peer"),
                )
            },
        ),
        ("scrapes on the peer port", "prometheus.io/port", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                "/spec/template/metadata/annotations/prometheus.io~1port",
                json!("9080"),
            )
        }),
        (
            "scrapes without a port, so on both",
            "without prometheus.io/port",
            |o| {
                remove(
                    find_mut(o, "StatefulSet", ""),
                    "/spec/template/metadata/annotations/prometheus.io~1port",
                )
            },
        ),
        // Issue 15: a startup probe, a memory request and limit, spread over machines and
        // zones.
        ("no startup probe", "no startupProbe", |o| {
            remove(find_mut(o, "StatefulSet", ""), &format!("{C}/startupProbe"))
        }),
        ("a startup probe of 30 s", "startupProbe allows 30 s", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/startupProbe/failureThreshold"),
                json!(3),
            )
        }),
        (
            "a startup probe on the peer port",
            "startupProbe port",
            |o| {
                set(
                    find_mut(o, "StatefulSet", ""),
                    &format!("{C}/startupProbe/httpGet/port"),
                    json!("peer"),
                )
            },
        ),
        ("a startup probe on /ready", "startupProbe path", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/startupProbe/httpGet/path"),
                json!("/ready"),
            )
        }),
        ("no memory limit", "no memory limit", |o| {
            remove(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/resources/limits/memory"),
            )
        }),
        ("a memory request over the limit", "above the limit", |o| {
            set(
                find_mut(o, "StatefulSet", ""),
                &format!("{C}/resources/requests/memory"),
                json!("2Gi"),
            )
        }),
        ("no anti-affinity", "podAntiAffinity", |o| {
            remove(
                find_mut(o, "StatefulSet", ""),
                "/spec/template/spec/affinity",
            )
        }),
        (
            "an anti-affinity selecting other pods",
            "podAntiAffinity",
            |o| {
                set(
                    find_mut(o, "StatefulSet", ""),
                    "/spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/0/podAffinityTerm/labelSelector/matchLabels",
                    json!({"app.kubernetes.io/name": "something-else"}),
                )
            },
        ),
        ("service links on", "enableServiceLinks", |o| {
            remove(
                find_mut(o, "StatefulSet", ""),
                "/spec/template/spec/enableServiceLinks",
            )
        }),
        ("no zone spread", "topology.kubernetes.io/zone", |o| {
            remove(
                find_mut(o, "StatefulSet", ""),
                "/spec/template/spec/topologySpreadConstraints",
            )
        }),
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
                    json!(members(&[
                        ("1", "cookie-crud-1:8080", "cookie-crud-1:9080"),
                        ("2", "cookie-crud-2:8080", "cookie-crud-2:9080"),
                        ("3", "cookie-crud-3:8081", "cookie-crud-3:9080"),
                    ])),
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
        ("a node listening on 9000", "client port", |c| {
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
        // The peer listener: published nowhere, and each member's peer_addr is its
        // service's peer port.
        ("a published peer port", "publishes the peer port", |c| {
            push(c, "/services/cookie-crud-1/ports", json!("9081:9080"))
        }),
        (
            "a peer port published on a random host port",
            "publishes the peer port",
            |c| push(c, "/services/cookie-crud-3/ports", json!("9080")),
        ),
        ("host networking", "network_mode", |c| {
            set(c, "/services/cookie-crud-2/network_mode", json!("host"))
        }),
        (
            "every list names node 2's peer_addr on the wrong port",
            "peer_addr",
            |c| {
                for n in 1..=3 {
                    set(
                        c,
                        &format!("/services/cookie-crud-{n}/environment/COOKIE_CRUD_NODES"),
                        json!(members(&[
                            ("1", "cookie-crud-1:8080", "cookie-crud-1:9080"),
                            ("2", "cookie-crud-2:8080", "cookie-crud-2:9081"),
                            ("3", "cookie-crud-3:8080", "cookie-crud-3:9080"),
                        ])),
                    )
                }
            },
        ),
        (
            "every list names node 3's peer_addr at node 1",
            "peer_addr",
            |c| {
                for n in 1..=3 {
                    set(
                        c,
                        &format!("/services/cookie-crud-{n}/environment/COOKIE_CRUD_NODES"),
                        json!(members(&[
                            ("1", "cookie-crud-1:8080", "cookie-crud-1:9080"),
                            ("2", "cookie-crud-2:8080", "cookie-crud-2:9080"),
                            ("3", "cookie-crud-3:8080", "cookie-crud-1:9080"),
                        ])),
                    )
                }
            },
        ),
        (
            "a node whose peer listener moved, the members still at 9080",
            "peer_addr",
            |c| {
                set(
                    c,
                    "/services/cookie-crud-1/environment/COOKIE_CRUD_PEER_LISTEN",
                    json!("0.0.0.0:9090"),
                )
            },
        ),
        (
            "a node whose peer listener is its client port",
            "is the client port",
            |c| {
                set(
                    c,
                    "/services/cookie-crud-2/environment/COOKIE_CRUD_PEER_LISTEN",
                    json!("0.0.0.0:8080"),
                )
            },
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

/// The Kubernetes checks read the listeners from the ConfigMap; the image's ENV under it
/// must agree.
#[test]
fn an_image_that_moves_the_pods_listeners_is_rejected() {
    let cases: &[Breakage<(String, Vec<Value>)>] = &[(
        "the ConfigMap leaves the peer listener to an image that moved it",
        "COOKIE_CRUD_PEER_LISTEN",
        |(d, o)| {
            *d = d.replace(
                "COOKIE_CRUD_PEER_LISTEN=0.0.0.0:9080",
                "COOKIE_CRUD_PEER_LISTEN=0.0.0.0:9443",
            );
            remove(
                find_mut(o, "ConfigMap", ""),
                "/data/COOKIE_CRUD_PEER_LISTEN",
            );
        },
    )];
    assert_rejected(
        &(dockerfile_text(), k8s_objects()),
        |(d, o)| check_image_matches_pods(d, o),
        cases,
    );
}

/// A `COOKIE_CRUD_NODES` value of `(id, addr, peer_addr)`.
fn members(list: &[(&str, &str, &str)]) -> String {
    let entries: Vec<String> = list
        .iter()
        .map(|(id, addr, peer)| {
            format!("{{ id = {id}, addr = \"{addr}\", peer_addr = \"{peer}\" }}")
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

/// Members that leave `peer_addr` to the node's default (port + 1000) pass when that
/// default is where each node's peer listener is, and fail when it is not.
#[test]
fn compose_members_may_leave_peer_addr_to_the_default() {
    let image = image_env();
    let dir = deploy_dir();
    let mut compose = load_yaml_one(&dir.join("docker-compose.yml"));
    let plain =
        "[{ id = 1, addr = \"cookie-crud-1:8080\" }, { id = 2, addr = \"cookie-crud-2:8080\" }, \
                 { id = 3, addr = \"cookie-crud-3:8080\" }]";
    for n in 1..=3 {
        set(
            &mut compose,
            &format!("/services/cookie-crud-{n}/environment/COOKIE_CRUD_NODES"),
            json!(plain),
        );
    }
    check_compose(&compose, &image, &dir).unwrap_or_else(|e| panic!("{e}"));
    set(
        &mut compose,
        "/services/cookie-crud-3/environment/COOKIE_CRUD_PEER_LISTEN",
        json!("0.0.0.0:9443"),
    );
    let err = check_compose(&compose, &image, &dir).expect_err("a peer port off the default");
    assert!(err.contains("member 3's peer_addr"), "{err}");
}

#[test]
fn broken_dockerfile_and_dashboard_are_rejected() {
    let ignore = read(&root().join(".dockerignore"));
    let repo = root();
    let cases: &[Breakage<String>] = &[
        ("EXPOSE 9090", "EXPOSE", |d| {
            *d = d.replace("EXPOSE 8080 9080", "EXPOSE 9090 9080")
        }),
        ("the peer port not exposed", "EXPOSE", |d| {
            *d = d.replace("EXPOSE 8080 9080", "EXPOSE 8080")
        }),
        (
            "the peer listener on loopback",
            "COOKIE_CRUD_PEER_LISTEN",
            |d| {
                *d = d.replace(
                    "COOKIE_CRUD_PEER_LISTEN=0.0.0.0:9080",
                    "COOKIE_CRUD_PEER_LISTEN=127.0.0.1:9080",
                )
            },
        ),
        (
            "the peer listener on the client port",
            "is also the client port",
            |d| {
                *d = d.replace(
                    "COOKIE_CRUD_PEER_LISTEN=0.0.0.0:9080",
                    "COOKIE_CRUD_PEER_LISTEN=0.0.0.0:8080",
                )
            },
        ),
        ("benches not copied", "benches", |d| {
            *d = d.replace("COPY benches ./benches\n", "")
        }),
        ("no patched openraft", "vendor/openraft", |d| {
            *d = d.replace("COPY vendor ./vendor\n", "")
        }),
        ("no OpenAPI document", "docs/openapi.yaml", |d| {
            *d = d.replace("COPY docs/openapi.yaml ./docs/openapi.yaml\n", "")
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
    // A pod beyond the initial members is accepted now: it joins (scaling up).
    let beyond = pod_environment(&objects, &image, 3);
    assert!(
        config_accepted(&beyond).is_ok(),
        "pod cookie-crud-3 of 3 must be accepted"
    );
    let mut nameless = pod_environment(&objects, &image, 0);
    nameless.insert("HOSTNAME".into(), "cookiebox".into());
    let err = config_accepted(&nameless).expect_err("a pod name without an ordinal");
    assert!(err.contains("instance_id"), "{err}");
}
