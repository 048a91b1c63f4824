//! The checks reject deliberately broken copies of the real files: each copy goes through
//! the same check as the real file, and the check's message must name the problem.

use serde_json::{json, Value};

use crate::compose::check_compose;
use crate::dashboard::{check_dashboard, provisioned_datasource_uids};
use crate::dockerfile::{check_dockerfile, dockerfile_text, image_env};
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
