//! A task's spending limit on models: before each call its most (the prompt's estimated tokens plus its
//! `max_tokens`, at its model's price) is reserved, and afterwards settled with the real usage. A call whose
//! reservation would take the task over a limit is refused ([`Exceeded`]); what happens then
//! (`budget.on_exceed`: fail the task, or downgrade the rest of it to a cheaper model) is the caller's.

use std::sync::Mutex;

use super::{TokenPrices, Usage};

/// A conservative estimate of a prompt's tokens from its characters (no tokenizer is at hand for every
/// provider): about 3 characters per token for English text and code, rounded up, so the reservation errs high.
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(3)
}

/// The limits: `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Most tokens (input and output) of the task's calls.
    pub max_tokens: Option<u64>,
    /// Most US dollars of the task's calls.
    pub max_cost_usd: Option<f64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        self.max_tokens.is_some() || self.max_cost_usd.is_some()
    }
}

/// A call's estimated most, held against the budget until it is settled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    tokens: u64,
    cost_usd: f64,
}

/// A call would take the task over its budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model budget exceeded: {limit} limit {allowed} would be passed (used {used}, this call reserves up to {asked})")]
pub struct Exceeded {
    /// Which limit: `tokens` or `cost_usd`.
    pub limit: &'static str,
    /// The limit.
    pub allowed: f64,
    /// What settled and reserved calls use now.
    pub used: f64,
    /// What the refused call would reserve.
    pub asked: f64,
}

#[derive(Debug, Default)]
struct Spent {
    tokens: u64,
    cost_usd: f64,
    reserved_tokens: u64,
    reserved_cost_usd: f64,
}

/// The task's budget and what it has spent.
#[derive(Debug, Default)]
pub struct Budget {
    limits: Limits,
    spent: Mutex<Spent>,
}

impl Budget {
    /// A budget with these limits.
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            spent: Mutex::new(Spent::default()),
        }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn with_spent<T>(&self, f: impl FnOnce(&mut Spent) -> T) -> T {
        match self.spent.lock() {
            Ok(mut spent) => f(&mut spent),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Reserves a call of `prompt_chars` characters and at most `max_tokens` output tokens at `prices`, or
    /// says which limit it would pass. `count_tokens` false: only the cost limit applies (a downgraded task
    /// on a local model).
    pub fn reserve(
        &self,
        prompt_chars: usize,
        max_tokens: u32,
        prices: TokenPrices,
        count_tokens: bool,
    ) -> Result<Reservation, Exceeded> {
        let input = estimate_tokens(prompt_chars);
        let output = u64::from(max_tokens);
        let reservation = Reservation {
            tokens: input + output,
            cost_usd: prices.cost(input, output),
        };
        self.with_spent(|spent| {
            if let Some(allowed) = self.limits.max_tokens.filter(|_| count_tokens) {
                let used = spent.tokens + spent.reserved_tokens;
                if used + reservation.tokens > allowed {
                    return Err(Exceeded {
                        limit: "tokens",
                        allowed: allowed as f64,
                        used: used as f64,
                        asked: reservation.tokens as f64,
                    });
                }
            }
            if let Some(allowed) = self.limits.max_cost_usd {
                let used = spent.cost_usd + spent.reserved_cost_usd;
                // A call that costs nothing never passes a cost limit, however much has been spent.
                if reservation.cost_usd > 0.0 && used + reservation.cost_usd > allowed {
                    return Err(Exceeded {
                        limit: "cost_usd",
                        allowed,
                        used,
                        asked: reservation.cost_usd,
                    });
                }
            }
            spent.reserved_tokens += reservation.tokens;
            spent.reserved_cost_usd += reservation.cost_usd;
            Ok(reservation)
        })
    }

    /// Releases `reservation` and counts what the call really used (none for a call that failed before it
    /// used anything).
    pub fn settle(&self, reservation: Reservation, used: Option<(Usage, f64)>) {
        self.with_spent(|spent| {
            spent.reserved_tokens = spent.reserved_tokens.saturating_sub(reservation.tokens);
            spent.reserved_cost_usd = (spent.reserved_cost_usd - reservation.cost_usd).max(0.0);
            if let Some((usage, cost_usd)) = used {
                spent.tokens += usage.input_tokens + usage.output_tokens;
                spent.cost_usd += cost_usd;
            }
        });
    }

    /// Counts a call that was made before (a resumed task's recorded call, answered from the recording):
    /// what it used is spent again, since the budget of a resumed task starts from nothing.
    pub fn charge(&self, usage: Usage, cost_usd: f64) {
        self.with_spent(|spent| {
            spent.tokens += usage.input_tokens + usage.output_tokens;
            spent.cost_usd += cost_usd;
        });
    }

    /// Tokens and US dollars settled so far.
    pub fn spent(&self) -> (u64, f64) {
        self.with_spent(|spent| (spent.tokens, spent.cost_usd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICED: TokenPrices = TokenPrices {
        input: 1.0,
        output: 2.0,
    };

    #[test]
    fn a_call_that_fits_is_reserved_and_settled_with_its_real_usage() {
        let budget = Budget::new(Limits {
            max_tokens: Some(1000),
            max_cost_usd: None,
        });
        let reservation = budget.reserve(300, 200, PRICED, true).unwrap();
        // 300 chars reserve 100 tokens, plus 200 output tokens.
        assert_eq!(reservation.tokens, 300);
        let usage = Usage {
            input_tokens: 80,
            output_tokens: 20,
        };
        budget.settle(reservation, Some((usage, 0.5)));
        assert_eq!(budget.spent(), (100, 0.5));
        // With 100 used, a call reserving 900 fits and one reserving 901 does not.
        assert!(budget.reserve(0, 900, PRICED, true).is_ok());
    }

    #[test]
    fn reservations_in_flight_count_against_the_limit() {
        let budget = Budget::new(Limits {
            max_tokens: Some(500),
            max_cost_usd: None,
        });
        let first = budget.reserve(0, 300, PRICED, true).unwrap();
        let refused = budget.reserve(0, 300, PRICED, true).unwrap_err();
        assert_eq!(refused.limit, "tokens");
        assert_eq!(refused.used, 300.0);
        budget.settle(first, None);
        assert!(budget.reserve(0, 300, PRICED, true).is_ok());
    }

    #[test]
    fn the_cost_limit_uses_the_price_and_ignores_free_calls() {
        let budget = Budget::new(Limits {
            max_tokens: None,
            max_cost_usd: Some(0.001),
        });
        // 1000 output tokens at $2 per million: $0.002 > $0.001.
        let refused = budget.reserve(0, 1000, PRICED, true).unwrap_err();
        assert_eq!(refused.limit, "cost_usd");
        assert!((refused.asked - 0.002).abs() < 1e-12);
        assert!(budget
            .reserve(0, 1000, TokenPrices::default(), true)
            .is_ok());
    }

    #[test]
    fn a_downgraded_call_is_not_held_to_the_token_limit() {
        let budget = Budget::new(Limits {
            max_tokens: Some(10),
            max_cost_usd: None,
        });
        assert!(budget
            .reserve(0, 100, TokenPrices::default(), true)
            .is_err());
        assert!(budget
            .reserve(0, 100, TokenPrices::default(), false)
            .is_ok());
    }

    #[test]
    fn the_estimate_errs_high() {
        assert_eq!(estimate_tokens(0), 0);
        assert_eq!(estimate_tokens(1), 1);
        assert_eq!(estimate_tokens(7), 3);
    }
}
