//! The operator files under `deploy/` (Prometheus, Grafana, Dockerfile, docker compose,
//! Kubernetes) agree with each other, with `config/node*.toml`, and with real nodes:
//!
//! - every YAML and JSON file parses;
//! - the Kubernetes objects fit together (ports, probes, service names, replicas, data
//!   directory, disruption budget, selectors), and so do the compose services;
//! - the peer port (`COOKIE_CRUD_PEER_LISTEN`) is the one the nodes dial (headless service,
//!   discovery, compose members' `peer_addr`) and no client reaches it (client Service,
//!   published compose ports), while probes and scrapes use the client port;
//! - the binary accepts the environment each container gets (`cookie-crud healthcheck`
//!   exits 2 on a configuration it refuses);
//! - the probe paths answer 200 on real nodes, and every metric, label and label value the
//!   dashboard, the Prometheus configs and the alerting rules use appears in real
//!   `/metrics` output;
//! - both Prometheus configs load `deploy/alerts.yml`, and every alert in it is complete
//!   and has a unit test in `deploy/alerts.test.yml` (which `make deploy-check` runs with
//!   `promtool test rules`, beside the other real validators of `scripts/deploy-check.sh`);
//! - the checks reject deliberately broken copies of the real files.
//!
//! Each check is a function returning `Result<(), String>` listing every problem it found,
//! so the real files and the broken copies go through the same code.
//!
//! The checks live in `tests/deploy/`, one module per kind of file, each with the tests
//! of the real files it checks:
//!
//! - `files`: paths, loading, JSON helpers, and the `Problems` collector behind `Check`;
//! - `kubernetes`, `dockerfile`, `compose`, `prometheus`, `dashboard`: one per file set;
//! - `promql`: what each query refers to (read with `promql-parser`) and the `/metrics`
//!   exposition it is checked against;
//! - `nodes`: the binary and real nodes (container environments, probes, `/metrics`);
//! - `broken`: the checks reject deliberately broken copies of the real files.

mod common;

#[path = "deploy/broken.rs"]
mod broken;
#[path = "deploy/compose.rs"]
mod compose;
#[path = "deploy/dashboard.rs"]
mod dashboard;
#[path = "deploy/dockerfile.rs"]
mod dockerfile;
#[path = "deploy/files.rs"]
mod files;
#[path = "deploy/kubernetes.rs"]
mod kubernetes;
#[path = "deploy/nodes.rs"]
mod nodes;
#[path = "deploy/prometheus.rs"]
mod prometheus;
#[path = "deploy/promql.rs"]
mod promql;
