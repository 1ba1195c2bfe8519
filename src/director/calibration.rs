//! Contextual calibration of the Director's routing ("Calibrate Before Use", Zhao et al. 2021): a small
//! model's agent choice carries a strong prior whatever the step says, so each option's probability is
//! divided by its probability for a content-free input (the same prompt with the task and step replaced by
//! "N/A") and the results are renormalised; the choice is made by the calibrated probability.
//!
//! This file holds the arithmetic and the process-wide cache of content-free scores. It does not call the
//! model: the flow makes the content-free call (`assign.calibration`, a recorded call) and hands the scores
//! here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::llm::{LlmOutput, ScoredOption};

/// The smallest content-free probability an option is divided by. Without a floor an option the
/// content-free input gives ~0 would be multiplied without bound and win every decision on a sliver of raw
/// probability; with it an option's boost over a uniform prior is at most `1 / (n * FLOOR)` (about 17x for
/// three options).
pub const CONTENT_FREE_FLOOR: f64 = 0.02;

/// Calibrates `raw` by `content_free` (both the same options, matched by name): `probability` becomes
/// `raw / max(content_free, CONTENT_FREE_FLOOR)`, renormalised over the options, and `raw_probability`
/// keeps the model's own. `None` when the options differ or the calibrated mass is not a usable number
/// (then the caller decides on the raw probabilities).
pub fn calibrate(raw: &[ScoredOption], content_free: &[ScoredOption]) -> Option<Vec<ScoredOption>> {
    if raw.is_empty() || raw.len() != content_free.len() {
        return None;
    }
    let weights = raw
        .iter()
        .map(|option| {
            let prior = content_free
                .iter()
                .find(|free| free.name == option.name)?
                .probability;
            if !option.probability.is_finite() || !prior.is_finite() {
                return None;
            }
            Some(option.probability.max(0.0) / prior.max(CONTENT_FREE_FLOOR))
        })
        .collect::<Option<Vec<f64>>>()?;
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    Some(
        raw.iter()
            .zip(weights)
            .map(|(option, weight)| ScoredOption {
                name: option.name.clone(),
                probability: weight / total,
                raw_probability: Some(option.probability),
            })
            .collect(),
    )
}

/// The option with the highest probability (the first of equals, so the options' order breaks ties).
pub fn most_probable(options: &[ScoredOption]) -> Option<&ScoredOption> {
    options
        .iter()
        .fold(None, |best: Option<&ScoredOption>, option| match best {
            Some(best) if best.probability >= option.probability => Some(best),
            _ => Some(option),
        })
}

/// What content-free scores are cached by: the model that scored them, the prompt template and the
/// options (any of them changing changes the prior).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CalibrationKey {
    /// Provider name (`llama.cpp`, `openai`, ...).
    pub provider: String,
    /// Model name.
    pub model: String,
    /// The prompt template (instructions and input layout) with its content left out.
    pub template: String,
    /// The options, in order.
    pub options: Vec<String>,
}

/// Content-free calls' outputs by key, for the life of the process: one extra model call per distinct
/// (model, template, options), not per decision. Bounded (cleared when full). Cheap to clone.
#[derive(Clone, Default)]
pub struct CalibrationCache(Arc<Mutex<HashMap<CalibrationKey, LlmOutput>>>);

impl CalibrationCache {
    /// Most keys kept; there is one per configured model in practice.
    const CAPACITY: usize = 64;

    /// The cached content-free output for `key`.
    pub fn get(&self, key: &CalibrationKey) -> Option<LlmOutput> {
        self.0.lock().ok()?.get(key).cloned()
    }

    /// Keeps `output` for `key`.
    pub fn insert(&self, key: CalibrationKey, output: LlmOutput) {
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= Self::CAPACITY {
                cache.clear();
            }
            cache.insert(key, output);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(pairs: &[(&str, f64)]) -> Vec<ScoredOption> {
        pairs
            .iter()
            .map(|(name, probability)| ScoredOption {
                name: (*name).to_owned(),
                probability: *probability,
                raw_probability: None,
            })
            .collect()
    }

    fn probability(options: &[ScoredOption], name: &str) -> f64 {
        options
            .iter()
            .find(|option| option.name == name)
            .unwrap()
            .probability
    }

    #[test]
    fn a_strong_prior_is_divided_out_and_the_result_renormalised() {
        // The model says code 0.90 for a geography step, but it says code 0.97 for "N/A" too: relative to
        // its prior, research is the step's answer.
        let raw = scored(&[("research", 0.08), ("code", 0.90), ("qa", 0.02)]);
        let free = scored(&[("research", 0.02), ("code", 0.97), ("qa", 0.01)]);
        let calibrated = calibrate(&raw, &free).unwrap();
        let sum: f64 = calibrated.iter().map(|option| option.probability).sum();
        assert!((sum - 1.0).abs() < 1e-9);
        // research 0.08/0.02 = 4, code 0.90/0.97 = 0.928, qa 0.02/0.02 (floored) = 1; total 5.928.
        assert!((probability(&calibrated, "research") - 4.0 / 5.928).abs() < 1e-3);
        assert!((probability(&calibrated, "qa") - 1.0 / 5.928).abs() < 1e-3);
        assert_eq!(most_probable(&calibrated).unwrap().name, "research");
        assert_eq!(calibrated[1].raw_probability, Some(0.90));
    }

    #[test]
    fn a_uniform_prior_changes_nothing() {
        let raw = scored(&[("research", 0.2), ("code", 0.5), ("qa", 0.3)]);
        let free = scored(&[
            ("research", 1.0 / 3.0),
            ("code", 1.0 / 3.0),
            ("qa", 1.0 / 3.0),
        ]);
        let calibrated = calibrate(&raw, &free).unwrap();
        for (before, after) in raw.iter().zip(&calibrated) {
            assert!((before.probability - after.probability).abs() < 1e-9);
        }
    }

    #[test]
    fn a_content_free_probability_of_about_zero_is_bounded_by_the_floor() {
        let raw = scored(&[("research", 0.001), ("code", 0.998), ("qa", 0.001)]);
        let free = scored(&[("research", 1e-12), ("code", 0.5), ("qa", 0.5)]);
        let calibrated = calibrate(&raw, &free).unwrap();
        // Unbounded, research would be 0.001/1e-12 = 1e9 and win; floored it is 0.001/0.02 = 0.05 against
        // code's 0.998/0.5 = 1.996.
        assert_eq!(most_probable(&calibrated).unwrap().name, "code");
        let expected = 0.05 / (0.05 + 1.996 + 0.002);
        assert!((probability(&calibrated, "research") - expected).abs() < 1e-6);
        assert!(calibrated
            .iter()
            .all(|option| option.probability.is_finite()));
    }

    #[test]
    fn mismatched_options_or_no_mass_are_not_calibrated() {
        let raw = scored(&[("research", 0.5), ("code", 0.5)]);
        assert!(calibrate(&raw, &scored(&[("research", 0.5), ("qa", 0.5)])).is_none());
        assert!(calibrate(&raw, &scored(&[("research", 1.0)])).is_none());
        let zero = scored(&[("research", 0.0), ("code", 0.0)]);
        assert!(calibrate(&zero, &raw).is_none());
        assert!(calibrate(&[], &[]).is_none());
        let not_a_number = scored(&[("research", f64::NAN), ("code", 0.5)]);
        assert!(calibrate(&not_a_number, &raw).is_none());
    }

    #[test]
    fn ties_go_to_the_first_option() {
        let options = scored(&[("research", 0.4), ("code", 0.4), ("qa", 0.2)]);
        assert_eq!(most_probable(&options).unwrap().name, "research");
        assert!(most_probable(&[]).is_none());
    }

    #[test]
    fn the_cache_keeps_scores_per_key() {
        let cache = CalibrationCache::default();
        let key = CalibrationKey {
            provider: "llama.cpp".into(),
            model: "m".into(),
            template: "t".into(),
            options: vec!["a".into()],
        };
        assert!(cache.get(&key).is_none());
        let output = LlmOutput {
            text: "x".into(),
            choice: None,
            usage: crate::llm::Usage::default(),
            generation_seconds: 0.0,
        };
        cache.insert(key.clone(), output.clone());
        assert_eq!(cache.get(&key), Some(output));
        let other = CalibrationKey {
            model: "n".into(),
            ..key
        };
        assert!(cache.get(&other).is_none());
    }
}
