//! PromQL references and the nodes' `/metrics`: what each dashboard and Prometheus query
//! selects (metrics, label matchers, grouping labels), read from the syntax tree
//! `promql-parser` builds, and whether the nodes export all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use serde_json::Value;

use crate::dashboard::dashboard_queries;
use crate::files::{deploy_dir, load_json, load_yaml_one, rel, str_map, Check, Problems};
use crate::prometheus::{prometheus_rule_files, yaml_exprs};

// ---------------------------------------------------------------------------------------
// What a query refers to

/// What an expression refers to: metric names, label matchers `(metric, label, op,
/// value)` (`metric` empty for a selector without a name), and the labels of
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` lists.
#[derive(Debug, Default)]
pub(crate) struct PromRefs {
    pub(crate) metrics: BTreeSet<String>,
    pub(crate) matchers: Vec<(String, String, String, String)>,
    pub(crate) grouping: BTreeSet<String>,
}

/// Stands in for a Grafana variable where PromQL expects a name (a metric, a label of a
/// matcher or a grouping list); left out of the references, as the variable names nothing
/// until Grafana fills it in.
const VARIABLE: &str = "__grafana_variable__";

/// `expr` with each Grafana variable outside string literals (`$name`, `${name}`,
/// `${name:format}`) replaced by something PromQL parses: a number for Grafana's seconds
/// and milliseconds (`$__range_s`, `$__interval_ms`, `$__from`, ...), a duration inside
/// `[...]` and after `offset` (`$__rate_interval` -> `5m`), and [`VARIABLE`] elsewhere.
/// Variables inside strings stay: a matcher value holding `$` is a variable. Also says
/// whether the parentheses outside strings balance, for a clearer message when they do not.
fn substitute_variables(expr: &str) -> (String, bool) {
    let mut out = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let (mut brackets, mut parens, mut balanced) = (0i32, 0i32, true);
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        if let Some(q) = quote {
            // Inside a string: copy it, escapes included, up to its closing quote.
            let mut n = c.len_utf8();
            if c == '\\' && q != '`' {
                n += rest[n..].chars().next().map_or(0, char::len_utf8);
            } else if c == q {
                quote = None;
            }
            out.push_str(&rest[..n]);
            rest = &rest[n..];
            continue;
        }
        let variable = if let Some(r) = rest.strip_prefix("${") {
            r.find('}').map(|end| (&r[..end], end + 3))
        } else if let Some(r) = rest.strip_prefix('$') {
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            Some((&r[..end], end + 1))
        } else {
            None
        };
        if let Some((name, len)) = variable.filter(|(name, _)| !name.is_empty()) {
            let name = name.split(':').next().unwrap_or(name);
            let numeric = matches!(name, "__from" | "__to")
                || (name.starts_with("__") && (name.ends_with("_ms") || name.ends_with("_s")));
            let after_offset = out.trim_end().to_ascii_lowercase().ends_with("offset");
            out.push_str(if numeric {
                "1"
            } else if brackets > 0 || after_offset {
                "5m"
            } else {
                VARIABLE
            });
            rest = &rest[len..];
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '[' => brackets += 1,
            ']' => brackets -= 1,
            '(' => parens += 1,
            ')' => {
                parens -= 1;
                balanced &= parens >= 0;
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    (out, balanced && parens == 0)
}

impl PromRefs {
    /// Collects the references of `e` and of everything under it.
    fn walk(&mut self, e: &Expr) {
        match e {
            Expr::Aggregate(a) => {
                self.group_by(a.modifier.as_ref());
                if let Some(param) = &a.param {
                    self.walk(param);
                }
                self.walk(&a.expr);
            }
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier {
                    self.group_by(m.matching.as_ref());
                    if let Some(labels) = m.card.labels() {
                        self.grouping.extend(labels.labels.iter().cloned());
                    }
                }
                self.walk(&b.lhs);
                self.walk(&b.rhs);
            }
            Expr::Unary(u) => self.walk(&u.expr),
            Expr::Paren(p) => self.walk(&p.expr),
            Expr::Subquery(s) => self.walk(&s.expr),
            Expr::Call(c) => c.args.args.iter().for_each(|a| self.walk(a)),
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }

    /// `by`/`without`, `on`/`ignoring`.
    fn group_by(&mut self, m: Option<&LabelModifier>) {
        if let Some(m) = m {
            self.grouping.extend(m.labels().labels.iter().cloned());
        }
    }

    /// A selector's metric name and its matchers (the `or` alternatives included).
    fn selector(&mut self, vs: &VectorSelector) {
        let metric = vs.name.as_deref().filter(|n| *n != VARIABLE).unwrap_or("");
        if !metric.is_empty() {
            self.metrics.insert(metric.to_string());
        }
        let or = vs.matchers.or_matchers.iter().flatten();
        for Matcher { op, name, value } in vs.matchers.matchers.iter().chain(or) {
            if name == VARIABLE {
                continue;
            }
            let op = match op {
                MatchOp::Equal => "=",
                MatchOp::NotEqual => "!=",
                MatchOp::Re(_) => "=~",
                MatchOp::NotRe(_) => "!~",
            };
            self.matchers
                .push((metric.into(), name.clone(), op.into(), value.clone()));
        }
    }
}

/// The metrics, matchers and grouping labels of a PromQL expression (Grafana variables
/// such as `$instance` or `$__rate_interval` allowed), from its syntax tree. An empty
/// expression refers to nothing; one that does not parse is an error.
pub(crate) fn promql_refs(expr: &str) -> Result<PromRefs, String> {
    let mut refs = PromRefs::default();
    if expr.trim().is_empty() {
        return Ok(refs);
    }
    let (text, balanced) = substitute_variables(expr);
    let ast = parser::parse(&text).map_err(|e| {
        if balanced {
            e
        } else {
            format!("unbalanced parentheses: {e}")
        }
    })?;
    refs.walk(&ast);
    refs.grouping.remove(VARIABLE);
    Ok(refs)
}

/// Grafana's `label_values(selector, label)` (or a plain expression).
pub(crate) fn query_refs(q: &str) -> Result<PromRefs, String> {
    let t = q.trim();
    if let Some(inner) = t
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (selector, label) = match inner.rsplit_once(',') {
            Some((sel, label)) => (sel, label),
            None => ("", inner),
        };
        let mut refs = promql_refs(selector)?;
        refs.grouping.insert(label.trim().to_string());
        return Ok(refs);
    }
    promql_refs(t)
}

/// What `promql_refs` and `query_refs` read from a few expressions: metrics but not
/// functions, aggregations or keywords; matchers with their selector's metric; grouping
/// labels of every kind; Grafana variables in and out of strings; errors, not panics.
#[test]
fn promql_references_come_from_the_syntax_tree() {
    let refs = |q: &str| query_refs(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    let set = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    let m = |metric: &str, label: &str, op: &str, value: &str| {
        (metric.into(), label.into(), op.into(), value.into())
    };

    let r = refs(
        "histogram_quantile(0.99, sum by (le, method) (rate(http_request_duration_seconds_bucket\
         {job=\"cookie-crud-cluster\", instance=~\"$instance\"}[$__rate_interval])))",
    );
    assert_eq!(r.metrics, set(&["http_request_duration_seconds_bucket"]));
    assert_eq!(
        r.matchers,
        [
            m(
                "http_request_duration_seconds_bucket",
                "job",
                "=",
                "cookie-crud-cluster"
            ),
            m(
                "http_request_duration_seconds_bucket",
                "instance",
                "=~",
                "$instance"
            ),
        ]
    );
    assert_eq!(r.grouping, set(&["le", "method"]));

    let r = refs(
        "raft_state{field=\"committed_index\"} - ignoring(field) group_left(node) \
         max without (role) (raft_state{field!=\"term\"}) > bool 0 and on() vector(1)",
    );
    assert_eq!(r.metrics, set(&["raft_state"]));
    assert_eq!(r.grouping, set(&["field", "node", "role"]));
    assert_eq!(
        r.matchers,
        [
            m("raft_state", "field", "=", "committed_index"),
            m("raft_state", "field", "!=", "term"),
        ]
    );

    let r = refs("{__name__=~\"cache_.*\"} offset $__interval");
    assert!(r.metrics.is_empty(), "{r:?}");
    assert_eq!(r.matchers, [m("", "__name__", "=~", "cache_.*")]);

    // Variables where a name, a number or a duration goes name nothing themselves.
    let r =
        refs("sum by ($label) (increase($metric{a=\"${b:regex}\"}[${__range_s}s])) > $threshold");
    assert!(r.metrics.is_empty() && r.grouping.is_empty(), "{r:?}");
    assert_eq!(r.matchers, [m("", "a", "=", "${b:regex}")]);

    let r = refs("label_values(up{job=\"cookie-crud-cluster\"}, instance)");
    assert_eq!(r.metrics, set(&["up"]));
    assert_eq!(r.grouping, set(&["instance"]));
    let r = refs("label_values(instance)");
    assert!(r.metrics.is_empty() && r.matchers.is_empty(), "{r:?}");
    assert_eq!(r.grouping, set(&["instance"]));
    assert!(refs("  ").metrics.is_empty());

    for (bad, needle) in [
        ("sum(rate(cache_hits_total[1m])", "unbalanced"),
        ("sum(rate(cache_hits_total[1m])))", "unbalanced"),
        ("cache_hits_total{job=cookie}", "string"),
        ("rat(cache_hits_total[1m])", "rat"),
        ("cache_hits_total{job=\"cookie", "unterminated"),
    ] {
        match query_refs(bad) {
            Ok(r) => panic!("{bad} was read as {r:?}"),
            Err(e) => assert!(e.contains(needle), "{bad}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The nodes' /metrics

/// `/metrics` text: `# TYPE` per family, and per sample name its labels and their values.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    pub(crate) types: BTreeMap<String, String>,
    pub(crate) series: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// A sample's name and its `(label, value)` pairs.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>);

/// A sample line's name and its `label="value"` pairs, values as written (escapes kept).
fn sample(line: &str) -> Result<Sample<'_>, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let (name, mut rest) = line.split_at(line.find(|c| !is_name(c)).unwrap_or(line.len()));
    if name.is_empty() {
        return Err(format!("/metrics: bad line {line:?}"));
    }
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
            if rest.is_empty() || rest.starts_with('}') {
                break;
            }
            let label_end = rest.find(|c| !is_name(c)).unwrap_or(rest.len());
            let (label, r) = rest.split_at(label_end);
            let Some(r) = r.strip_prefix("=\"").filter(|_| !label.is_empty()) else {
                return Err(format!("/metrics: bad labels in {line:?}"));
            };
            // The value ends at the first quote that is not escaped.
            let mut escaped = false;
            let end = r
                .char_indices()
                .find(|&(_, c)| {
                    let closes = !escaped && c == '"';
                    escaped = !escaped && c == '\\';
                    closes
                })
                .ok_or_else(|| format!("/metrics: unterminated string in {line:?}"))?
                .0;
            labels.push((label, &r[..end]));
            rest = &r[end + 1..];
        }
    }
    Ok((name, labels))
}

impl Exposition {
    pub(crate) fn add(&mut self, text: &str) -> Check {
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    self.types.insert(n.into(), t.into());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, labels) = sample(line)?;
            let series = self.series.entry(name.into()).or_default();
            for (label, value) in labels {
                series.entry(label.into()).or_default().insert(value.into());
            }
        }
        Ok(())
    }

    /// The histogram a `_bucket`/`_sum`/`_count` sample belongs to.
    pub(crate) fn histogram_of<'a>(&self, sample: &'a str) -> Option<&'a str> {
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = sample.strip_suffix(suffix)?;
            (self.types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
        })
    }
}

// ---------------------------------------------------------------------------------------
// The queries against the nodes' /metrics

/// Every metric a query names is exported by the nodes (`up` is Prometheus's own), with
/// the labels and label values it matches or groups by; the labels Prometheus adds itself
/// (`scrape_labels`: job, instance, target labels, with their allowed values when known)
/// are allowed everywhere and must not collide with exported ones.
pub(crate) fn check_metric_refs(
    queries: &[(String, String)],
    expo: &Exposition,
    scrape_labels: &BTreeMap<String, BTreeSet<String>>,
) -> Check {
    let mut p = Problems::default();
    for (name, labels) in &expo.series {
        for l in labels.keys() {
            p.check(!scrape_labels.contains_key(l), || {
                format!("{name} exports label {l}, which Prometheus sets itself on scrape")
            });
        }
    }
    let none = BTreeMap::new();
    for (whence, q) in queries {
        let refs = match query_refs(q) {
            Ok(r) => r,
            Err(e) => {
                p.add(format!("{whence}: cannot read {q:?}: {e}"));
                continue;
            }
        };
        for m in &refs.metrics {
            if m == "up" {
                continue;
            }
            if !expo.series.contains_key(m) {
                let hint = match expo.types.get(m).map(String::as_str) {
                    Some("histogram") => {
                        format!(" ({m} is a histogram: use {m}_bucket, {m}_sum or {m}_count)")
                    }
                    _ => String::new(),
                };
                p.add(format!(
                    "{whence}: metric {m} is not in the nodes' /metrics{hint}  [in {q}]"
                ));
            } else if let Some(h) = expo.histogram_of(m) {
                p.check(expo.types.contains_key(h), || {
                    format!("{whence}: {m} has no histogram {h}")
                });
            }
        }
        let labels_of = |m: &str| expo.series.get(m).unwrap_or(&none);
        for (metric, label, op, value) in &refs.matchers {
            let variable = value.contains('$');
            if let Some(allowed) = scrape_labels.get(label) {
                p.check(
                    op != "=" || variable || allowed.is_empty() || allowed.contains(value),
                    || format!("{whence}: {label}=\"{value}\" is not one of {allowed:?}  [in {q}]"),
                );
            } else if metric.is_empty() || (!expo.series.contains_key(metric) && metric != "up") {
                // An unknown metric is reported above; `{__name__=...}` is not checked.
            } else if !labels_of(metric).contains_key(label) {
                p.add(format!(
                    "{whence}: {metric} has no label {label} (it has {:?})  [in {q}]",
                    labels_of(metric).keys().collect::<Vec<_>>()
                ));
            } else if op == "=" && !variable && !labels_of(metric)[label].contains(value) {
                p.add(format!(
                    "{whence}: {metric}{{{label}=\"{value}\"}} matches nothing; {label} is one of {:?}  [in {q}]",
                    labels_of(metric)[label]
                ));
            }
        }
        for g in &refs.grouping {
            let known = scrape_labels.contains_key(g)
                || refs.metrics.iter().any(|m| labels_of(m).contains_key(g));
            p.check(known, || {
                format!("{whence}: no metric of {q:?} has the label {g}")
            });
        }
    }
    p.finish("metric references")
}

/// The labels Prometheus adds on scrape, from the Prometheus configs: `job` (with the job
/// names), `instance`, and each static target label.
pub(crate) fn scrape_labels(configs: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    out.insert("instance".into(), BTreeSet::new());
    for cfg in configs {
        for job in cfg["scrape_configs"].as_array().into_iter().flatten() {
            if let Some(j) = job["job_name"].as_str() {
                out.entry("job".into()).or_default().insert(j.into());
            }
            for sc in job["static_configs"].as_array().into_iter().flatten() {
                for l in str_map(&sc["labels"]).keys() {
                    out.entry(l.clone()).or_default();
                }
            }
        }
    }
    out
}

pub(crate) fn prometheus_configs() -> Vec<(PathBuf, Value)> {
    [
        deploy_dir().join("prometheus.yml"),
        deploy_dir().join("compose/prometheus.yml"),
    ]
    .into_iter()
    .map(|p| {
        let v = load_yaml_one(&p);
        (p, v)
    })
    .collect()
}

/// Every query of the dashboard, of the Prometheus configs, and of the rule files they
/// load (`deploy/alerts.yml`).
pub(crate) fn all_queries() -> Vec<(String, String)> {
    let mut out = dashboard_queries(&load_json(&deploy_dir().join("grafana/cookie-crud.json")));
    for (path, cfg) in prometheus_configs() {
        yaml_exprs(&cfg, &rel(&path), &mut out);
    }
    let mut rules = BTreeSet::new();
    for (_, files) in prometheus_rule_files().unwrap_or_else(|e| panic!("{e}")) {
        rules.extend(files.into_iter().map(|f| f.canonicalize().unwrap_or(f)));
    }
    for file in rules {
        yaml_exprs(&load_yaml_one(&file), &rel(&file), &mut out);
    }
    out
}
