//! First-step routing accuracy of the Director on the embedded model, raw and calibrated.
//!
//! For each prompt of `benches/data/routing.json` (35 prompts: coding tasks, questions of fact, review/test
//! requests, ambiguous ones, each with the agent a sensible Director would give its first step) this runs
//! the Director's real requests on the real embedded model: the plan (`plan::plan_request`, default limits,
//! no recalled memories), then the assignment of the plan's first step (`plan::assign_request`). The raw
//! choice is the model's own (softmax over the options' first-token logits); the calibrated one divides it
//! by the content-free assignment's scores (`plan::calibration_request`, made once, as the Director's cache
//! does) with `calibration::calibrate`, the same functions the flow uses. Both come from the same call, so
//! the two accuracies differ by calibration alone.
//!
//! The assignment's reason is cut to one token here: it is generated after the options are scored, so it
//! cannot change the choice, and it is most of the call's time. `TROUPE_BENCH_SAMPLING=off` turns the
//! repetition penalty and DRY off (the plans change; the scoring does not). `TROUPE_BENCH_SKIP=k` and
//! `TROUPE_BENCH_LIMIT=n` run n prompts after the first k (the plans are greedy, so parts add up). Per-prompt lines go to stderr; one JSON object (accuracy raw and calibrated, per
//! category, confusion matrices expected -> chosen) to stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use troupe::config::Settings;
use troupe::director::calibration::{calibrate, most_probable};
use troupe::director::plan;
use troupe::llm::embedded::EmbeddedProvider;
use troupe::llm::{LlmProvider, LlmRequest, ScoredOption};
use troupe::telemetry::metrics::Metrics;

#[derive(Deserialize)]
struct RoutingSet {
    prompts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    category: String,
    expected: String,
}

/// Counts of (expected, chosen).
type Confusion = BTreeMap<String, BTreeMap<String, u32>>;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let set: RoutingSet = serde_json::from_str(&std::fs::read_to_string(
        root.join("benches/data/routing.json"),
    )?)?;
    let limit = std::env::var("TROUPE_BENCH_LIMIT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    let skip = std::env::var("TROUPE_BENCH_SKIP")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let mut settings = Settings::load_from(&root.join("config"), None)?;
    settings.llm.model = root
        .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string();
    settings.llm.worker_command = env!("CARGO_BIN_EXE_troupe").into();
    // Accuracy does not depend on speed: on a busy machine a plan can take minutes, which is no failure.
    settings.llm.request_timeout_seconds = 1800;
    let sampling_on = std::env::var("TROUPE_BENCH_SAMPLING").map_or(true, |v| v != "off");
    if !sampling_on {
        settings.llm.sampling.repeat_penalty = 1.0;
        settings.llm.sampling.dry_multiplier = 0.0;
    }
    let max_steps = settings.director.max_steps;
    let mut limits = settings.llm.limits;
    limits.decision_reason_tokens = 1;

    actix_rt::System::new().block_on(async move {
        let provider = EmbeddedProvider::start(&settings.llm, Metrics::new()?).await?;
        let call = |request: LlmRequest| {
            let provider = &provider;
            async move {
                provider
                    .complete(request, Arc::new(|_, _| {}), CancellationToken::new())
                    .await
            }
        };
        let started = Instant::now();
        let content_free = call(plan::calibration_request(&limits))
            .await?
            .choice
            .ok_or_else(|| anyhow::anyhow!("the content-free call has no choice"))?
            .options;
        eprintln!("content-free: {}", figures(&content_free));

        let mut raw_confusion = Confusion::new();
        let mut calibrated_confusion = Confusion::new();
        let mut by_category: BTreeMap<String, [u32; 3]> = BTreeMap::new();
        let mut cases = 0u32;
        let mut raw_right = 0u32;
        let mut calibrated_right = 0u32;
        let mut malformed_plans = 0u32;
        for case in set.prompts.iter().skip(skip).take(limit) {
            let planned = call(plan::plan_request(&case.prompt, max_steps, &limits, &[])).await?;
            // A plan the flow could not read fails the task before any routing; the bench routes the prompt
            // itself then (what a first step would say), and counts it.
            let first_step = match plan::parse_plan(&planned.text, max_steps) {
                Ok(parsed) => parsed.steps[0].instruction.clone(),
                Err(_) => {
                    malformed_plans += 1;
                    case.prompt.clone()
                }
            };
            let assigned = call(plan::assign_request(&case.prompt, 1, &first_step, &limits)).await?;
            let raw = assigned
                .choice
                .ok_or_else(|| anyhow::anyhow!("the assignment has no choice"))?
                .options;
            let calibrated = calibrate(&raw, &content_free)
                .ok_or_else(|| anyhow::anyhow!("calibration failed"))?;
            let raw_pick = pick(&raw)?;
            let calibrated_pick = pick(&calibrated)?;
            cases += 1;
            let counts = by_category.entry(case.category.clone()).or_default();
            counts[0] += 1;
            if raw_pick == case.expected {
                raw_right += 1;
                counts[1] += 1;
            }
            if calibrated_pick == case.expected {
                calibrated_right += 1;
                counts[2] += 1;
            }
            *raw_confusion
                .entry(case.expected.clone())
                .or_default()
                .entry(raw_pick.clone())
                .or_default() += 1;
            *calibrated_confusion
                .entry(case.expected.clone())
                .or_default()
                .entry(calibrated_pick.clone())
                .or_default() += 1;
            eprintln!(
                "[{}] expected {} | raw {} ({}) | calibrated {} ({}) | {} | step 1: {}",
                case.category,
                case.expected,
                raw_pick,
                figures(&raw),
                calibrated_pick,
                figures(&calibrated),
                case.prompt,
                first_step
            );
        }
        let share = |right: u32| f64::from(right) / f64::from(cases.max(1));
        println!(
            "{}",
            json!({
                "prompts": cases,
                "sampling": if sampling_on { "defaults" } else { "off" },
                "malformed_plans": malformed_plans,
                "content_free": content_free.iter().map(|o| json!({"name": o.name, "probability": o.probability})).collect::<Vec<_>>(),
                "accuracy_raw": share(raw_right),
                "accuracy_calibrated": share(calibrated_right),
                "by_category": by_category.iter().map(|(category, [n, raw, calibrated])| {
                    (category.clone(), json!({"prompts": n, "raw": raw, "calibrated": calibrated}))
                }).collect::<BTreeMap<_, _>>(),
                "confusion_raw": raw_confusion,
                "confusion_calibrated": calibrated_confusion,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
        Ok(())
    })
}

fn pick(options: &[ScoredOption]) -> anyhow::Result<String> {
    most_probable(options)
        .map(|option| option.name.clone())
        .ok_or_else(|| anyhow::anyhow!("no options"))
}

fn figures(options: &[ScoredOption]) -> String {
    options
        .iter()
        .map(|option| format!("{} {:.2}", option.name, option.probability))
        .collect::<Vec<_>>()
        .join(", ")
}
