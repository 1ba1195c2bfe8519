//! Swarm consensus at QA's verification (issue 18): with `director.consensus.voters` (or a task's
//! `options.consensus.voters`) above one, the verification goes to that many voters at once, each a QA
//! dispatch looking through its own lens (`domain::consensus::LENSES`) and answering with a scored choice of
//! pass or fail (`agents::qa`). Each vote is a `decision.made` (kind `vote`, with its probabilities); the
//! rule combines them (`domain::consensus::decide`) into the verdict the flow acts on, announced as
//! `consensus.reached` (the votes, the outcome, the share agreeing, who dissented and why), a `consensus`
//! span linked to each voter's `vote` span, and `troupe_consensus_total` / `troupe_consensus_agreement_ratio`.

use std::sync::Arc;

use futures_util::future::join_all;
use opentelemetry::trace::TraceContextExt;
use serde_json::json;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{Decision, FlowError, TaskFlow};
use crate::domain::consensus::{decide, ConsensusSpec, Vote, LENSES};
use crate::domain::{shorten, AgentKind, EventKind, StepStatus};
use crate::llm::models::TaskModels;
use crate::messages::{StepKind, StepOutput, StepSpec, Verdict};

/// Longest feedback the combined verdict carries back to the work, in characters.
const FEEDBACK_CHARS: usize = 400;

impl TaskFlow {
    /// The task's consensus: its `options.consensus`, else `director.consensus`.
    pub(super) fn consensus(&self) -> ConsensusSpec {
        self.options
            .consensus
            .unwrap_or(self.deps.settings.consensus)
    }

    /// Runs the verification at `position` as a vote of `spec.voters` voters (see the module's docs); the
    /// step is done with the combined verdict.
    pub(super) async fn run_consensus(
        &self,
        position: usize,
        llm: &Arc<TaskModels>,
        spec: ConsensusSpec,
    ) -> Result<StepOutput, FlowError> {
        let idx = self.board(|board| {
            let step = &mut board.steps[position];
            step.status = StepStatus::Running;
            step.idx
        });
        self.update_step(position, true);
        let base = StepSpec {
            review: self.review_lines(),
            ..self.spec_for(position, StepKind::Verify, 1)
        };
        let spans: Vec<tracing::Span> = (1..=spec.voters)
            .map(|voter| {
                tracing::info_span!(
                    "vote",
                    otel.name = %format!("vote {voter}"),
                    troupe.step = idx,
                    troupe.voter = voter,
                    troupe.vote = tracing::field::Empty,
                )
            })
            .collect();
        let ballots = (1..=spec.voters)
            .zip(spans.iter().cloned())
            .map(|(voter, span)| {
                let spec = StepSpec {
                    voter: Some(voter),
                    ..base.clone()
                };
                // Each voter's try is numbered by the voter, so that its points and purposes do not depend on
                // which voter was sent first.
                self.dispatch_retrying(position, AgentKind::Qa, spec, llm, move |flow| {
                    flow.board(|board| board.steps[position].attempts += 1);
                    voter
                })
                .instrument(span)
            });
        let mut votes = Vec::with_capacity(spans.len());
        for (voter, output) in (1..=spec.voters).zip(join_all(ballots).await) {
            let output = output?;
            let vote = self.announce_vote(idx, voter, &output);
            if let Some(span) = spans.get((voter - 1) as usize) {
                span.record("troupe.vote", vote.verdict.as_str());
            }
            votes.push(vote);
        }
        let outcome = decide(spec.rule, &votes);
        let span = tracing::info_span!(
            "consensus",
            otel.name = "consensus verify",
            troupe.step = idx,
            troupe.consensus.rule = spec.rule.as_str(),
            troupe.consensus.voters = spec.voters,
            troupe.consensus.outcome = outcome.verdict,
            troupe.consensus.reached = outcome.reached,
            troupe.consensus.agreement = outcome.agreement,
        );
        for vote_span in &spans {
            span.add_link(vote_span.context().span().span_context().clone());
        }
        let feedback = {
            let said: Vec<String> = votes
                .iter()
                .filter(|vote| vote.verdict == outcome.verdict)
                .map(|vote| vote.feedback.clone())
                .filter(|feedback| !feedback.is_empty())
                .collect();
            shorten(&said.join("; "), FEEDBACK_CHARS)
        };
        let dissent: Vec<serde_json::Value> = votes
            .iter()
            .filter(|vote| outcome.dissent.contains(&vote.voter))
            .map(|vote| json!({ "voter": vote.voter, "verdict": vote.verdict, "feedback": vote.feedback }))
            .collect();
        span.in_scope(|| {
            self.deps.agent.events.emit(
                self.task_id,
                EventKind::ConsensusReached,
                Some(AgentKind::Qa),
                json!({
                    "step": idx,
                    "round": self.round,
                    "rule": spec.rule,
                    "voters": spec.voters,
                    "votes": votes,
                    "outcome": outcome.verdict,
                    "reached": outcome.reached,
                    "agreement": outcome.agreement,
                    "weight_of_pass": outcome.weight_of_pass,
                    "dissent": dissent,
                }),
            );
        });
        let metrics = &self.deps.agent.metrics;
        let label = if outcome.reached {
            outcome.verdict
        } else {
            "none"
        };
        metrics
            .consensus
            .with_label_values(&[spec.rule.as_str(), label])
            .inc();
        metrics.consensus_agreement.observe(outcome.agreement);
        let verdict = Verdict {
            verdict: outcome.verdict.to_owned(),
            feedback,
        };
        let text = serde_json::to_string(&verdict).unwrap_or_default();
        self.board(|board| {
            let step = &mut board.steps[position];
            step.status = StepStatus::Done;
            step.output = Some(text.clone());
        });
        self.update_step(position, false);
        Ok(StepOutput {
            text,
            verdict: Some(verdict),
            ..StepOutput::default()
        })
    }

    /// One voter's vote, as a decision (`decision.made`, kind `vote`, with the options' probabilities).
    fn announce_vote(&self, idx: i32, voter: u32, output: &StepOutput) -> Vote {
        let lens = LENSES
            .get((voter.saturating_sub(1)) as usize)
            .copied()
            .unwrap_or(LENSES[0]);
        let verdict = output
            .verdict
            .as_ref()
            .map_or_else(|| "fail".to_owned(), |found| found.verdict.clone());
        let feedback = output
            .verdict
            .as_ref()
            .map_or_else(String::new, |found| found.feedback.clone());
        let scored = output.vote.as_ref().filter(|choice| choice.scored);
        let probability = |name: &str| {
            scored.and_then(|choice| {
                choice
                    .options
                    .iter()
                    .find(|option| option.name == name)
                    .map(|option| option.probability)
            })
        };
        let options = output.vote.as_ref().map_or_else(
            || json!([{ "name": "pass" }, { "name": "fail" }]),
            |choice| {
                json!(choice
                    .options
                    .iter()
                    .map(|option| json!({ "name": option.name, "probability": option.probability }))
                    .collect::<Vec<_>>())
            },
        );
        let confidence = probability(&verdict);
        self.announce_decision(&Decision {
            agent: AgentKind::Qa,
            kind: "vote",
            step: Some(idx),
            options: options.to_string(),
            chosen: &verdict,
            confidence,
            reasoning: Some(&feedback),
        });
        self.deps.agent.events.emit(
            self.task_id,
            EventKind::DecisionMade,
            Some(AgentKind::Qa),
            json!({
                "kind": "vote",
                "step": idx,
                "voter": voter,
                "lens": lens,
                "options": options,
                "chosen": verdict,
                "confidence": confidence,
                "scored": scored.is_some(),
                "reasoning": feedback,
            }),
        );
        Vote {
            voter,
            lens,
            verdict,
            p_pass: probability("pass"),
            feedback,
        }
    }
}
