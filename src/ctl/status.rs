//! `cookie-crud ctl status`: every member, as it sees itself, in one table.
//!
//! Each endpoint given, and every member any of them names (so one endpoint is enough), is
//! asked `GET /cluster` concurrently. The lag of a member is the leader's: how far behind
//! the leader's last log index its matched index is. Who is a member, and who a voter, is
//! the leader's word too ([`membership_view`]): a removed node keeps the membership it last
//! knew, itself in it, and its own word would show it as a voter still.

use std::collections::BTreeMap;

use futures::future::join_all;
use serde_json::Value;

use super::client::{describe, normalize, Answer, Call, Client, CtlError};

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
    /// Whether the membership (the leader's, see [`membership_view`]) holds the node; None
    /// when no node answered with one.
    pub member: Option<bool>,
    pub reachable: bool,
    pub error: Option<String>,
}

fn u(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// Every endpoint's answer to `GET /cluster`: the ones given, then every member any of them
/// names (the first to answer may be a removed node, which knows none added since). The
/// given ones are asked once: asked again with the members, a node that never answered
/// cost `--timeout` twice (found in review).
async fn answers(client: &Client) -> Vec<(String, Result<Answer, reqwest::Error>)> {
    let given = client.target.endpoints.clone();
    let tls = given.iter().any(|e| e.starts_with("https://"));
    let call = Call::get("/cluster");
    let first = join_all(given.iter().map(|e| client.once(e, &call))).await;
    let mut more: Vec<String> = Vec::new();
    for v in first.iter().flatten().filter_map(|a| a.json().ok()) {
        for m in v["members"].as_array().into_iter().flatten() {
            if let Some(addr) = m["addr"].as_str() {
                let url = normalize(addr, tls);
                if !given.contains(&url) && !more.contains(&url) {
                    more.push(url);
                }
            }
        }
    }
    let rest = join_all(more.iter().map(|e| client.once(e, &call))).await;
    given
        .into_iter()
        .zip(first)
        .chain(more.into_iter().zip(rest))
        .collect()
}

/// The membership to judge every row by, as `(members, voters)`: the leader's (of the
/// highest term, should an old one not know yet), or without a leader the answer of the
/// highest term and commit index, which holds the newest committed membership any node
/// answering knows.
pub fn membership_view(answers: &[Value]) -> Option<(Vec<u64>, Vec<u64>)> {
    let ids = |v: &Value, k: &str| -> Vec<u64> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_u64().or_else(|| u(x, "id")))
            .collect()
    };
    answers
        .iter()
        .filter(|v| v["members"].is_array())
        .max_by_key(|v| (v["role"] == "leader", u(v, "term"), u(v, "committed")))
        .map(|v| (ids(v, "members"), ids(v, "voters")))
}

/// Ask every member; rows in member id order, unreachable ones last.
pub async fn rows(client: &Client) -> Vec<Row> {
    let answers = answers(client).await;
    let mut seen: BTreeMap<u64, Row> = BTreeMap::new();
    let mut down = Vec::new();
    let mut lag: BTreeMap<u64, u64> = BTreeMap::new();
    let mut leader_id = None;
    let mut views = Vec::new();
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
        views.push(v.clone());
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
            member: None,
            reachable: true,
            error: None,
        });
    }
    let view = membership_view(&views);
    let mut out: Vec<Row> = seen
        .into_values()
        .map(|mut r| {
            if leader_id.is_some() {
                r.lag = r.id.and_then(|id| lag.get(&id).copied());
            }
            if let (Some((members, voters)), Some(id)) = (&view, r.id) {
                r.member = Some(members.contains(&id));
                r.voter = Some(voters.contains(&id));
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
                match (r.member, r.voter) {
                    (Some(false), _) => "not a member".into(),
                    (_, v) => v.map_or("-".into(), |v| if v { "yes" } else { "no" }.into()),
                },
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
            member: Some(true),
            reachable: true,
            error: None,
        };
        let t = table(&[row]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("ROLE"), lines[1].find("leader"));
        assert_eq!(lines[0].find("LAG"), lines[1].rfind("0  "));
    }

    /// A removed node keeps the membership it last knew, itself a voter in it: the
    /// leader's membership decides, whichever node answered first.
    #[test]
    fn the_leaders_membership_decides_who_is_a_member() {
        let answer = |id: u64, role: &str, term: u64, committed: u64, voters: &[u64]| {
            let members: Vec<Value> = voters
                .iter()
                .map(|v| serde_json::json!({"id": v}))
                .collect();
            serde_json::json!({
                "node_id": id, "role": role, "term": term, "committed": committed,
                "members": members, "voters": voters,
            })
        };
        let removed = answer(3, "follower", 2, 40, &[1, 2, 3]);
        let leader = answer(1, "leader", 3, 50, &[1, 2]);
        let follower = answer(2, "follower", 3, 50, &[1, 2]);
        let view = membership_view(&[removed.clone(), leader, follower.clone()]);
        assert_eq!(view, Some((vec![1, 2], vec![1, 2])));
        // No leader: the highest term and commit index.
        let view = membership_view(&[removed.clone(), follower]);
        assert_eq!(view, Some((vec![1, 2], vec![1, 2])));
        let mut row = Row {
            id: Some(3),
            role: "follower".into(),
            voter: Some(false),
            member: Some(false),
            reachable: true,
            ..Row::default()
        };
        assert!(table(&[row.clone()]).contains("not a member"));
        row.member = Some(true);
        assert!(!table(&[row]).contains("not a member"));
    }
}
