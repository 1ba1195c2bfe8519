//! The embedded model's sampler chain on the real model: a prompt that plain greedy decoding continues as a
//! loop (`1, 1, 1, ...` to the token budget) ends on its own with the default `[llm.sampling]`, and turning
//! the penalties off brings the loop back (so this test can fail).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use troupe::config::SamplingSettings;
use troupe::llm::embedded::EmbeddedProvider;
use troupe::llm::{ChatMessage, LlmOutput, LlmProvider, LlmRequest, OutputSpec};
use troupe::telemetry::metrics::Metrics;

use crate::helpers::model_settings;

/// Greedy SmolLM2-135M continues this list with the same number until the budget runs out.
const LOOPING_PROMPT: &str = "List the numbers: 0, 0, 0, 0, 0,";
const BUDGET: u32 = 64;

/// The longest run of identical comma-separated items in `text`.
fn longest_run(text: &str) -> usize {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    let mut longest = 0;
    let mut run = 0;
    for (index, item) in items.iter().enumerate() {
        run = if index > 0 && items[index - 1] == *item {
            run + 1
        } else {
            1
        };
        longest = longest.max(run);
    }
    longest
}

async fn generate(sampling: SamplingSettings) -> LlmOutput {
    let mut settings = model_settings();
    settings.llm.temperature = 0.0;
    settings.llm.sampling = sampling;
    let provider = EmbeddedProvider::start(&settings.llm, Metrics::new().unwrap())
        .await
        .unwrap();
    let request = LlmRequest {
        purpose: "loop".into(),
        messages: vec![ChatMessage::user(LOOPING_PROMPT)],
        max_tokens: BUDGET,
        output: OutputSpec::Text,
    };
    provider
        .complete(request, Arc::new(|_, _| {}), CancellationToken::new())
        .await
        .unwrap()
}

#[test]
fn runs_are_counted() {
    assert_eq!(longest_run("a, 1, 1, 1, b"), 3);
    assert_eq!(longest_run("no list here"), 1);
}

#[actix_rt::test]
async fn the_default_penalties_stop_a_greedy_loop_that_plain_greedy_decoding_falls_into() {
    let defaults = model_settings().llm.sampling;
    assert!(defaults.repeat_penalty > 1.0 && defaults.dry_multiplier > 0.0);

    let plain = generate(SamplingSettings {
        repeat_penalty: 1.0,
        dry_multiplier: 0.0,
        ..defaults
    })
    .await;
    assert_eq!(plain.usage.output_tokens, u64::from(BUDGET), "{plain:?}");
    assert!(
        longest_run(&plain.text) >= 8,
        "no loop without penalties: {plain:?}"
    );

    let penalised = generate(defaults).await;
    assert!(
        penalised.usage.output_tokens < u64::from(BUDGET),
        "still ran to the budget: {penalised:?}"
    );
    assert!(
        longest_run(&penalised.text) < 5,
        "still loops: {penalised:?}"
    );
}
