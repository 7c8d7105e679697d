//! The operations files against the metric contract (`ops/metrics.md`): every metric and label
//! that the Prometheus rules, their unit tests and the Grafana dashboard name is one the origin
//! exposes, and the dashboard is well formed. `ops/check` runs the real promtool for the rest
//! (the rules and the dashboard's expressions parse; each alert fires and stays quiet in its unit
//! tests); a name promtool cannot know is wrong only here: a misspelt metric parses fine and
//! just never fires.
//!
//! PromQL is read by a small tokenizer, enough for the selectors, functions and grouping clauses
//! these files use; anything it does not know is an error, never skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use serde_json::Value;

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

#[derive(Debug)]
struct Contract {
    metrics: BTreeMap<String, (Kind, BTreeSet<String>)>,
    /// Series the recording rules make (`record:`): aggregates of contract metrics.
    recorded: BTreeSet<String>,
}

impl Contract {
    /// The table rows of `ops/metrics.md` that start with a backticked `edgeauth_` name.
    fn parse(metrics_md: &str, rules_yml: &str) -> Self {
        let mut metrics = BTreeMap::new();
        for line in metrics_md.lines() {
            if !line.starts_with("| `edgeauth_") {
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_string();
            let kind = match cells[2] {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                other => panic!("{name}: unknown metric type `{other}`"),
            };
            let labels = cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`').to_string())
                .filter(|l| !l.is_empty())
                .collect();
            assert!(
                metrics.insert(name.clone(), (kind, labels)).is_none(),
                "{name} listed twice"
            );
        }
        let recorded = rules_yml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- record:"))
            .map(|n| n.trim().to_string())
            .collect();
        Self { metrics, recorded }
    }

    fn all_labels(&self) -> BTreeSet<String> {
        self.metrics
            .values()
            .flat_map(|(_, labels)| labels.iter().cloned())
            .chain(TARGET_LABELS.iter().map(|l| l.to_string()))
            .collect()
    }

    /// The labels a series of this name may carry, or `None` if the origin exposes no such series.
    /// A histogram is only ever queried through its `_bucket`, `_sum` and `_count` series.
    fn series_labels(&self, name: &str) -> Option<BTreeSet<String>> {
        if self.recorded.contains(name) {
            return Some(self.all_labels());
        }
        let with_target = |labels: &BTreeSet<String>| {
            let mut all = labels.clone();
            all.extend(TARGET_LABELS.iter().map(|l| l.to_string()));
            all
        };
        if let Some((kind, labels)) = self.metrics.get(name) {
            return (*kind != Kind::Histogram).then(|| with_target(labels));
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some((Kind::Histogram, labels)) = name
                .strip_suffix(suffix)
                .and_then(|base| self.metrics.get(base))
            {
                let mut all = with_target(labels);
                if suffix == "_bucket" {
                    all.insert("le".to_string());
                }
                return Some(all);
            }
        }
        None
    }
}

/// Function and aggregation names, and keywords, these files may use.
const FUNCTIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "topk",
    "bottomk",
    "rate",
    "irate",
    "increase",
    "delta",
    "histogram_quantile",
    "vector",
    "scalar",
    "absent",
    "round",
    "clamp_min",
    "clamp_max",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "time",
];
const BINARY_KEYWORDS: &[&str] = &["and", "or", "unless", "bool"];
const GROUPING_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str,
    Open(char),
    Close(char),
    Comma,
    Matcher,
    Other,
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            // A range or subquery (`[5m]`, `[$__rate_interval]`): durations, not names.
            '[' => match chars[i..].iter().position(|&d| d == ']') {
                Some(end) => i += end + 1,
                None => return Err(format!("unclosed `[` in {expr}")),
            },
            '"' | '\'' | '`' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                if j >= chars.len() {
                    return Err(format!("unclosed string in {expr}"));
                }
                tokens.push(Token::Str);
                i = j + 1;
            }
            '(' | '{' => {
                tokens.push(Token::Open(c));
                i += 1;
            }
            ')' | '}' => {
                tokens.push(Token::Close(c));
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '=' | '!' => {
                let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
                let len = if ["=~", "!~", "!=", "=="].contains(&two.as_str()) {
                    2
                } else {
                    1
                };
                tokens.push(if two == "==" {
                    Token::Other
                } else {
                    Token::Matcher
                });
                i += len;
            }
            // A number, or a duration after `offset`: not a name.
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                tokens.push(Token::Other);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            '+' | '-' | '*' | '/' | '%' | '^' | '<' | '>' => {
                tokens.push(Token::Other);
                i += 1;
            }
            other => return Err(format!("unexpected `{other}` in {expr}")),
        }
    }
    Ok(tokens)
}

/// The series names `expr` reads; an error names any metric or label not in the contract.
fn check_expr(contract: &Contract, expr: &str) -> Result<BTreeSet<String>, String> {
    let tokens = tokenize(expr)?;
    let mut series = BTreeSet::new();
    let mut grouping = BTreeSet::new();
    let mut allowed_for_grouping: BTreeSet<String> =
        TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    let mut i = 0;
    while i < tokens.len() {
        let Token::Ident(name) = &tokens[i] else {
            if tokens[i] == Token::Open('{') {
                return Err(format!("a selector without a metric name in {expr}"));
            }
            i += 1;
            continue;
        };
        let name = name.as_str();
        if FUNCTIONS.contains(&name) || BINARY_KEYWORDS.contains(&name) || name == "offset" {
            i += 1;
        } else if GROUPING_KEYWORDS.contains(&name) {
            i += 1;
            if tokens.get(i) == Some(&Token::Open('(')) {
                i += 1;
                while let Some(token) = tokens.get(i) {
                    i += 1;
                    match token {
                        Token::Ident(label) => {
                            grouping.insert(label.clone());
                        }
                        Token::Comma => {}
                        Token::Close(')') => break,
                        other => return Err(format!("{other:?} in a label list of {expr}")),
                    }
                }
            }
        } else {
            let labels = contract
                .series_labels(name)
                .ok_or_else(|| format!("`{name}` is not a series of the contract (in {expr})"))?;
            allowed_for_grouping.extend(labels.iter().cloned());
            series.insert(name.to_string());
            i += 1;
            if tokens.get(i) == Some(&Token::Open('{')) {
                i += 1;
                loop {
                    match (tokens.get(i), tokens.get(i + 1), tokens.get(i + 2)) {
                        (Some(Token::Close('}')), _, _) => {
                            i += 1;
                            break;
                        }
                        (Some(Token::Ident(label)), Some(Token::Matcher), Some(Token::Str)) => {
                            if !labels.contains(label) {
                                return Err(format!("`{name}` has no label `{label}` (in {expr})"));
                            }
                            i += 3;
                            if tokens.get(i) == Some(&Token::Comma) {
                                i += 1;
                            }
                        }
                        _ => return Err(format!("cannot read the selector of `{name}` in {expr}")),
                    }
                }
            }
        }
    }
    if let Some(label) = grouping.difference(&allowed_for_grouping).next() {
        return Err(format!(
            "groups by `{label}`, which no series of {expr} has"
        ));
    }
    Ok(series)
}

/// `(key, value)` of every `expr:` in a rule or rule-test file: an inline value, or a `|` block
/// (the following lines indented deeper). The files are ours and keep to these two forms.
fn yaml_values<'a>(text: &'a str, key: &str) -> Vec<String> {
    let lines: Vec<&'a str> = text.lines().collect();
    let mut values = Vec::new();
    let prefix = format!("{key}:");
    for (n, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        let Some(value) = trimmed.strip_prefix(&prefix) else {
            continue;
        };
        let value = value.trim();
        if value == "|" || value == ">" {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            values.push(block.join("\n"));
        } else {
            values.push(value.trim_matches('\'').to_string());
        }
    }
    values
}

fn contract() -> Contract {
    Contract::parse(
        &repo_file("ops/metrics.md"),
        &repo_file("ops/prometheus/edgeauth-rules.yml"),
    )
}

#[test]
fn the_contract_is_the_fixed_one() {
    let contract = contract();
    let got: Vec<(String, Kind, Vec<String>)> = contract
        .metrics
        .iter()
        .map(|(name, (kind, labels))| (name.clone(), *kind, labels.iter().cloned().collect()))
        .collect();
    let want = [
        ("edgeauth_deny_list_entries", Kind::Gauge, vec![]),
        (
            "edgeauth_dynamodb_errors_total",
            Kind::Counter,
            vec!["kind", "operation"],
        ),
        (
            "edgeauth_dynamodb_request_duration_seconds",
            Kind::Histogram,
            vec!["operation"],
        ),
        (
            "edgeauth_http_request_duration_seconds",
            Kind::Histogram,
            vec!["method", "route"],
        ),
        (
            "edgeauth_http_requests_total",
            Kind::Counter,
            vec!["method", "route", "status"],
        ),
        (
            "edgeauth_mail_messages_total",
            Kind::Counter,
            vec!["outcome", "template"],
        ),
        ("edgeauth_mail_queue_depth", Kind::Gauge, vec![]),
        ("edgeauth_mail_send_errors_total", Kind::Counter, vec![]),
        ("edgeauth_password_hash_queue_depth", Kind::Gauge, vec![]),
        (
            "edgeauth_redis_errors_total",
            Kind::Counter,
            vec!["connection"],
        ),
        (
            "edgeauth_redis_reconnects_total",
            Kind::Counter,
            vec!["connection"],
        ),
        (
            "edgeauth_redis_request_duration_seconds",
            Kind::Histogram,
            vec!["connection"],
        ),
        ("edgeauth_signing_key_age_seconds", Kind::Gauge, vec![]),
    ]
    .map(|(name, kind, labels)| {
        (
            name.to_string(),
            kind,
            labels.into_iter().map(String::from).collect::<Vec<_>>(),
        )
    });
    assert_eq!(got, want);
}

#[test]
fn the_checker_refuses_what_is_not_in_the_contract() {
    let contract = contract();
    let ok = |e: &str| check_expr(&contract, e).unwrap_or_else(|err| panic!("{err}"));
    let refused = |e: &str| assert!(check_expr(&contract, e).is_err(), "accepted {e}");
    ok(
        r#"sum by (route, le) (rate(edgeauth_http_request_duration_seconds_bucket{route="/v1/login"}[5m]))"#,
    );
    ok(r#"max(edgeauth_signing_key_age_seconds) > 100 * 86400"#);
    ok("edgeauth:http_errors:ratio_rate1h > (14.4 * 0.001) and edgeauth:http_errors:ratio_rate5m > 0.0144");
    // A misspelt metric, a histogram read without a series suffix, an unknown matcher label,
    // `le` outside `_bucket`, grouping by a label no series has, an unknown function.
    refused("rate(edgeauth_http_request_total[5m])");
    refused("rate(edgeauth_http_request_duration_seconds[5m])");
    refused(r#"edgeauth_http_requests_total{path="/v1/login"}"#);
    refused(r#"edgeauth_http_request_duration_seconds_count{le="0.8"}"#);
    refused("sum by (operation) (rate(edgeauth_http_requests_total[5m]))");
    refused("quantile_over_time(0.99, edgeauth_password_hash_queue_depth[5m])");
    refused(r#"{__name__="edgeauth_http_requests_total"}"#);
    refused("edgeauth:not_recorded:ratio_rate5m");
}

#[test]
fn the_rules_read_only_the_contract() {
    let contract = contract();
    let rules = repo_file("ops/prometheus/edgeauth-rules.yml");
    let exprs = yaml_values(&rules, "expr");
    let rule_count = rules
        .lines()
        .filter(|l| {
            let l = l.trim();
            l.starts_with("- record:") || l.starts_with("- alert:")
        })
        .count();
    assert_eq!(exprs.len(), rule_count, "one expr per rule");
    let mut read = BTreeSet::new();
    for expr in &exprs {
        read.extend(check_expr(&contract, expr).unwrap_or_else(|e| panic!("{e}")));
    }
    // Everything the alerts need from the contract is read by some rule.
    for needed in [
        "edgeauth_http_requests_total",
        "edgeauth_http_request_duration_seconds_bucket",
        "edgeauth_dynamodb_errors_total",
        "edgeauth_redis_errors_total",
        "edgeauth_signing_key_age_seconds",
    ] {
        assert!(read.contains(needed), "no rule reads {needed}");
    }
}

#[test]
fn the_rule_tests_feed_only_contract_series() {
    let contract = contract();
    let tests = repo_file("ops/prometheus/edgeauth-rules.test.yml");
    let series = yaml_values(&tests, "series");
    assert!(
        series.len() >= 20,
        "found only {} input series",
        series.len()
    );
    for s in series.iter().chain(&yaml_values(&tests, "expr")) {
        check_expr(&contract, s).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Every panel, rows' nested panels included.
fn panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in list.as_array().expect("`panels` is an array") {
        out.push(p);
        if let Some(nested) = p.get("panels") {
            out.extend(panels(nested));
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed_and_reads_only_the_contract() {
    let contract = contract();
    let dashboard: Value = serde_json::from_str(&repo_file("ops/grafana/edgeauth-dashboard.json"))
        .expect("the dashboard is JSON");
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let datasource_variable = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a `datasource` variable");
    assert_eq!(datasource_variable["type"], "datasource");
    assert_eq!(datasource_variable["query"], "prometheus");

    let prometheus = |ds: &Value, what: &str| {
        assert_eq!(ds["type"], "prometheus", "{what}: datasource type");
        assert_eq!(ds["uid"], "${datasource}", "{what}: datasource uid");
    };
    let mut ids = BTreeSet::new();
    let mut read = BTreeSet::new();
    let all = panels(&dashboard["panels"]);
    for panel in &all {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        for field in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][field].is_u64(), "{title}: gridPos.{field}");
        }
        if panel["type"] == "row" {
            continue;
        }
        prometheus(&panel["datasource"], title);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no target");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            prometheus(&target["datasource"], title);
            assert!(
                ref_ids.insert(target["refId"].as_str().expect("refId")),
                "{title}: refIds repeat"
            );
            let expr = target["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "{title}: empty expr");
            read.extend(check_expr(&contract, expr).unwrap_or_else(|e| panic!("{title}: {e}")));
        }
    }
    assert!(all.len() > 10, "only {} panels", all.len());

    // Every metric of the contract is on the dashboard.
    for (name, (kind, _)) in &contract.metrics {
        let shown = match kind {
            Kind::Histogram => read.contains(&format!("{name}_bucket")),
            _ => read.contains(name),
        };
        assert!(shown, "no panel shows {name}");
    }
}
