//! A real Prometheus (the `prometheus` binary) scrapes two real Troupe instances every second, with the
//! project's rules loaded, while they run a small workload on the real model: a task whose QA step panics once
//! (chaos) and is restarted, a task cancelled while the model generates, and (on the second instance, which
//! allows no restart) a task that fails when its QA step panics. Then:
//! - every rule evaluates in Prometheus without error;
//! - every PromQL query of every dashboard panel and every rule expression parses, and returns data whenever
//!   every series it selects exists in Prometheus (which series exist is asked of Prometheus, not listed
//!   here: a panel on a metric Troupe does not export yet, or that the workload did not touch, may be empty);
//! - a scrape of `/metrics` passes `promtool check metrics`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

use crate::helpers::spawn_app_with;
use crate::observability_files::{
    observability, prometheus_panel_queries, prometheus_rules, read_yaml, selectors,
    split_threshold,
};

/// Grafana's built-in variables, as a dashboard would fill them in.
const GRAFANA_VARIABLES: [(&str, &str); 4] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("$__range", "5m"),
    // The scale-out dashboard's node filter: every node.
    ("$instance", ".*"),
];

/// A Prometheus process on a free port, killed when dropped (also when the test panics).
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    client: awc::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Writes a copy of `observability/prometheus/prometheus.yml` that scrapes `127.0.0.1:<port>` for each of
    /// `app_ports` instead of `troupe:8080` and evaluates the project's rules every second, and starts
    /// Prometheus on it.
    fn start(dir: &Path, app_ports: &[u16]) -> Self {
        let mut config = read_yaml(&observability("prometheus/prometheus.yml"));
        config["global"]["scrape_interval"] = Yaml::from("1s");
        config["global"]["evaluation_interval"] = Yaml::from("1s");
        let rules = observability("prometheus/rules").join("*.yml");
        config["rule_files"] = Yaml::Sequence(vec![Yaml::from(rules.display().to_string())]);
        let mut replaced = 0;
        let targets: Vec<Yaml> = app_ports
            .iter()
            .map(|port| Yaml::from(format!("127.0.0.1:{port}")))
            .collect();
        for job in config["scrape_configs"]
            .as_sequence_mut()
            .into_iter()
            .flatten()
        {
            for group in job["static_configs"]
                .as_sequence_mut()
                .into_iter()
                .flatten()
            {
                if group["targets"] == Yaml::Sequence(vec![Yaml::from("troupe:8080")]) {
                    group["targets"] = Yaml::Sequence(targets.clone());
                    replaced += 1;
                }
            }
        }
        assert_eq!(replaced, 1, "prometheus.yml should scrape troupe:8080 once");
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();

        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `prometheus` ({e}); `scripts/setup.sh test` installs it")
            });
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            client: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until Prometheus answers `/-/ready` (failing with its log if it exits).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log_tail());
            }
            let ready = self
                .client
                .get(format!("{}/-/ready", self.base))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<path>` with `params`: the JSON body, whatever the status.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let mut response = self
            .client
            .get(format!("{}/api/v1/{path}", self.base))
            .query(&params)
            .unwrap()
            .send()
            .await
            .unwrap();
        response.json::<Value>().limit(16 << 20).await.unwrap()
    }

    /// An instant query; the response body.
    async fn query(&self, expr: &str) -> Value {
        self.api("query", &[("query", expr)]).await
    }

    /// The number of samples of an instant query that succeeded (panics on any error).
    async fn samples(&self, expr: &str) -> usize {
        let body = self.query(expr).await;
        assert_eq!(body["status"], "success", "`{expr}`: {body}");
        match body["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => body["data"]["result"].as_array().map_or(0, Vec::len),
            Some("scalar" | "string") => 1,
            other => panic!("`{expr}`: unexpected result type {other:?}"),
        }
    }

    /// The value of a one-sample instant query (0 when empty).
    async fn value(&self, expr: &str) -> f64 {
        let body = self.query(expr).await;
        assert_eq!(body["status"], "success", "`{expr}`: {body}");
        body["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `expr` until its value reaches `at_least`.
    async fn wait_for_value(&self, expr: &str, at_least: f64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.value(expr).await < at_least {
            assert!(
                Instant::now() < deadline,
                "`{expr}` did not reach {at_least} within {limit:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn substitute(expr: &str) -> String {
    let concrete = GRAFANA_VARIABLES
        .iter()
        .fold(expr.to_owned(), |expr, (name, value)| {
            expr.replace(name, value)
        });
    assert!(
        !concrete.contains('$'),
        "unknown Grafana variable in `{expr}`"
    );
    concrete
}

/// Checks expressions against Prometheus, remembering which selectors have series.
struct Checker<'a> {
    prometheus: &'a Prometheus,
    has_series: BTreeMap<String, bool>,
    with_data: usize,
    without_series: Vec<String>,
}

impl Checker<'_> {
    /// `expr` must evaluate; if every series it selects exists, it must return data.
    async fn check(&mut self, place: &str, expr: &str) {
        let body = self.prometheus.query(expr).await;
        assert_eq!(
            body["status"], "success",
            "{place}: `{expr}` does not evaluate: {body}"
        );
        let mut missing = Vec::new();
        for selector in selectors(expr) {
            if !self.has_series.contains_key(&selector) {
                let exists = self.prometheus.samples(&format!("count({selector})")).await > 0;
                self.has_series.insert(selector.clone(), exists);
            }
            if !self.has_series[&selector] {
                missing.push(selector);
            }
        }
        if !missing.is_empty() {
            self.without_series
                .push(format!("{place} (no series: {})", missing.join(", ")));
            return;
        }
        // A series born in the last scrapes may not have the two samples a rate needs yet: ask again after a
        // few more scrapes before calling the query empty.
        let mut samples = self.prometheus.samples(expr).await;
        for _ in 0..3 {
            if samples > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            samples = self.prometheus.samples(expr).await;
        }
        if samples == 0 {
            // What Prometheus holds for each selector over the last minute, to tell why.
            let mut held = Vec::new();
            for selector in selectors(expr).into_iter().chain(["up".to_owned()]) {
                let range = format!("count_over_time({selector}[1m])");
                held.push(format!(
                    "{range} = {}",
                    self.prometheus.query(&range).await["data"]
                ));
            }
            panic!(
                "{place}: `{expr}` returns no data although every series it selects exists:\n{}",
                held.join("\n")
            );
        }
        self.with_data += 1;
    }
}

#[actix_rt::test]
async fn every_dashboard_query_and_rule_runs_on_a_real_prometheus_scraping_troupe() {
    let started = Instant::now();
    // Chaos: the QA agent panics on its first step and is restarted (restart metrics get series).
    let app = spawn_app_with(|settings| settings.chaos.panic_once = vec!["qa".into()]).await;
    // The same panic with no restart allowed fails the task (failure metrics get series).
    let failing = spawn_app_with(|settings| {
        settings.chaos.panic_once = vec!["qa".into()];
        settings.supervision.max_restarts = 0;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut prometheus = Prometheus::start(dir.path(), &[app.port, failing.port]);
    prometheus.wait_ready().await;
    prometheus
        .wait_for_value(
            "count(up{job=\"troupe\"} == 1)",
            2.0,
            Duration::from_secs(20),
        )
        .await;

    // Workload: a task that completes after a restart and one that fails, side by side; then a task
    // cancelled while the model generates.
    let completed = app.submit("Explain what a linked list is").await;
    let failed = failing.submit("Explain what a stack is").await;
    let (completed_events, failed_events) = futures_util::future::join(
        app.follow(&completed, 0, Duration::from_secs(120)),
        failing.follow(&failed, 0, Duration::from_secs(120)),
    )
    .await;
    assert_eq!(completed_events.last().unwrap()["kind"], "task.completed");
    assert_eq!(failed_events.last().unwrap()["kind"], "task.failed");
    let cancelled = app.submit("Write a Python class for a bank account").await;
    let socket = app.socket_after_first_token(&cancelled).await;
    let (status, body) = app.post(&format!("/api/v1/tasks/{cancelled}/cancel")).await;
    assert_eq!(status, 202, "{body}");
    app.wait_for_task(&cancelled, Duration::from_secs(10), |t| {
        t["status"] == "cancelled"
    })
    .await;
    drop(socket);
    // A client mistake, for the HTTP error panels.
    let (status, body) = app.post_task(&serde_json::json!({ "prompt": "" })).await;
    assert!((400..500).contains(&status), "{status} {body}");

    // Two more successful scrapes of each instance after the workload (a failed scrape also writes `up`, as
    // 0, but no other series), then a rule evaluation after them.
    let scrapes = "min(sum_over_time(up{job=\"troupe\"}[1h]))";
    let scraped = prometheus.value(scrapes).await;
    prometheus
        .wait_for_value(scrapes, scraped + 2.0, Duration::from_secs(15))
        .await;
    let after = prometheus.value("time()").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let rules = loop {
        let rules = prometheus.api("rules", &[]).await;
        let groups = rules["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let evaluated = !groups.is_empty()
            && groups.iter().all(|group| {
                group["lastEvaluation"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t.timestamp_millis() as f64 / 1000.0 > after)
            });
        if evaluated {
            break rules;
        }
        assert!(Instant::now() < deadline, "rules not evaluated: {rules}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The workload produced the series it should have; otherwise the checks below would prove little.
    for selector in [
        "troupe_tasks_total{outcome=\"completed\"}",
        "troupe_tasks_total{outcome=\"cancelled\"}",
        "troupe_tasks_total{outcome=\"failed\"}",
        "troupe_supervisor_restarts_total{agent=\"qa\",reason=\"panic\"}",
        "troupe_llm_tokens_total",
        "troupe_step_duration_seconds_bucket",
        "troupe:llm_tokens:per_minute",
    ] {
        assert!(
            prometheus.samples(&format!("count({selector})")).await > 0,
            "no series {selector} after the workload"
        );
    }

    // Every rule evaluated without error in Prometheus itself.
    let mut evaluated_rules = 0;
    for group in rules["data"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            assert_eq!(rule["health"], "ok", "rule failed in prometheus: {rule}");
            evaluated_rules += 1;
        }
    }
    let rule_definitions = prometheus_rules();
    assert_eq!(evaluated_rules, rule_definitions.len(), "{rules}");

    let mut checker = Checker {
        prometheus: &prometheus,
        has_series: BTreeMap::new(),
        with_data: 0,
        without_series: Vec::new(),
    };
    let queries = prometheus_panel_queries();
    for query in &queries {
        checker.check(&query.place, &substitute(&query.expr)).await;
    }
    for rule in &rule_definitions {
        let expr = rule["expr"].as_str().unwrap();
        if let Some(alert) = rule["alert"].as_str() {
            // The whole alert expression parses; its query (before the threshold) returns data.
            assert_eq!(prometheus.query(expr).await["status"], "success", "{alert}");
            let (query, _, _) = split_threshold(expr);
            checker.check(&format!("alert {alert}"), &query).await;
        } else {
            let record = rule["record"].as_str().unwrap();
            checker.check(&format!("record {record}"), expr).await;
        }
    }
    let total = queries.len() + rule_definitions.len();
    eprintln!(
        "prometheus_live: {} of {total} expressions returned data; without series (not exported yet or not \
         exercised): {:#?}",
        checker.with_data, checker.without_series
    );
    assert!(
        checker.with_data * 2 > total,
        "only {} of {total} expressions could be checked for data",
        checker.with_data
    );

    // promtool lints a real scrape.
    let scrape = app.metrics().await;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `promtool` ({e}); `scripts/setup.sh test` installs it")
        });
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
    eprintln!("prometheus_live: took {:?}", started.elapsed());
}
