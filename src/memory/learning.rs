//! Learning from fixes: when a run fails and a later attempt passes, the failure's *error signature* and the
//! fix are stored as a `pattern` memory; a later failure whose signature is close in meaning retrieves it,
//! and whether the run that used it passed is counted.
//!
//! A signature is the error line of the output with the details that vary between runs masked: quoted
//! values, numbers, paths and addresses. `NameError: name 'x' is not defined` and `NameError: name 'total'
//! is not defined` have the same signature. Metrics: `troupe_memory_pattern_extractions_total{outcome}`
//! (extraction success rate), `troupe_memory_reuses_total{kind="pattern"}` (reuse frequency) and
//! `troupe_memory_pattern_outcomes_total{outcome}` (effectiveness of a reused fix).

use serde_json::json;

use super::{Memory, MemoryDraft, MemoryError, MemoryHit, SearchFilter};
use crate::domain::{shorten, AgentKind, MemoryKind, TaskId};
use crate::storage::records::WriteOp;

/// Longest signature kept, in characters.
const SIGNATURE_CHARS: usize = 200;
/// Longest code or output kept in a pattern, in characters.
const DETAIL_CHARS: usize = 2000;

/// A run that failed.
#[derive(Debug, Clone)]
pub struct FailedRun {
    /// The code that ran.
    pub code: String,
    /// Its error output (stderr, or the judge's message).
    pub error: String,
}

/// A learned pattern that matches a failure.
#[derive(Debug, Clone)]
pub struct PatternMatch {
    /// The pattern memory's id.
    pub id: String,
    /// The stored signature.
    pub signature: String,
    /// The fix that made the original run pass.
    pub fix: String,
    /// Similarity of the signatures.
    pub score: f32,
}

/// The error signature of a run's error output, or `None` when it holds nothing to learn from.
pub fn signature(error_output: &str) -> Option<String> {
    let lines: Vec<&str> = error_output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    // The most specific line: a "SomethingError: ..." / "error: ..." line, the last one if several.
    let line = lines
        .iter()
        .rev()
        .find(|line| looks_like_error(line))
        .or_else(|| lines.last())?;
    let masked = mask(line);
    let masked = masked.trim();
    if masked.is_empty() {
        return None;
    }
    Some(shorten(masked, SIGNATURE_CHARS))
}

fn looks_like_error(line: &str) -> bool {
    let head = line.split(':').next().unwrap_or("");
    let lower = line.to_ascii_lowercase();
    (head.ends_with("Error") || head.ends_with("Exception") || head.starts_with("error"))
        && line.contains(':')
        || lower.starts_with("error")
        || lower.contains("panicked at")
}

/// Masks the parts of an error line that vary between runs of the same mistake.
fn mask(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                // A quoted value: keep the quotes, drop what is inside.
                let mut closed = false;
                for inner in chars.by_ref() {
                    if inner == c {
                        closed = true;
                        break;
                    }
                }
                out.push(c);
                out.push('…');
                if closed {
                    out.push(c);
                }
            }
            '0'..='9' => {
                while chars
                    .peek()
                    .is_some_and(|next| next.is_ascii_alphanumeric() || *next == '.')
                {
                    chars.next();
                }
                out.push('N');
            }
            '/' if chars
                .peek()
                .is_some_and(|next| next.is_alphanumeric() || *next == '_') =>
            {
                while chars
                    .peek()
                    .is_some_and(|next| !next.is_whitespace() && *next != ':' && *next != ',')
                {
                    chars.next();
                }
                out.push_str("<path>");
            }
            _ => out.push(c),
        }
    }
    out
}

impl Memory {
    /// Learns from a fix: `failed` failed, then `fixed_code` passed. Returns the pattern (signature, error,
    /// failed code, fix) as a draft, or `None` when the failure has no signature. The draft is kept with the
    /// task's other memories, so it commits with the task's end: a task that later fails or is cancelled
    /// leaves no pattern.
    pub fn learn_fix(
        &self,
        agent: AgentKind,
        failed: &FailedRun,
        fixed_code: &str,
    ) -> Option<MemoryDraft> {
        let Some(signature) = signature(&failed.error) else {
            self.metrics()
                .pattern_extractions
                .with_label_values(&["no_signature"])
                .inc();
            return None;
        };
        self.metrics()
            .pattern_extractions
            .with_label_values(&["extracted"])
            .inc();
        Some(MemoryDraft {
            kind: MemoryKind::Pattern,
            content: signature.clone(),
            detail: Some(json!({
                "signature": signature,
                "error": shorten(&failed.error, DETAIL_CHARS),
                "failed_code": shorten(&failed.code, DETAIL_CHARS),
                "fix": shorten(fixed_code, DETAIL_CHARS),
            })),
            agent,
            step: None,
        })
    }

    /// Learned patterns matching the failure in `error_output`, best first (at least
    /// `memory.pattern_min_score` similar). Each match counts as a use of its pattern.
    pub async fn patterns_for(
        &self,
        error_output: &str,
        k: usize,
    ) -> Result<Vec<PatternMatch>, MemoryError> {
        self.find_patterns(None, error_output, k).await
    }

    /// [`Memory::patterns_for`] a failure of task `task_id`: a replay or fork sees the patterns its source
    /// saw (its view, [`Memory::set_view`]), and its matches count as no use.
    pub async fn patterns_for_task(
        &self,
        task_id: TaskId,
        error_output: &str,
        k: usize,
    ) -> Result<Vec<PatternMatch>, MemoryError> {
        self.find_patterns(Some(task_id), error_output, k).await
    }

    async fn find_patterns(
        &self,
        task_id: Option<TaskId>,
        error_output: &str,
        k: usize,
    ) -> Result<Vec<PatternMatch>, MemoryError> {
        let Some(signature) = signature(error_output) else {
            return Ok(Vec::new());
        };
        let view = task_id.and_then(|id| self.view(id));
        let filter = SearchFilter {
            kinds: vec![MemoryKind::Pattern],
            created_before: view,
            ..SearchFilter::default()
        };
        let hits = self.search(&signature, &filter, k).await?;
        let threshold = self.settings().pattern_min_score;
        let matches: Vec<PatternMatch> = hits
            .into_iter()
            .filter(|hit| hit.score >= threshold)
            .filter_map(pattern_match)
            .collect();
        if !matches.is_empty() && view.is_none() {
            self.metrics()
                .memory_reuses
                .with_label_values(&[MemoryKind::Pattern.as_str()])
                .inc_by(u64::try_from(matches.len()).unwrap_or(u64::MAX));
            self.writer().send(WriteOp::MemoriesUsed(
                matches.iter().map(|m| m.id.clone()).collect(),
            ));
        }
        Ok(matches)
    }

    /// Records how a run that used pattern `id` ended: a pass counts as a success of the pattern.
    pub fn pattern_outcome(&self, id: &str, passed: bool) {
        self.metrics()
            .pattern_outcomes
            .with_label_values(&[if passed { "passed" } else { "failed" }])
            .inc();
        if passed {
            self.writer().send(WriteOp::PatternSucceeded(id.to_owned()));
        }
    }
}

fn pattern_match(hit: MemoryHit) -> Option<PatternMatch> {
    let detail = hit.memory.detail.as_ref()?;
    Some(PatternMatch {
        signature: hit.memory.content.clone(),
        fix: detail.get("fix")?.as_str()?.to_owned(),
        id: hit.memory.id,
        score: hit.score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_mask_what_varies_between_runs() {
        let traceback = "Traceback (most recent call last):\n  File \"/tmp/ws/main.py\", line 3, in <module>\n    print(totl)\nNameError: name 'totl' is not defined\n";
        let other = "Traceback (most recent call last):\n  File \"/work/x.py\", line 17, in f\nNameError: name 'count' is not defined";
        assert_eq!(
            signature(traceback).as_deref(),
            Some("NameError: name '…' is not defined")
        );
        assert_eq!(signature(traceback), signature(other));
    }

    #[test]
    fn numbers_paths_and_the_last_error_line_are_used() {
        assert_eq!(
            signature("ZeroDivisionError: division by zero").as_deref(),
            Some("ZeroDivisionError: division by zero")
        );
        assert_eq!(
            signature("IndexError: list index 12 out of range 0x7ffd").as_deref(),
            Some("IndexError: list index N out of range N")
        );
        assert_eq!(
            signature("error: could not open /var/tmp/abc/file.txt: denied").as_deref(),
            Some("error: could not open <path>: denied")
        );
        assert_eq!(signature("  \n \n"), None);
    }
}
