//! Swarm consensus (issue 18): QA's verification given to several voters, each looking through its own lens,
//! and the rule that turns their votes into one verdict. Only the vocabulary and the arithmetic live here; the
//! flow that asks the voters is `director/flow/consensus.rs`.

use serde::{Deserialize, Serialize};

/// Most voters a verification may have.
pub const MAX_VOTERS: u32 = 5;

/// What each voter looks at first: voter `n` (from 1) takes lens `n - 1`. Different framings of the same
/// question make the voters' errors less alike than asking one framing several times.
pub const LENSES: [&str; MAX_VOTERS as usize] = [
    "correctness: does the work do what the task asks",
    "completeness: does it cover every part of the task",
    "tests: do the tests really exercise the code, edge cases included",
    "clarity: is the answer clear and to the point",
    "robustness: would the code hold up on unexpected input",
];

/// How the votes become one verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsensusRule {
    /// More than half of the voters; a tie is no consensus, and fails.
    #[default]
    Majority,
    /// Every voter; a split vote is no consensus, and fails.
    Unanimous,
    /// Each voter's probability of `pass` (its confidence; 1 or 0 for a vote without probabilities),
    /// averaged: above one half passes, below fails, exactly one half is no consensus, and fails.
    Weighted,
}

impl ConsensusRule {
    /// Every rule.
    pub const ALL: [ConsensusRule; 3] = [
        ConsensusRule::Majority,
        ConsensusRule::Unanimous,
        ConsensusRule::Weighted,
    ];

    /// The stable name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ConsensusRule::Majority => "majority",
            ConsensusRule::Unanimous => "unanimous",
            ConsensusRule::Weighted => "weighted",
        }
    }
}

/// How many voters QA's verification has, and the rule (`director.consensus`, or a task's
/// `options.consensus`). One voter is the plain verdict: no consensus is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsensusSpec {
    /// 1..=[`MAX_VOTERS`].
    #[serde(deserialize_with = "super::json_types::whole")]
    pub voters: u32,
    /// How their votes are combined.
    #[serde(default)]
    pub rule: ConsensusRule,
}

impl Default for ConsensusSpec {
    fn default() -> Self {
        ConsensusSpec {
            voters: 1,
            rule: ConsensusRule::Majority,
        }
    }
}

/// One voter's vote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vote {
    /// The voter, from 1.
    pub voter: u32,
    /// What it looked at first.
    pub lens: &'static str,
    /// `pass` or `fail`.
    pub verdict: String,
    /// Its probability of `pass` (the model's own, over the two options), when it has one.
    pub p_pass: Option<f64>,
    /// Its feedback.
    pub feedback: String,
}

impl Vote {
    fn passes(&self) -> bool {
        self.verdict == "pass"
    }

    /// The weight of `pass` in this vote: its probability, or 1/0 for a vote without probabilities.
    fn pass_weight(&self) -> f64 {
        self.p_pass.unwrap_or(if self.passes() { 1.0 } else { 0.0 })
    }
}

/// What the votes came to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The verdict: `pass` or `fail`.
    pub verdict: &'static str,
    /// Whether the rule was met (false: a tie or a split vote, which fails).
    pub reached: bool,
    /// The share of voters whose vote is the verdict.
    pub agreement: f64,
    /// For the weighted rule: the mean probability of `pass`.
    pub weight_of_pass: Option<f64>,
    /// The voters whose vote is not the verdict.
    pub dissent: Vec<u32>,
}

/// Applies `rule` to `votes` (at least one).
pub fn decide(rule: ConsensusRule, votes: &[Vote]) -> Outcome {
    let total = votes.len().max(1) as f64;
    let passes = votes.iter().filter(|vote| vote.passes()).count() as f64;
    let count = |passing: f64| -> (&'static str, bool) {
        if passing * 2.0 > total {
            ("pass", true)
        } else if (total - passing) * 2.0 > total {
            ("fail", true)
        } else {
            ("fail", false)
        }
    };
    let (verdict, reached, weight_of_pass) = match rule {
        ConsensusRule::Majority => {
            let (verdict, reached) = count(passes);
            (verdict, reached, None)
        }
        ConsensusRule::Unanimous => {
            if passes == total {
                ("pass", true, None)
            } else if passes == 0.0 {
                ("fail", true, None)
            } else {
                ("fail", false, None)
            }
        }
        ConsensusRule::Weighted => {
            let mean = votes.iter().map(Vote::pass_weight).sum::<f64>() / total;
            // The mean weight of pass, as a share of the voters.
            let (verdict, reached) = count(mean * total);
            (verdict, reached, Some(mean))
        }
    };
    let dissent: Vec<u32> = votes
        .iter()
        .filter(|vote| vote.verdict != verdict)
        .map(|vote| vote.voter)
        .collect();
    Outcome {
        verdict,
        reached,
        agreement: (total - dissent.len() as f64) / total,
        weight_of_pass,
        dissent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(voter: u32, verdict: &str, p_pass: Option<f64>) -> Vote {
        Vote {
            voter,
            lens: LENSES[(voter - 1) as usize],
            verdict: verdict.to_owned(),
            p_pass,
            feedback: format!("voter {voter}"),
        }
    }

    #[test]
    fn a_majority_with_one_dissent_passes_and_names_the_dissent() {
        let votes = [
            vote(1, "pass", Some(0.9)),
            vote(2, "pass", Some(0.7)),
            vote(3, "fail", Some(0.2)),
        ];
        let outcome = decide(ConsensusRule::Majority, &votes);
        assert_eq!(outcome.verdict, "pass");
        assert!(outcome.reached);
        assert!((outcome.agreement - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(outcome.dissent, vec![3]);
    }

    #[test]
    fn a_tie_or_a_split_is_no_consensus_and_fails() {
        let tie = [vote(1, "pass", None), vote(2, "fail", None)];
        let outcome = decide(ConsensusRule::Majority, &tie);
        assert_eq!((outcome.verdict, outcome.reached), ("fail", false));
        let split = [
            vote(1, "pass", None),
            vote(2, "pass", None),
            vote(3, "fail", None),
        ];
        let outcome = decide(ConsensusRule::Unanimous, &split);
        assert_eq!((outcome.verdict, outcome.reached), ("fail", false));
        assert_eq!(outcome.dissent, vec![1, 2]);
        let all = [vote(1, "pass", None), vote(2, "pass", None)];
        assert_eq!(decide(ConsensusRule::Unanimous, &all).verdict, "pass");
    }

    #[test]
    fn weighted_votes_count_their_confidence() {
        // Two lukewarm passes lose to one confident fail.
        let votes = [
            vote(1, "pass", Some(0.55)),
            vote(2, "pass", Some(0.55)),
            vote(3, "fail", Some(0.05)),
        ];
        let outcome = decide(ConsensusRule::Weighted, &votes);
        assert_eq!(outcome.verdict, "fail");
        assert!((outcome.weight_of_pass.unwrap() - 0.383_333).abs() < 1e-5);
        assert_eq!(outcome.dissent, vec![1, 2]);
        // A vote without probabilities weighs all or nothing.
        let unscored = [vote(1, "pass", None), vote(2, "fail", Some(0.4))];
        assert_eq!(decide(ConsensusRule::Weighted, &unscored).verdict, "pass");
    }

    #[test]
    fn specs_read_as_json_and_rules_have_names() {
        let spec: ConsensusSpec =
            serde_json::from_str(r#"{"voters": 3, "rule": "weighted"}"#).unwrap();
        assert_eq!(spec.rule.as_str(), "weighted");
        assert!(
            serde_json::from_str::<ConsensusSpec>(r#"{"voters": 3, "rule": "loudest"}"#).is_err()
        );
        assert_eq!(
            serde_json::from_str::<ConsensusSpec>(r#"{"voters": 2}"#)
                .unwrap()
                .rule,
            ConsensusRule::Majority
        );
    }
}
