//! The Grafana dashboard: unique panel ids on the grid, a query in each panel, and every
//! data source the `prometheus` variable or a provisioned one. Its queries are checked
//! against real nodes in `promql` and `nodes`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::files::{deploy_dir, files_under, is_yaml, load_json, load_yaml, Check, Problems};
use crate::promql::{all_queries, query_refs};

pub(crate) fn dashboard_panels(v: &Value, out: &mut Vec<Value>) {
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p.clone());
        dashboard_panels(p, out);
    }
}

/// Every query of a dashboard: each panel target's `expr`, and the templating queries
/// (`label_values(...)` included), with where they are, for messages.
pub(crate) fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
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
pub(crate) fn check_dashboard(dash: &Value, provisioned: &BTreeSet<String>) -> Check {
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

/// The uids of the data sources provisioned for Grafana.
pub(crate) fn provisioned_datasource_uids() -> BTreeSet<String> {
    files_under(&deploy_dir().join("grafana/provisioning/datasources"))
        .iter()
        .filter(|f| is_yaml(f))
        .flat_map(|f| load_yaml(f))
        .flat_map(|d| d["datasources"].as_array().cloned().unwrap_or_default())
        .filter_map(|ds| ds["uid"].as_str().map(String::from))
        .collect()
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
