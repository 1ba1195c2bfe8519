//! The observability files (`observability/`, `docker-compose.yml`) checked without Docker: Prometheus and
//! Alertmanager configuration through their own tools (`promtool`, `amtool`); the Grafana provisioning and
//! dashboards, Loki, Alloy, Jaeger and Compose files for structure and for agreement with each other and with
//! the metric catalogue `observability/METRICS.md`. Whether Grafana, Loki, Alloy and Jaeger accept their files
//! is not checked here: no binary of theirs is available (see observability/README.md).
//!
//! The parsing helpers are `pub(crate)`: `prometheus_live` runs the same dashboard and rule expressions against
//! a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

use crate::helpers::root;

/// The dashboards by uid; each is `observability/grafana/dashboards/<uid>.json`.
pub(crate) const DASHBOARD_UIDS: [&str; 6] = [
    "agent-overview",
    "task-analytics",
    "performance",
    "cost-tracking",
    "errors",
    "scale-out",
];

/// The only template variable a dashboard may have (`scale-out`'s node filter); prometheus_live fills it
/// with `.*`.
pub(crate) const INSTANCE_VARIABLE: &str = "instance";

/// A path under `observability/`.
pub(crate) fn observability(path: &str) -> PathBuf {
    root().join("observability").join(path)
}

pub(crate) fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub(crate) fn read_yaml(path: &Path) -> Yaml {
    serde_yaml_ng::from_str(&read_text(path))
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Json {
    serde_json::from_str(&read_text(path))
        .unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn yaml_str(value: &Yaml) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value:?}"))
}

fn yaml_seq(value: &Yaml) -> &Vec<Yaml> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a list, got {value:?}"))
}

// ---------------------------------------------------------------------------------------------------------
// The catalogue and PromQL expressions
// ---------------------------------------------------------------------------------------------------------

/// One row of METRICS.md.
#[derive(Debug)]
pub(crate) struct Metric {
    pub kind: String,
    pub labels: Vec<String>,
}

fn unquote_backticks(cell: &str) -> Option<&str> {
    cell.strip_prefix('`')?.strip_suffix('`')
}

/// The table of METRICS.md: name -> type and labels.
pub(crate) fn catalogue() -> BTreeMap<String, Metric> {
    let text = read_text(&observability("METRICS.md"));
    let mut metrics = BTreeMap::new();
    let mut lines = text
        .lines()
        .skip_while(|line| line.trim() != "| Name | Type | Labels | Meaning |");
    assert!(lines.next().is_some(), "METRICS.md has no catalogue table");
    for line in lines.skip(1).take_while(|line| line.starts_with('|')) {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells.len(), 4, "METRICS.md row without 4 cells: {line}");
        let name = unquote_backticks(cells[0])
            .unwrap_or_else(|| panic!("METRICS.md: name not in backticks: {line}"));
        let labels = if cells[2] == "–" {
            Vec::new()
        } else {
            cells[2]
                .split(',')
                .map(|label| {
                    unquote_backticks(label.trim())
                        .unwrap_or_else(|| panic!("METRICS.md: label not in backticks: {line}"))
                        .to_owned()
                })
                .collect()
        };
        let metric = Metric {
            kind: cells[1].to_owned(),
            labels,
        };
        assert!(
            metrics.insert(name.to_owned(), metric).is_none(),
            "METRICS.md lists {name} twice"
        );
    }
    assert!(
        metrics.len() > 10,
        "METRICS.md: catalogue table not found or nearly empty"
    );
    metrics
}

/// Identifiers of a PromQL expression with their byte ranges, skipping string literals (label values), numbers
/// and durations, and Grafana variables (`$__rate_interval`).
fn identifiers(expr: &str) -> Vec<(usize, usize)> {
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == b'$' || c.is_ascii_digit() {
            i += 1;
            while i < bytes.len() && (word(bytes[i]) || bytes[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            found.push((start, i));
        } else {
            i += 1;
        }
    }
    found
}

/// Whether an identifier names a Troupe series: an exported metric or a recorded one.
fn is_troupe_series(name: &str) -> bool {
    name.starts_with("troupe_") || name.starts_with("process_") || name.starts_with("troupe:")
}

/// The Troupe series names an expression reads (`troupe_*`, `process_*`, recorded `troupe:*`).
pub(crate) fn series_names(expr: &str) -> BTreeSet<String> {
    identifiers(expr)
        .into_iter()
        .map(|(start, end)| &expr[start..end])
        .filter(|name| is_troupe_series(name))
        .map(str::to_owned)
        .collect()
}

/// The vector selectors of an expression (`name` or `name{matchers}`) for Troupe series and `up`.
pub(crate) fn selectors(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    for (start, end) in identifiers(expr) {
        let name = &expr[start..end];
        if !(is_troupe_series(name) || name == "up") {
            continue;
        }
        let mut i = end;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if bytes.get(i) != Some(&b'{') {
            found.push(name.to_owned());
            continue;
        }
        let mut quote = None;
        let mut j = i + 1;
        while j < bytes.len() {
            match (quote, bytes[j]) {
                (Some(_), b'\\') => j += 1,
                (Some(q), b) if b == q => quote = None,
                (None, b'"' | b'\'' | b'`') => quote = Some(bytes[j]),
                (None, b'}') => break,
                _ => {}
            }
            j += 1;
        }
        assert!(j < bytes.len(), "unclosed selector in {expr}");
        found.push(format!("{name}{}", &expr[i..=j]));
    }
    found
}

/// The catalogue name of a series: itself, or the histogram it is the `_bucket`/`_sum`/`_count` of.
pub(crate) fn catalogue_name<'a>(
    series: &'a str,
    metrics: &BTreeMap<String, Metric>,
) -> Option<&'a str> {
    if metrics.contains_key(series) {
        return Some(series);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        (metrics.get(base)?.kind == "histogram").then_some(base)
    })
}

/// Every rule of `prometheus/rules/troupe.yml`, in order.
pub(crate) fn prometheus_rules() -> Vec<Yaml> {
    let rules = read_yaml(&observability("prometheus/rules/troupe.yml"));
    yaml_seq(&rules["groups"])
        .iter()
        .flat_map(|group| yaml_seq(&group["rules"]).iter().cloned())
        .collect()
}

/// An alert expression split into its query and threshold: `query > 0.1` -> (`query`, `>`, 0.1).
pub(crate) fn split_threshold(expr: &str) -> (String, char, f64) {
    let expr = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    let (at, op) = [" > ", " < "]
        .iter()
        .filter_map(|op| Some((expr.rfind(op)?, op.trim())))
        .max()
        .unwrap_or_else(|| panic!("alert expression is not `<query> > or < <threshold>`: {expr}"));
    let threshold = expr[at + 3..]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("threshold of `{expr}` is not a number: {e}"));
    (
        expr[..at].to_owned(),
        op.chars().next().unwrap_or('>'),
        threshold,
    )
}

/// Every dashboard JSON, by uid.
pub(crate) fn dashboards() -> BTreeMap<String, Json> {
    DASHBOARD_UIDS
        .iter()
        .map(|uid| {
            let path = observability(&format!("grafana/dashboards/{uid}.json"));
            (uid.to_string(), read_json(&path))
        })
        .collect()
}

/// The panels of a dashboard, including those inside rows.
pub(crate) fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        found.push(panel);
        found.extend(panel["panels"].as_array().into_iter().flatten());
    }
    found
}

/// One query of a dashboard panel on the Prometheus datasource.
pub(crate) struct PanelQuery {
    /// `dashboard / panel title / refId`, for messages.
    pub place: String,
    pub expr: String,
}

/// Every Prometheus query of every dashboard.
pub(crate) fn prometheus_panel_queries() -> Vec<PanelQuery> {
    let mut queries = Vec::new();
    for (uid, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if target["datasource"]["uid"] != "prometheus" {
                    continue;
                }
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.is_empty(),
                    "{uid}: panel {} has an empty query",
                    panel["title"]
                );
                queries.push(PanelQuery {
                    place: format!("{uid} / {} / {}", panel["title"], target["refId"]),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    queries
}

fn recorded_names() -> BTreeSet<String> {
    prometheus_rules()
        .iter()
        .filter_map(|rule| rule["record"].as_str().map(str::to_owned))
        .collect()
}

fn alert_names() -> Vec<String> {
    prometheus_rules()
        .iter()
        .filter_map(|rule| rule["alert"].as_str().map(str::to_owned))
        .collect()
}

/// Every Troupe series in `expr` is catalogued (histograms through their `_bucket`/`_sum`/`_count` series) or
/// recorded by a rule.
fn assert_known_series(place: &str, expr: &str, metrics: &BTreeMap<String, Metric>) {
    let recorded = recorded_names();
    let names = series_names(expr);
    for name in &names {
        if name.starts_with("troupe:") {
            assert!(
                recorded.contains(name),
                "{place}: `{name}` is not a recording rule ({expr})"
            );
        } else {
            assert!(
                catalogue_name(name, metrics).is_some(),
                "{place}: `{name}` is not in METRICS.md ({expr})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The tools
// ---------------------------------------------------------------------------------------------------------

/// Runs a tool from the repository root and returns its output, failing clearly when it is missing or fails.
fn run_tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{program}` ({e}); `scripts/setup.sh test` installs it (Debian packages \
                 prometheus and prometheus-alertmanager)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\n{text}",
        args.join(" "),
        output.status
    );
    text
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_unit_tests_pass() {
    let config = run_tool(
        "promtool",
        &["check", "config", "observability/prometheus/prometheus.yml"],
    );
    assert!(config.contains("SUCCESS"), "{config}");
    // The config's rule_files glob must find the rules (a wrong path is not an error for promtool).
    assert!(config.contains("1 rule files found"), "{config}");

    let rules = run_tool(
        "promtool",
        &[
            "check",
            "rules",
            "observability/prometheus/rules/troupe.yml",
        ],
    );
    let expected = format!("SUCCESS: {} rules found", prometheus_rules().len());
    assert!(rules.contains(&expected), "{rules}");

    let tests = run_tool(
        "promtool",
        &[
            "test",
            "rules",
            "observability/prometheus/tests/troupe_test.yml",
        ],
    );
    assert!(tests.contains("SUCCESS"), "{tests}");
}

#[test]
fn every_alert_has_unit_tests_that_fire_it_and_keep_it_silent_and_every_recording_rule_is_tested() {
    let tests = read_yaml(&observability("prometheus/tests/troupe_test.yml"));
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    let mut tested_exprs = Vec::new();
    for test in yaml_seq(&tests["tests"]) {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = yaml_str(&case["alertname"]).to_owned();
            let fires = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty());
            if fires {
                firing.insert(name);
            } else {
                silent.insert(name);
            }
        }
        for case in test["promql_expr_test"].as_sequence().into_iter().flatten() {
            tested_exprs.push(yaml_str(&case["expr"]).to_owned());
        }
    }
    for alert in alert_names() {
        assert!(firing.contains(&alert), "no unit test fires {alert}");
        assert!(silent.contains(&alert), "no unit test keeps {alert} silent");
    }
    for recorded in recorded_names() {
        assert!(
            tested_exprs
                .iter()
                .any(|expr| series_names(expr).contains(&recorded)),
            "no promql_expr_test checks the value of {recorded}"
        );
    }
}

#[test]
fn amtool_accepts_the_alertmanager_config_and_each_severity_reaches_its_receiver() {
    let config = "--config.file=observability/alertmanager/alertmanager.yml";
    let check = run_tool(
        "amtool",
        &[
            "check-config",
            "observability/alertmanager/alertmanager.yml",
        ],
    );
    assert!(check.contains("SUCCESS"), "{check}");
    for rule in prometheus_rules()
        .iter()
        .filter(|rule| rule["alert"].is_string())
    {
        let alert = format!("alertname={}", yaml_str(&rule["alert"]));
        let severity = yaml_str(&rule["labels"]["severity"]);
        let routed = run_tool(
            "amtool",
            &[
                "config",
                "routes",
                "test",
                config,
                &alert,
                &format!("severity={severity}"),
            ],
        );
        let receiver = routed.lines().next().unwrap_or_default().trim();
        assert_eq!(
            receiver, severity,
            "{alert} severity={severity} routes to {receiver}"
        );
    }

    let alertmanager = read_yaml(&observability("alertmanager/alertmanager.yml"));
    let inhibits = yaml_seq(&alertmanager["inhibit_rules"]);
    assert!(
        inhibits.iter().any(|rule| {
            rule["source_matchers"][0] == "severity=\"critical\""
                && rule["target_matchers"][0] == "severity=\"warning\""
                && rule["equal"][0] == "alertname"
        }),
        "no inhibition of warnings by criticals of the same alert name"
    );
    let group_by = yaml_seq(&alertmanager["route"]["group_by"]);
    assert!(
        group_by.iter().any(|label| label == "alertname"),
        "{group_by:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Catalogue and rules
// ---------------------------------------------------------------------------------------------------------

#[test]
fn the_catalogue_follows_the_naming_conventions_and_lists_every_name_in_the_code() {
    let metrics = catalogue();
    for (name, metric) in &metrics {
        assert!(
            name.starts_with("troupe_") || name.starts_with("process_"),
            "unexpected prefix: {name}"
        );
        match metric.kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "counter without _total: {name}"),
            // Base units: durations in seconds, memory in bytes; similarity scores are a ratio.
            "histogram" => assert!(
                name.ends_with("_seconds") || name.ends_with("_bytes") || name.ends_with("_ratio"),
                "histogram neither in seconds, bytes nor a ratio: {name}"
            ),
            "gauge" => assert!(
                !name.ends_with("_total"),
                "gauge named like a counter: {name}"
            ),
            other => panic!("{name}: unknown type {other}"),
        }
        for label in &metric.labels {
            assert!(
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}: bad label name `{label}`"
            );
            assert!(
                !label.contains("task_id") && !label.contains("trace"),
                "{name}: unbounded label"
            );
        }
    }
    // Every name the code defines is catalogued (the code's names are string constants in one file).
    let code = read_text(&root().join("src/telemetry/metrics/names.rs"));
    let in_code: Vec<&str> = code
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            literal.starts_with("troupe_")
                && literal
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .collect();
    assert!(
        in_code.len() >= 10,
        "no metric names found in src/telemetry/metrics/names.rs"
    );
    for name in in_code {
        assert!(
            metrics.contains_key(name),
            "{name} is exported but not in METRICS.md"
        );
    }
}

#[test]
fn every_rule_reads_only_catalogued_metrics_and_every_alert_is_documented() {
    let metrics = catalogue();
    let readme = read_text(&observability("README.md")).to_lowercase();
    let rules = prometheus_rules();
    assert!(rules.iter().any(|rule| rule["alert"].is_string()));
    for rule in &rules {
        let name = rule["alert"]
            .as_str()
            .or(rule["record"].as_str())
            .unwrap_or_else(|| panic!("rule without alert or record: {rule:?}"));
        let expr = yaml_str(&rule["expr"]);
        assert_known_series(name, expr, &metrics);
        assert!(
            !series_names(expr).is_empty() || expr.contains("up{"),
            "{name} reads no Troupe series"
        );
        if rule["record"].is_string() {
            continue;
        }
        split_threshold(expr);
        let severity = yaml_str(&rule["labels"]["severity"]);
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description", "runbook", "dashboard"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name}: no `{key}` annotation");
        }
        // The runbook is a section of observability/README.md; the dashboard one of ours.
        let anchor = format!("#{}", name.to_lowercase());
        assert!(
            yaml_str(&rule["annotations"]["runbook"]).ends_with(&anchor),
            "{name}: runbook should point at README.md{anchor}"
        );
        assert!(
            readme.contains(&format!("### {}\n", name.to_lowercase())),
            "README.md has no runbook for {name}"
        );
        let dashboard = yaml_str(&rule["annotations"]["dashboard"]);
        assert!(
            DASHBOARD_UIDS
                .iter()
                .any(|uid| dashboard.ends_with(&format!("/d/{uid}"))),
            "{name}: dashboard annotation {dashboard} is not one of the dashboards"
        );
    }
    let alerts = alert_names();
    for required in [
        "HighErrorRate",
        "SlowResponse",
        "HighTokenUsage",
        "QueueBacklog",
        "AgentRestartStorm",
    ] {
        assert!(
            alerts.iter().any(|a| a == required),
            "alert {required} is missing"
        );
    }
    assert_eq!(
        alerts.len(),
        alerts.iter().collect::<BTreeSet<_>>().len(),
        "two alerts share a name: {alerts:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Grafana
// ---------------------------------------------------------------------------------------------------------

/// Provisioned datasources: uid -> type.
fn datasources() -> BTreeMap<String, String> {
    let file = read_yaml(&observability(
        "grafana/provisioning/datasources/datasources.yml",
    ));
    yaml_seq(&file["datasources"])
        .iter()
        .map(|ds| {
            (
                yaml_str(&ds["uid"]).to_owned(),
                yaml_str(&ds["type"]).to_owned(),
            )
        })
        .collect()
}

#[test]
fn datasources_have_fixed_uids_and_link_logs_and_traces_both_ways() {
    let sources = datasources();
    let expected: BTreeMap<String, String> = [
        ("prometheus", "prometheus"),
        ("loki", "loki"),
        ("jaeger", "jaeger"),
    ]
    .iter()
    .map(|(uid, kind)| (uid.to_string(), kind.to_string()))
    .collect();
    assert_eq!(sources, expected);

    let file = read_yaml(&observability(
        "grafana/provisioning/datasources/datasources.yml",
    ));
    let by_uid = |uid: &str| {
        yaml_seq(&file["datasources"])
            .iter()
            .find(|ds| ds["uid"] == uid)
            .cloned()
            .unwrap_or_else(|| panic!("no datasource {uid}"))
    };
    // URLs name the compose services and their ports.
    assert_eq!(by_uid("prometheus")["url"], "http://prometheus:9090");
    assert_eq!(by_uid("loki")["url"], "http://loki:3100");
    assert_eq!(by_uid("jaeger")["url"], "http://jaeger:16686");

    // Loki -> Jaeger: the trace_id of a JSON log line becomes a link to the Jaeger datasource.
    let loki = by_uid("loki");
    let derived = yaml_seq(&loki["jsonData"]["derivedFields"]);
    assert!(
        derived
            .iter()
            .any(|field| field["datasourceUid"] == "jaeger"
                && field["matcherRegex"]
                    .as_str()
                    .is_some_and(|re| re.contains("trace_id"))),
        "{derived:?}"
    );
    // Jaeger -> Loki: a span links to the log lines with its trace id.
    let jaeger = by_uid("jaeger");
    let to_logs = &jaeger["jsonData"]["tracesToLogsV2"];
    assert_eq!(to_logs["datasourceUid"], "loki");
    let query = to_logs["query"].as_str().unwrap_or_default();
    assert!(
        query.contains("trace_id") && query.contains("traceId"),
        "{query}"
    );
    // A literal `$` in provisioning files must be written `$$` (Grafana expands environment variables).
    let text = read_text(&observability(
        "grafana/provisioning/datasources/datasources.yml",
    ));
    for (at, _) in text.match_indices("${__") {
        assert!(
            at > 0 && &text[at - 1..at] == "$",
            "unescaped Grafana variable in datasources.yml"
        );
    }
}

#[test]
fn the_dashboard_provider_loads_the_directory_compose_mounts() {
    let file = read_yaml(&observability(
        "grafana/provisioning/dashboards/dashboards.yml",
    ));
    let providers = yaml_seq(&file["providers"]);
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0]["type"], "file");
    let path = yaml_str(&providers[0]["options"]["path"]);
    assert_eq!(path, "/var/lib/grafana/dashboards");
    let mounts = service_volumes(&compose()["services"]["grafana"]);
    assert!(
        mounts.contains(&format!("./observability/grafana/dashboards:{path}:ro")),
        "{mounts:?}"
    );
    assert!(mounts
        .contains(&"./observability/grafana/provisioning:/etc/grafana/provisioning:ro".to_owned()));
}

#[test]
fn the_dashboards_have_their_uids_unique_panel_ids_and_provisioned_datasources() {
    let sources = datasources();
    for (uid, dashboard) in dashboards() {
        assert_eq!(dashboard["uid"], uid.as_str(), "{uid}.json has another uid");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
        let panels = panels(&dashboard);
        assert!(panels.len() >= 6, "{uid}: only {} panels", panels.len());
        let mut ids = BTreeSet::new();
        for panel in &panels {
            let id = panel["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{uid}: panel without id"));
            assert!(ids.insert(id), "{uid}: panel id {id} twice");
            if panel["type"] == "row" {
                continue;
            }
            let title = &panel["title"];
            let ds_uid = panel["datasource"]["uid"].as_str().unwrap_or_default();
            let ds_type = sources.get(ds_uid).unwrap_or_else(|| {
                panic!("{uid} / {title}: datasource `{ds_uid}` is not provisioned")
            });
            assert_eq!(
                panel["datasource"]["type"],
                ds_type.as_str(),
                "{uid} / {title}"
            );
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{uid} / {title}: no targets"));
            assert!(!targets.is_empty(), "{uid} / {title}: no targets");
            let mut refs = BTreeSet::new();
            for target in targets {
                assert!(
                    refs.insert(target["refId"].to_string()),
                    "{uid} / {title}: refId twice"
                );
                let target_uid = target["datasource"]["uid"].as_str().unwrap_or_default();
                assert!(
                    sources.contains_key(target_uid),
                    "{uid} / {title}: target datasource `{target_uid}` is not provisioned"
                );
                if target_uid != "jaeger" {
                    assert!(
                        target["expr"]
                            .as_str()
                            .is_some_and(|e| !e.trim().is_empty()),
                        "{uid} / {title}: target without a query"
                    );
                }
            }
            let kinds = [
                "timeseries",
                "stat",
                "table",
                "logs",
                "bargauge",
                "gauge",
                "traces",
            ];
            assert!(
                kinds.contains(&panel["type"].as_str().unwrap_or_default()),
                "{uid} / {title}: type {}",
                panel["type"]
            );
        }
        // Template variables need substituting in prometheus_live: only the instance filter is handled.
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .map(|list| list.iter().filter_map(|v| v["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            variables.iter().all(|name| *name == INSTANCE_VARIABLE),
            "{uid}: template variables {variables:?} are not handled by the tests"
        );
    }
}

#[test]
fn every_dashboard_query_reads_only_catalogued_metrics() {
    let metrics = catalogue();
    let queries = prometheus_panel_queries();
    assert!(
        queries.len() >= 50,
        "only {} Prometheus queries",
        queries.len()
    );
    let mut used = BTreeSet::new();
    for query in &queries {
        assert_known_series(&query.place, &query.expr, &metrics);
        for name in series_names(&query.expr) {
            used.insert(catalogue_name(&name, &metrics).unwrap_or(&name).to_owned());
        }
    }
    // Every catalogued metric is on some dashboard.
    let unused: Vec<_> = metrics
        .keys()
        .filter(|name| !used.contains(*name))
        .collect();
    assert!(unused.is_empty(), "metrics on no dashboard: {unused:?}");
}

#[test]
fn every_dashboard_shows_p95_or_p99_latency_and_links_to_traces() {
    for (uid, dashboard) in dashboards() {
        let percentile = panels(&dashboard).iter().any(|panel| {
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|target| {
                    let expr = target["expr"].as_str().unwrap_or_default();
                    (expr.contains("histogram_quantile(0.95,")
                        || expr.contains("histogram_quantile(0.99,"))
                        && expr.contains("_seconds_bucket")
                })
        });
        assert!(percentile, "{uid}: no p95/p99 histogram_quantile panel");
        let links = dashboard["links"].as_array().cloned().unwrap_or_default();
        let to_traces = links
            .iter()
            .filter(|link| {
                link["url"]
                    .as_str()
                    .is_some_and(|url| url.contains("jaeger"))
            })
            .count();
        assert!(to_traces >= 1, "{uid}: no link to traces: {links:?}");
        // Explore links name a provisioned datasource.
        for link in &links {
            let url = link["url"].as_str().unwrap_or_default();
            if url.starts_with("/explore") {
                assert!(
                    ["%22jaeger%22", "%22loki%22", "%22prometheus%22"]
                        .iter()
                        .any(|ds| url.contains(ds)),
                    "{uid}: explore link to an unknown datasource: {url}"
                );
            }
        }
    }
    // The errors dashboard shows Troupe's error log lines from Loki.
    let all = dashboards();
    let errors = &all["errors"];
    assert!(
        panels(errors).iter().any(|panel| panel["type"] == "logs"
            && panel["datasource"]["uid"] == "loki"
            && panel["targets"][0]["expr"].as_str().is_some_and(|expr| expr
                .contains("service=\"troupe\"")
                && expr.contains("level=\"ERROR\""))),
        "errors: no Loki panel of error lines"
    );
}

#[test]
fn grafana_alert_rules_mirror_every_prometheus_alert() {
    let file = read_yaml(&observability("grafana/provisioning/alerting/rules.yml"));
    assert_eq!(file["apiVersion"], 1);
    let grafana: Vec<&Yaml> = yaml_seq(&file["groups"])
        .iter()
        .flat_map(|group| yaml_seq(&group["rules"]).iter())
        .collect();
    let alerts: Vec<Yaml> = prometheus_rules()
        .into_iter()
        .filter(|rule| rule["alert"].is_string())
        .collect();
    assert_eq!(
        grafana.len(),
        alerts.len(),
        "one Grafana rule per Prometheus alert"
    );
    let sources = datasources();
    for alert in &alerts {
        let name = yaml_str(&alert["alert"]);
        let rule = grafana
            .iter()
            .find(|rule| rule["title"] == name)
            .unwrap_or_else(|| panic!("no Grafana rule {name}"));
        let (query, op, threshold) = split_threshold(yaml_str(&alert["expr"]));
        let data = yaml_seq(&rule["data"]);
        let by_ref = |id: &str| {
            data.iter()
                .find(|d| d["refId"] == id)
                .unwrap_or_else(|| panic!("{name}: no query {id}"))
        };
        let condition = yaml_str(&rule["condition"]);
        let threshold_node = by_ref(condition);
        assert_eq!(threshold_node["model"]["type"], "threshold", "{name}");
        let source = yaml_str(&threshold_node["model"]["expression"]);
        let query_node = by_ref(source);
        let ds = yaml_str(&query_node["datasourceUid"]);
        assert!(
            sources.contains_key(ds),
            "{name}: datasource {ds} not provisioned"
        );
        let grafana_query = yaml_str(&query_node["model"]["expr"])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(grafana_query, query, "{name}: queries differ");
        let evaluator = &threshold_node["model"]["conditions"][0]["evaluator"];
        let expected_type = if op == '>' { "gt" } else { "lt" };
        assert_eq!(evaluator["type"], expected_type, "{name}");
        assert_eq!(
            evaluator["params"][0].as_f64(),
            Some(threshold),
            "{name}: thresholds differ"
        );
        assert_eq!(rule["for"], alert["for"], "{name}: `for` differs");
        assert_eq!(
            rule["labels"]["severity"], alert["labels"]["severity"],
            "{name}"
        );
        for key in ["summary", "description", "runbook", "dashboard"] {
            assert!(rule["annotations"][key].is_string(), "{name}: no {key}");
        }
    }
    // Grafana notifies through the stack's Alertmanager.
    let contact = read_yaml(&observability(
        "grafana/provisioning/alerting/contact-points.yml",
    ));
    let point = &contact["contactPoints"][0];
    assert_eq!(
        point["receivers"][0]["settings"]["url"],
        "http://alertmanager:9093"
    );
    let policies = read_yaml(&observability("grafana/provisioning/alerting/policies.yml"));
    assert_eq!(policies["policies"][0]["receiver"], point["name"]);
}

// ---------------------------------------------------------------------------------------------------------
// Loki, Alloy, Jaeger
// ---------------------------------------------------------------------------------------------------------

#[test]
fn loki_keeps_30_days_through_the_compactor_and_accepts_structured_metadata() {
    let loki = read_yaml(&observability("loki/loki.yml"));
    assert_eq!(loki["limits_config"]["retention_period"], "720h");
    assert_eq!(loki["limits_config"]["allow_structured_metadata"], true);
    assert_eq!(loki["compactor"]["retention_enabled"], true);
    assert!(
        loki["compactor"]["delete_request_store"].is_string(),
        "retention needs a delete_request_store"
    );
    assert_eq!(loki["server"]["http_listen_port"], 3100);
    let schema = &loki["schema_config"]["configs"][0];
    assert_eq!(schema["store"], "tsdb");
    assert_eq!(schema["object_store"], "filesystem");
}

/// The body of the first block `name ... {` in an Alloy file, up to its matching brace.
fn alloy_block<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("{name} {{"))
        .or_else(|| text.find(&format!("{name} \"")))
        .unwrap_or_else(|| panic!("config.alloy has no block {name}"));
    let open = start + text[start..].find('{').unwrap_or(0);
    let mut depth = 0;
    for (offset, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + offset];
                }
            }
            _ => {}
        }
    }
    panic!("config.alloy: block {name} is not closed")
}

/// The keys of the `values = { ... }` or `expressions = { ... }` map in an Alloy block.
fn alloy_map_keys(block: &str) -> BTreeSet<String> {
    let inner = &block[block.find('{').unwrap_or(0) + 1..block.rfind('}').unwrap_or(block.len())];
    inner
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, _)| key.trim().to_owned())
        .filter(|key| !key.is_empty() && !key.starts_with("//"))
        .collect()
}

#[test]
fn alloy_ships_the_troupe_container_json_lines_with_few_labels_and_ids_as_metadata() {
    let text = read_text(&observability("alloy/config.alloy"));
    // Comments stripped (no string in this file contains `//` except URLs, which are checked with their
    // scheme cut off below), braces balanced.
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].ends_with(':') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let flat = code.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        code.matches('{').count(),
        code.matches('}').count(),
        "unbalanced braces"
    );

    assert!(
        code.contains("\"com.docker.compose.project=troupe\""),
        "not filtered to the Compose project"
    );
    assert!(
        code.contains("\"com.docker.compose.service=troupe\""),
        "not filtered to the troupe service"
    );
    assert!(
        flat.contains("target_label = \"service\""),
        "no `service` label"
    );
    assert!(alloy_block(&code, "loki.source.docker").contains("unix:///var/run/docker.sock"));

    let json_keys = alloy_map_keys(alloy_block(&code, "stage.json"));
    for field in [
        "timestamp",
        "level",
        "target",
        "message",
        "trace_id",
        "span_id",
        "task_id",
        "agent",
    ] {
        assert!(
            json_keys.contains(field),
            "stage.json does not extract {field}: {json_keys:?}"
        );
    }
    let labels = alloy_map_keys(alloy_block(&code, "stage.labels"));
    assert_eq!(
        labels,
        BTreeSet::from(["level".to_owned()]),
        "only low-cardinality labels"
    );
    let metadata = alloy_map_keys(alloy_block(&code, "stage.structured_metadata"));
    for field in ["trace_id", "span_id", "task_id", "agent"] {
        assert!(
            metadata.contains(field),
            "{field} is not structured metadata: {metadata:?}"
        );
    }
    assert!(
        alloy_block(&code, "loki.write").contains("\"http://loki:3100/loki/api/v1/push\""),
        "not pushed to the loki service"
    );
    // The same names the Grafana Loki panels query.
    for (uid, dashboard) in dashboards() {
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if target["datasource"]["uid"] == "loki" {
                    let expr = target["expr"].as_str().unwrap_or_default();
                    assert!(
                        expr.contains("service=\"troupe\""),
                        "{uid}: Loki query without the service label"
                    );
                }
            }
        }
    }
}

#[test]
fn jaeger_receives_otlp_and_keeps_spans_30_days_in_badger() {
    let jaeger = read_yaml(&observability("jaeger/config.yaml"));
    let pipeline = &jaeger["service"]["pipelines"]["traces"];
    assert_eq!(pipeline["receivers"][0], "otlp");
    assert_eq!(pipeline["exporters"][0], "jaeger_storage_exporter");
    let protocols = &jaeger["receivers"]["otlp"]["protocols"];
    assert_eq!(protocols["grpc"]["endpoint"], "0.0.0.0:4317");
    assert_eq!(protocols["http"]["endpoint"], "0.0.0.0:4318");
    let backends = &jaeger["extensions"]["jaeger_storage"]["backends"];
    let store = yaml_str(&jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"]);
    assert_eq!(
        jaeger["extensions"]["jaeger_query"]["storage"]["traces"],
        store
    );
    let badger = &backends[store]["badger"];
    assert_eq!(badger["ttl"]["spans"], "720h");
    assert_eq!(badger["ephemeral"], false);
    for extension in yaml_seq(&jaeger["service"]["extensions"]) {
        assert!(
            !jaeger["extensions"][yaml_str(extension)].is_null(),
            "extension {extension:?} not configured"
        );
    }
    // The compose health check asks the healthcheckv2 port; the volume is where Badger writes.
    assert_eq!(
        jaeger["extensions"]["healthcheckv2"]["http"]["endpoint"],
        "0.0.0.0:13133"
    );
    let service = &compose()["services"]["jaeger"];
    assert!(format!("{:?}", service["healthcheck"]["test"]).contains("127.0.0.1:13133/status"));
    let keys = yaml_str(&badger["directories"]["keys"]);
    assert!(
        service_volumes(service)
            .iter()
            .any(|v| v.starts_with("jaegerdata:")
                && keys.starts_with(v.split(':').nth(1).unwrap_or("-"))),
        "Badger's directory is not on the jaegerdata volume"
    );
}

// ---------------------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------------------

fn compose() -> Yaml {
    read_yaml(&root().join("docker-compose.yml"))
}

fn service_volumes(service: &Yaml) -> Vec<String> {
    service["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|v| yaml_str(v).to_owned())
        .collect()
}

/// Container ports a service publishes.
fn published_ports(service: &Yaml) -> BTreeSet<u16> {
    service["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|port| {
            let spec = yaml_str(port);
            let container = spec
                .rsplit(':')
                .next()
                .unwrap_or(spec)
                .trim_end_matches("/tcp");
            container
                .parse()
                .unwrap_or_else(|e| panic!("port {spec}: {e}"))
        })
        .collect()
}

/// Whether a tag has a dotted version (`1.2`, `v2.55.1`, `0.8.0-pg16`).
fn has_dot_version(tag: &str) -> bool {
    tag.as_bytes()
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b'.' && w[2].is_ascii_digit())
}

#[test]
fn compose_starts_every_service_pinned_healthchecked_and_with_named_volumes() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let declared: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .expect("top-level volumes")
        .keys()
        .map(|k| yaml_str(k).to_owned())
        .collect();
    let expected_ports: [(&str, &[u16]); 9] = [
        ("troupe", &[8080]),
        ("postgres", &[]),
        ("redis", &[]),
        ("jaeger", &[16686, 4317, 4318]),
        ("prometheus", &[9090]),
        ("alertmanager", &[9093]),
        ("grafana", &[3000]),
        ("loki", &[3100]),
        ("alloy", &[12345]),
    ];
    for (name, ports) in expected_ports {
        let service = &compose["services"][name];
        assert!(service.is_mapping(), "service {name} is missing");
        let published = published_ports(service);
        for port in ports {
            assert!(
                published.contains(port),
                "{name} does not publish {port}: {published:?}"
            );
        }
        // Stateful services keep their data in a declared named volume (everything but troupe here).
        if name != "troupe" {
            let named: Vec<String> = service_volumes(service)
                .into_iter()
                .filter(|v| !v.starts_with('.') && !v.starts_with('/'))
                .collect();
            assert!(!named.is_empty(), "{name} has no named volume");
            for volume in named {
                let volume_name = volume.split(':').next().unwrap_or_default();
                assert!(
                    declared.contains(volume_name),
                    "{name}: volume {volume_name} not declared"
                );
            }
        }
    }
    for (name, service) in services {
        let name = yaml_str(name);
        let image = yaml_str(&service["image"]);
        let tag = image
            .rsplit_once(':')
            .filter(|(_, tag)| !tag.contains('/'))
            .map(|(_, tag)| tag)
            .unwrap_or_else(|| panic!("{name}: image {image} has no tag"));
        assert!(
            tag != "latest" && has_dot_version(tag),
            "{name}: image {image} is not pinned"
        );
        let test = service["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: no health check"));
        assert!(
            test.len() >= 2 && test[0] != "NONE",
            "{name}: health check {test:?}"
        );
        assert_ne!(service["healthcheck"]["disable"], true, "{name}");
        // Bind mounts from the repository exist.
        for volume in service_volumes(service) {
            if let Some(source) = volume.strip_prefix("./observability/") {
                let source = source.split(':').next().unwrap_or_default();
                assert!(
                    observability(source).exists(),
                    "{name}: mounts missing {source}"
                );
            }
        }
        for (dependency, condition) in service["depends_on"].as_mapping().into_iter().flatten() {
            assert!(
                services.contains_key(dependency),
                "{name} depends on unknown {dependency:?}"
            );
            let condition = yaml_str(&condition["condition"]);
            assert!(
                [
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully"
                ]
                .contains(&condition),
                "{name}: condition {condition}"
            );
        }
    }
    assert_eq!(
        compose["services"]["troupe"]["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
}

#[test]
fn compose_wires_troupe_to_its_telemetry_and_keeps_30_days_everywhere() {
    let compose = compose();
    let troupe = &compose["services"]["troupe"]["environment"];
    assert_eq!(
        troupe["TROUPE__TELEMETRY__OTLP_ENDPOINT"],
        "http://jaeger:4318"
    );
    assert_eq!(troupe["TROUPE__TELEMETRY__LOG_FORMAT"], "json");
    assert!(yaml_str(&troupe["TROUPE__DATABASE__URL"]).starts_with("postgres://"));

    let prometheus = &compose["services"]["prometheus"];
    let flags: Vec<&str> = yaml_seq(&prometheus["command"])
        .iter()
        .map(yaml_str)
        .collect();
    assert!(
        flags.contains(&"--storage.tsdb.retention.time=30d"),
        "{flags:?}"
    );
    assert!(
        flags.contains(&"--config.file=/etc/prometheus/prometheus.yml"),
        "{flags:?}"
    );
    assert!(service_volumes(prometheus)
        .contains(&"./observability/prometheus:/etc/prometheus:ro".to_owned()));

    let loki = &compose["services"]["loki"];
    assert!(format!("{:?}", loki["command"]).contains("-config.file=/etc/loki/loki.yml"));
    assert!(service_volumes(loki)
        .contains(&"./observability/loki/loki.yml:/etc/loki/loki.yml:ro".to_owned()));
    assert_eq!(
        read_yaml(&observability("loki/loki.yml"))["limits_config"]["retention_period"],
        "720h"
    );

    let jaeger = &compose["services"]["jaeger"];
    assert!(format!("{:?}", jaeger["command"]).contains("/etc/jaeger/config.yaml"));
    assert!(service_volumes(jaeger)
        .contains(&"./observability/jaeger/config.yaml:/etc/jaeger/config.yaml:ro".to_owned()));

    let alertmanager = &compose["services"]["alertmanager"];
    assert!(format!("{:?}", alertmanager["command"])
        .contains("--config.file=/etc/alertmanager/alertmanager.yml"));
    assert!(service_volumes(alertmanager)
        .contains(&"./observability/alertmanager:/etc/alertmanager:ro".to_owned()));

    let alloy = &compose["services"]["alloy"];
    assert!(format!("{:?}", alloy["command"]).contains("/etc/alloy/config.alloy"));
    assert!(
        service_volumes(alloy).contains(&"/var/run/docker.sock:/var/run/docker.sock:ro".to_owned())
    );
    // Alloy filters containers by this project name.
    assert_eq!(compose["name"], "troupe");

    // Prometheus scrapes the troupe service and alerts the alertmanager service, on their published ports.
    let config = read_yaml(&observability("prometheus/prometheus.yml"));
    assert_eq!(
        config["scrape_configs"][0]["static_configs"][0]["targets"][0],
        "troupe:8080"
    );
    assert_eq!(
        config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0],
        "alertmanager:9093"
    );
}
