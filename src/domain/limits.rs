//! The bounds that the structured outputs' grammars enforce and that configuration and request validation
//! check against, in one place: a budget or a limit checked here can never disagree with the grammar. Also
//! the token view's bounds, shared by the providers that produce alternatives and the storage that keeps them.

/// Most steps a plan may have: the plan grammar's bound, and the ceiling of `director.max_steps` and of a
/// task's `options.max_steps`.
pub const MAX_PLAN_STEPS: u32 = 8;

/// Longest planned step instruction, in characters (the plan grammar enforces it).
pub const MAX_INSTRUCTION_CHARS: u32 = 60;

/// Longest feedback in QA's verdict, in characters (the verdict grammar enforces it).
pub const MAX_FEEDBACK_CHARS: u32 = 48;

/// The most tokens a plan of `max_steps` steps can take (one token per character at worst, plus the JSON
/// around the strings: `{"instruction": "`, `", "depends_on": [`, `]}, ` and up to `max_steps - 1` numbers of
/// three characters each): `llm.limits.plan_tokens` must cover it, or a long plan would be cut off.
pub fn plan_token_bound(max_steps: u32) -> u32 {
    max_steps * (MAX_INSTRUCTION_CHARS + 38 + 3 * max_steps) + 16
}

/// The most tokens a verdict can take: `llm.limits.verdict_tokens` must cover it.
pub const VERDICT_TOKEN_BOUND: u32 = MAX_FEEDBACK_CHARS + 24;

/// Most alternatives kept for one streamed piece of model output (the token view's top five).
pub const TOP_ALTERNATIVES: usize = 5;

/// Longest alternative text kept, in characters (a token is short; a server's claim is bounded).
pub const MAX_ALTERNATIVE_CHARS: usize = 48;
