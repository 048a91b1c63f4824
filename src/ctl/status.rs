//! `cookie-crud ctl status`: every member, as it sees itself, in one table.
//!
//! Each endpoint given, and every member the first answering one names (so one endpoint is
//! enough), is asked `GET /cluster` concurrently. The lag of a member is the leader's: how
//! far behind the leader's last log index its matched index is.

use std::collections::BTreeMap;

use futures::future::join_all;
use serde_json::Value;

use super::client::{describe, normalize, Call, Client, CtlError};

/// One row of the table.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Row {
    pub endpoint: String,
    pub id: Option<u64>,
    pub name: String,
    pub role: String,
    pub voter: Option<bool>,
    pub term: Option<u64>,
    pub leader: Option<String>,
    pub last_log: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub lag: Option<u64>,
    pub reachable: bool,
    pub error: Option<String>,
}

fn u(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// The endpoints to ask: the ones given, then the members the first answer names.
async fn endpoints(client: &Client) -> Vec<String> {
    let mut out: Vec<String> = client.target.endpoints.clone();
    let tls = out.iter().any(|e| e.starts_with("https://"));
    for e in client.target.endpoints.clone() {
        let Ok(a) = client.once(&e, &Call::get("/cluster")).await else {
            continue;
        };
        let Ok(v) = a.json() else { continue };
        for m in v["members"].as_array().into_iter().flatten() {
            if let Some(addr) = m["addr"].as_str() {
                let url = normalize(addr, tls);
                if !out.contains(&url) {
                    out.push(url);
                }
            }
        }
        break;
    }
    out
}

/// Ask every member; rows in member id order, unreachable ones last.
pub async fn rows(client: &Client) -> Vec<Row> {
    let targets = endpoints(client).await;
    let answers = join_all(targets.iter().map(|e| async move {
        let r = client.once(e, &Call::get("/cluster")).await;
        (e.clone(), r)
    }))
    .await;
    let mut seen: BTreeMap<u64, Row> = BTreeMap::new();
    let mut down = Vec::new();
    let mut lag: BTreeMap<u64, u64> = BTreeMap::new();
    let mut leader_id = None;
    for (endpoint, answer) in answers {
        // A node that answers 401 or 403 is up, but will not tell this token (`/cluster`
        // needs the admin role): "refused", not "unreachable".
        let v = match answer
            .map_err(|e| ("unreachable", describe(&e)))
            .and_then(|a| {
                if a.status.is_success() {
                    a.json().map_err(|e| ("unreachable", e.to_string()))
                } else {
                    let role = match CtlError::from_answer(&a) {
                        CtlError::Unauthorized(_) => "refused",
                        _ => "unreachable",
                    };
                    Err((role, CtlError::from_answer(&a).to_string()))
                }
            }) {
            Ok(v) => v,
            Err((role, e)) => {
                down.push(Row {
                    endpoint,
                    role: role.into(),
                    error: Some(e),
                    ..Row::default()
                });
                continue;
            }
        };
        let Some(id) = u(&v, "node_id") else { continue };
        if v["role"] == "leader" {
            leader_id = Some(id);
            lag.insert(id, 0);
            for p in v["replication"].as_array().into_iter().flatten() {
                if let (Some(pid), Some(l)) = (u(p, "id"), u(p, "lag")) {
                    lag.insert(pid, l);
                }
            }
        }
        let voter = v["voters"]
            .as_array()
            .map(|vs| vs.iter().any(|x| x.as_u64() == Some(id)));
        seen.entry(id).or_insert(Row {
            endpoint,
            id: Some(id),
            name: s(&v, "node").unwrap_or_default(),
            role: s(&v, "role").unwrap_or_default(),
            voter,
            term: u(&v, "term"),
            leader: s(&v, "leader_name"),
            last_log: u(&v, "last_log_index"),
            committed: u(&v, "committed"),
            applied: u(&v, "last_applied"),
            lag: None,
            reachable: true,
            error: None,
        });
    }
    let mut out: Vec<Row> = seen
        .into_values()
        .map(|mut r| {
            if leader_id.is_some() {
                r.lag = r.id.and_then(|id| lag.get(&id).copied());
            }
            r
        })
        .collect();
    out.extend(down);
    out
}

fn cell(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// The rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "ENDPOINT",
        "ID",
        "NAME",
        "ROLE",
        "VOTER",
        "TERM",
        "LEADER",
        "LAST LOG",
        "COMMITTED",
        "APPLIED",
        "LAG",
        "REACHABLE",
    ];
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.endpoint.clone(),
                cell(r.id),
                if r.name.is_empty() {
                    "-".into()
                } else {
                    r.name.clone()
                },
                r.role.clone(),
                r.voter
                    .map_or("-".into(), |v| if v { "yes" } else { "no" }.into()),
                cell(r.term),
                r.leader.clone().unwrap_or_else(|| "-".into()),
                cell(r.last_log),
                cell(r.committed),
                cell(r.applied),
                cell(r.lag),
                if r.reachable {
                    "yes".into()
                } else {
                    format!("no ({})", r.error.as_deref().unwrap_or("?"))
                },
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt = |cells: Vec<String>| -> String {
        let last = cells.len() - 1;
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}  ", w = widths[i])
                }
            })
            .collect::<String>()
    };
    let mut out = fmt(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for l in lines {
        out.push_str(&fmt(l));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let row = Row {
            endpoint: "http://127.0.0.1:8081".into(),
            id: Some(1),
            name: "node1".into(),
            role: "leader".into(),
            voter: Some(true),
            term: Some(3),
            leader: Some("node1".into()),
            last_log: Some(120),
            committed: Some(120),
            applied: Some(120),
            lag: Some(0),
            reachable: true,
            error: None,
        };
        let t = table(&[row]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("ROLE"), lines[1].find("leader"));
        assert_eq!(lines[0].find("LAG"), lines[1].rfind("0  "));
    }
}
