//! `troupe experiment run FILE`: runs an experiment (a JSON specification, as `POST /api/v1/experiments`
//! takes) in this process and prints its report as aligned tables: per variant, then per pair of variants
//! (`--json`: the report as the API gives it).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::Value;

use super::table;
use crate::config::Settings;
use crate::domain::experiment::ExperimentSpec;
use crate::service::Core;

/// Runs the experiment in `file` and prints its report.
pub async fn run(settings: Settings, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let spec: ExperimentSpec = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an experiment specification", file.display()))?;
    let core = Arc::new(Core::start(settings).await?);
    let created = core.create_experiment(spec).await;
    let outcome = match created {
        Ok(experiment) => {
            eprintln!(
                "experiment {}: {} runs, {} at once",
                experiment.id,
                experiment.runs.len(),
                core.settings.director.max_concurrent_tasks
            );
            // The runner was started by the core; wait for it by following the experiment's row (its
            // status alone), then compute the report once.
            loop {
                let stored = core.storage.experiment(experiment.id).await?;
                if stored.is_some_and(|stored| {
                    stored.status == crate::domain::experiment::ExperimentStatus::Completed
                }) {
                    break core
                        .experiment_report(experiment.id)
                        .await
                        .map_err(anyhow::Error::from);
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Err(error) => Err(anyhow::anyhow!("{error}")),
    };
    core.stop().await;
    let report = outcome?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn percent(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "–".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn seconds(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "–".to_owned(), |v| format!("{v:.2} s"))
}

fn number(value: &Value, decimals: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The report as two aligned tables.
pub fn render(report: &Value) -> String {
    let empty = Vec::new();
    let variants = report["variants"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = variants
        .iter()
        .map(|variant| {
            vec![
                variant["name"].as_str().unwrap_or("").to_owned(),
                format!("{}/{}", variant["passed"], variant["ended"]),
                percent(&variant["pass_rate"]),
                format!(
                    "{}–{}",
                    percent(&variant["pass_rate_ci95"][0]),
                    percent(&variant["pass_rate_ci95"][1])
                ),
                number(&variant["tokens_per_run"], 0),
                number(&variant["cost_usd"], 4),
                seconds(&variant["latency_p50_seconds"]),
                seconds(&variant["latency_p95_seconds"]),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            "variant",
            "passed",
            "pass rate",
            "95% CI",
            "tokens/run",
            "cost $",
            "p50",
            "p95",
        ],
        &rows,
    );
    let pairs = report["pairs"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|pair| {
            vec![
                format!(
                    "{} vs {}",
                    pair["a"].as_str().unwrap_or(""),
                    pair["b"].as_str().unwrap_or("")
                ),
                number(&pair["pass_rate"]["difference"], 3),
                number(&pair["pass_rate"]["p_value"], 4),
                number(&pair["pass_rate"]["cohens_h"], 3),
                number(&pair["latency"]["p_value"], 4),
                number(&pair["latency"]["rank_biserial"], 3),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table::render(
        &[
            "pair",
            "Δ pass rate",
            "Fisher p",
            "Cohen's h",
            "latency MW p",
            "rank-biserial",
        ],
        &rows,
    ));
    out
}
