//! The model worker: the body of the `troupe model-worker` process that owns llama.cpp.
//!
//! The model and its context live on this process's main thread (llama.cpp contexts are not shareable); a
//! reader thread takes requests from stdin, replies go to stdout as [`protocol`](super::protocol) lines.
//! Running here rather than inside the server means that an abort inside llama.cpp (a `GGML_ASSERT`, which
//! no Rust handler can catch) ends this process only; the server's [`embedded`](super::embedded) provider
//! sees the pipe close, fails the call in flight and starts a new worker. The worker exits when its stdin
//! closes, so it never outlives the server.

use std::io::{BufRead, Write};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::protocol::{FromWorker, ToWorker};
use super::{
    softmax, Alternative, Choice, LlmOutput, LlmRequest, OutputSpec, Role, ScoredOption, TokenInfo,
    Usage, TOP_ALTERNATIVES,
};
use crate::config::SamplingSettings;

/// Grammar for the free-text reason after a choice: any characters but quotes, backslashes and line
/// breaks, then the closing `"}`.
const REASON_GRAMMAR: &str = r#"root ::= [^"\\\r\n]* "\"}""#;

/// DRY's sequence breakers, llama.cpp's defaults: a repeat is not extended across a line break, a colon,
/// a quote or an asterisk, so JSON keys and the lines of a list may recur without penalty.
const DRY_SEQUENCE_BREAKERS: [&str; 4] = ["\n", ":", "\"", "*"];

/// How the worker loads and runs the model.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// GGUF file.
    pub model: PathBuf,
    /// Inference threads.
    pub threads: i32,
    /// Context window in tokens.
    pub context: u32,
    /// Sampling seed.
    pub seed: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// Repetition penalty and DRY, applied to every generated token (never to a choice's scores).
    pub sampling: SamplingSettings,
}

/// The worker could not start or lost its output.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// llama.cpp could not start, load the model or create a context.
    #[error("start llama.cpp: {0}")]
    Start(String),
    /// stdout is gone (the server went away).
    #[error("write to server")]
    Output(#[source] std::io::Error),
}

/// A call failed; reported to the server as `Failed { kind, message }`.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// Runs the worker until stdin closes.
pub fn run(options: &WorkerOptions) -> Result<(), WorkerError> {
    let mut backend = LlamaBackend::init().map_err(|e| WorkerError::Start(e.to_string()))?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &options.model, &LlamaModelParams::default())
        .map_err(|e| WorkerError::Start(format!("load {}: {e}", options.model.display())))?;
    let context_params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(options.context))
        .with_n_batch(options.context)
        .with_n_threads(options.threads)
        .with_n_threads_batch(options.threads);
    let context = model
        .new_context(&backend, context_params)
        .map_err(|e| WorkerError::Start(format!("create context: {e}")))?;
    let template = model
        .chat_template(None)
        .map_err(|e| WorkerError::Start(format!("read chat template: {e}")))?;
    let mut engine = Engine {
        model: &model,
        context,
        template,
        options: options.clone(),
    };

    let cancelled = Arc::new(AtomicU64::new(u64::MAX));
    let (requests, incoming) = mpsc::channel();
    let reader_cancelled = Arc::clone(&cancelled);
    std::thread::Builder::new()
        .name("model-worker-stdin".into())
        .spawn(move || read_requests(&requests, &reader_cancelled))
        .map_err(|e| WorkerError::Start(format!("spawn stdin reader: {e}")))?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let model_name = options
        .model
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    send(
        &mut out,
        &FromWorker::Ready {
            model: model_name,
            context: options.context,
        },
    )?;

    for (id, request, ignore_eos) in incoming {
        let reply = match engine.generate(id, &request, ignore_eos, &cancelled, &mut out) {
            Ok((output, prompt_seconds)) => FromWorker::Done {
                id,
                output,
                prompt_seconds,
            },
            Err(failure) => FromWorker::Failed {
                id,
                kind: failure.kind.to_owned(),
                message: failure.message,
            },
        };
        send(&mut out, &reply)?;
    }
    Ok(())
}

/// Reads request lines until stdin closes; cancellations take effect at once through `cancelled`.
fn read_requests(requests: &mpsc::Sender<(u64, LlmRequest, bool)>, cancelled: &AtomicU64) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ToWorker>(&line) {
            Ok(ToWorker::Generate {
                id,
                request,
                ignore_eos,
            }) => {
                if requests.send((id, request, ignore_eos)).is_err() {
                    break;
                }
            }
            Ok(ToWorker::Cancel { id }) => cancelled.store(id, Ordering::SeqCst),
            // A line that is not the protocol is a bug in the server; say so on stderr and go on.
            Err(error) => eprintln!("model-worker: ignoring malformed request line: {error}"),
        }
    }
}

fn send(out: &mut impl Write, message: &FromWorker) -> Result<(), WorkerError> {
    let line = serde_json::to_string(message)
        .map_err(|e| WorkerError::Output(std::io::Error::other(e)))?;
    writeln!(out, "{line}").map_err(WorkerError::Output)?;
    out.flush().map_err(WorkerError::Output)
}

/// The loaded model and its one context.
struct Engine<'m> {
    model: &'m LlamaModel,
    context: LlamaContext<'m>,
    template: LlamaChatTemplate,
    options: WorkerOptions,
}

/// Decoding position and the batch of the last decode.
struct Cursor {
    batch: LlamaBatch<'static>,
    position: i32,
}

impl Engine<'_> {
    fn generate(
        &mut self,
        id: u64,
        request: &LlmRequest,
        ignore_eos: bool,
        cancelled: &AtomicU64,
        out: &mut impl Write,
    ) -> Result<(LlmOutput, f64), Failure> {
        self.context.clear_kv_cache();
        let mut prompt = self.render(request)?;
        if let OutputSpec::Choice { prefix, .. } = &request.output {
            prompt.push_str(prefix);
        }
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        if tokens.is_empty() {
            return Err(Failure::new("invalid_request", "empty prompt"));
        }
        let budget = request.max_tokens as usize + 16;
        if tokens.len() + budget > self.options.context as usize {
            return Err(Failure::new(
                "context_overflow",
                format!(
                    "prompt of {} tokens plus {} to generate exceeds the context of {} tokens",
                    tokens.len(),
                    request.max_tokens,
                    self.options.context
                ),
            ));
        }
        let prompt_started = Instant::now();
        let mut cursor = Cursor {
            batch: LlamaBatch::new(self.options.context as usize, 1),
            position: 0,
        };
        self.feed(&mut cursor, &tokens)?;
        let prompt_seconds = prompt_started.elapsed().as_secs_f64();
        let mut usage = Usage {
            input_tokens: tokens.len() as u64,
            output_tokens: 0,
        };
        let mut emit = |text: &str, info: TokenInfo| -> Result<(), Failure> {
            if text.is_empty() {
                return Ok(());
            }
            send(
                out,
                &FromWorker::Token {
                    id,
                    text: text.to_owned(),
                    p: info.p,
                    top: info.top,
                },
            )
            .map_err(|e| Failure::new("model", e.to_string()))
        };

        let generation_started = Instant::now();
        let (text, choice) = match &request.output {
            OutputSpec::Text => {
                let mut sampler = self.sampler(None)?;
                let text = self.sample_loop(
                    &mut cursor,
                    &mut sampler,
                    request.max_tokens,
                    ignore_eos,
                    id,
                    cancelled,
                    &mut usage,
                    &mut emit,
                )?;
                (text, None)
            }
            OutputSpec::Json { schema } => {
                let grammar = llama_cpp_2::json_schema_to_grammar(&schema.to_string())
                    .map_err(|e| Failure::new("grammar", format!("convert schema: {e}")))?;
                let mut sampler = self.sampler(Some(&grammar))?;
                let text = self.sample_loop(
                    &mut cursor,
                    &mut sampler,
                    request.max_tokens,
                    false,
                    id,
                    cancelled,
                    &mut usage,
                    &mut emit,
                )?;
                (text, None)
            }
            OutputSpec::Choice {
                prefix,
                options,
                suffix,
            } => {
                let scored = self.score_options(&cursor, options)?;
                let chosen = scored
                    .iter()
                    .max_by(|a, b| a.probability.total_cmp(&b.probability))
                    .map(|option| option.name.clone())
                    .ok_or_else(|| Failure::new("invalid_request", "a choice needs options"))?;
                let forced = format!("{chosen}{suffix}");
                let forced_tokens = vocab.tokenize(forced.as_bytes(), false, false);
                self.feed(&mut cursor, &forced_tokens)?;
                // Forced text was not sampled: it has no probability or alternatives of its own (the choice
                // has the options').
                emit(&format!("{prefix}{forced}"), TokenInfo::unknown())?;
                let mut sampler = self.sampler(Some(REASON_GRAMMAR))?;
                let generated = self.sample_loop(
                    &mut cursor,
                    &mut sampler,
                    request.max_tokens,
                    false,
                    id,
                    cancelled,
                    &mut usage,
                    &mut emit,
                )?;
                let reasoning = generated.trim_end_matches("\"}").trim().to_owned();
                let text = format!("{prefix}{forced}{reasoning}\"}}");
                (
                    text,
                    Some(Choice {
                        options: scored,
                        chosen,
                        reasoning,
                        scored: true,
                    }),
                )
            }
        };
        let output = LlmOutput {
            text,
            choice,
            usage,
            generation_seconds: generation_started.elapsed().as_secs_f64(),
        };
        Ok((output, prompt_seconds))
    }

    /// Applies the model's chat template to the request's messages, leaving the assistant turn open.
    fn render(&self, request: &LlmRequest) -> Result<String, Failure> {
        let messages = request
            .messages
            .iter()
            .map(|message| {
                let role = match message.role {
                    Role::System => "system",
                    Role::User => "user",
                };
                LlamaChatMessage::new(role.to_owned(), message.content.clone())
                    .map_err(|e| Failure::new("invalid_request", format!("chat message: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.model
            .apply_chat_template(&self.template, &messages, true)
            .map_err(|e| Failure::new("model", format!("apply chat template: {e}")))
    }

    /// Decodes `tokens` after what is already in the context; logits are kept for the last one.
    fn feed(&mut self, cursor: &mut Cursor, tokens: &[LlamaToken]) -> Result<(), Failure> {
        if tokens.is_empty() {
            return Ok(());
        }
        cursor.batch.clear();
        let last = tokens.len() - 1;
        for (index, token) in tokens.iter().enumerate() {
            cursor
                .batch
                .add(*token, cursor.position, &[0], index == last)
                .map_err(|e| Failure::new("model", format!("fill batch: {e}")))?;
            cursor.position += 1;
        }
        self.context
            .decode(&mut cursor.batch)
            .map_err(|e| Failure::new("model", format!("decode: {e}")))
    }

    /// A sampler chain: the grammar when given, the repetition penalty and DRY (`[llm.sampling]`), then
    /// greedy or seeded sampling per the temperature.
    ///
    /// The grammar comes first so that the penalties only reorder tokens the grammar allows (a penalty can
    /// never make an output ungrammatical, and a token the grammar forces stays forced). The chain sees
    /// the tokens it generates only: `llama_sampler_sample` accepts the sampled token into every sampler of
    /// the chain (grammar, penalties, DRY), and the prompt is not accepted, so the user's own words (a
    /// function name the task asks for, a schema's keys) are not penalised. Choice scoring reads the
    /// context's logits directly and never passes through this chain, so a decision's probabilities are
    /// the model's own.
    fn sampler(&self, grammar: Option<&str>) -> Result<LlamaSampler, Failure> {
        let mut chain = Vec::new();
        if let Some(grammar) = grammar {
            chain.push(
                LlamaSampler::grammar(self.model, grammar, "root")
                    .map_err(|e| Failure::new("grammar", format!("load grammar: {e}")))?,
            );
        }
        let sampling = &self.options.sampling;
        let context = i32::try_from(self.options.context).unwrap_or(i32::MAX);
        let window = |last_n: i32| if last_n < 0 { context } else { last_n };
        if sampling.repeat_penalty != 1.0 && sampling.repeat_last_n != 0 {
            chain.push(LlamaSampler::penalties(
                self.model.n_vocab(),
                window(sampling.repeat_last_n),
                sampling.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        if sampling.dry_multiplier > 0.0 && sampling.dry_penalty_last_n != 0 {
            // llama.cpp clamps a negative window to 0 (off), so "the whole context" is passed as its size.
            chain.push(LlamaSampler::dry(
                self.model,
                sampling.dry_multiplier,
                sampling.dry_base,
                sampling.dry_allowed_length,
                window(sampling.dry_penalty_last_n),
                DRY_SEQUENCE_BREAKERS,
            ));
        }
        if self.options.temperature > 0.0 {
            chain.push(LlamaSampler::temp(self.options.temperature));
            chain.push(LlamaSampler::dist(self.options.seed));
        } else {
            chain.push(LlamaSampler::greedy());
        }
        Ok(LlamaSampler::chain_simple(chain))
    }

    /// The model's probabilities for each option at the current position: softmax over the logits of the
    /// options' first tokens.
    fn score_options(
        &self,
        cursor: &Cursor,
        options: &[String],
    ) -> Result<Vec<ScoredOption>, Failure> {
        let vocab = self.model.vocab();
        let mut first_tokens = Vec::with_capacity(options.len());
        for option in options {
            let first = vocab
                .tokenize(option.as_bytes(), false, false)
                .first()
                .copied()
                .ok_or_else(|| {
                    Failure::new(
                        "invalid_request",
                        format!("option '{option}' has no tokens"),
                    )
                })?;
            if first_tokens.contains(&first) {
                return Err(Failure::new(
                    "invalid_request",
                    format!("option '{option}' starts with the same token as another option"),
                ));
            }
            first_tokens.push(first);
        }
        let logits = self.context.get_logits_ith(cursor.batch.n_tokens() - 1);
        let picked = first_tokens
            .iter()
            .map(|token| {
                usize::try_from(token.0)
                    .ok()
                    .and_then(|index| logits.get(index).copied())
                    .ok_or_else(|| Failure::new("model", "token outside the vocabulary"))
            })
            .collect::<Result<Vec<f32>, _>>()?;
        Ok(options
            .iter()
            .zip(softmax(&picked))
            .map(|(name, probability)| ScoredOption {
                name: name.clone(),
                probability,
                raw_probability: None,
            })
            .collect())
    }

    /// Samples up to `max_tokens` tokens, streaming text; returns the text generated.
    #[allow(clippy::too_many_arguments)]
    fn sample_loop(
        &mut self,
        cursor: &mut Cursor,
        sampler: &mut LlamaSampler,
        max_tokens: u32,
        ignore_eos: bool,
        id: u64,
        cancelled: &AtomicU64,
        usage: &mut Usage,
        emit: &mut impl FnMut(&str, TokenInfo) -> Result<(), Failure>,
    ) -> Result<String, Failure> {
        let mut text = String::new();
        let mut pending = Vec::new();
        // The probability of the tokens whose bytes are pending (a character split over tokens is one piece),
        // and the alternatives at the first of them (where the piece began).
        let mut pending_p = 1.0_f64;
        let mut pending_top: Option<Vec<Alternative>> = None;
        for _ in 0..max_tokens {
            if cancelled.load(Ordering::SeqCst) == id {
                return Err(Failure::new("cancelled", "cancelled by the caller"));
            }
            let last = cursor.batch.n_tokens() - 1;
            let token = sampler.sample(&self.context, last);
            let vocab = self.model.vocab();
            if vocab.is_eog(token) && !ignore_eos {
                break;
            }
            usage.output_tokens += 1;
            if let Some(view) = position_view(self.context.get_logits_ith(last), token) {
                pending_p *= view.p;
                if pending_top.is_none() {
                    pending_top = Some(
                        view.top
                            .iter()
                            .map(|&(alternative, p)| Alternative {
                                // Special tokens by name (`<|im_end|>`): an end the model considered.
                                text: String::from_utf8_lossy(&vocab.token_to_piece(
                                    alternative,
                                    true,
                                    None,
                                ))
                                .into_owned(),
                                p,
                            })
                            .collect(),
                    );
                }
            }
            pending.extend(vocab.token_to_piece(token, false, None));
            let piece = take_utf8(&mut pending);
            if !piece.is_empty() {
                emit(
                    &piece,
                    TokenInfo {
                        p: Some(pending_p),
                        top: pending_top.take(),
                    },
                )?;
                pending_p = 1.0;
            }
            text.push_str(&piece);
            self.feed(cursor, &[token])?;
        }
        text.push_str(&String::from_utf8_lossy(&pending));
        Ok(text)
    }
}

/// The model's own view of one sampled position, from the softmax of the raw logits over the whole
/// vocabulary (before the grammar, penalties or temperature of the sampler chain).
#[derive(Debug, Clone, PartialEq)]
struct PositionView {
    /// The sampled token's probability.
    p: f64,
    /// The [`TOP_ALTERNATIVES`] most probable tokens with their probabilities, most probable first (ties
    /// in vocabulary order); the sampled token's entry, when it is among them, has exactly `p`.
    top: Vec<(LlamaToken, f64)>,
}

/// The sampled `token`'s probability and the most probable tokens at this position. Two passes over the
/// logits, as the probability alone takes (the maximum, then the sum of the exponentials): the top few are
/// kept during the first with one comparison per logit, so the alternatives cost no measurable speed.
/// `None` when `token` is outside the vocabulary or the logits are not finite.
fn position_view(logits: &[f32], token: LlamaToken) -> Option<PositionView> {
    let chosen = f64::from(*logits.get(usize::try_from(token.0).ok()?)?);
    let mut max = f32::NEG_INFINITY;
    // (logit, index), best first; `kept` of them are filled.
    let mut best = [(f32::NEG_INFINITY, 0_usize); TOP_ALTERNATIVES];
    let mut kept = 0;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > max {
            max = logit;
        }
        if kept < TOP_ALTERNATIVES || logit > best[kept - 1].0 {
            let mut at = kept.min(TOP_ALTERNATIVES - 1);
            while at > 0 && logit > best[at - 1].0 {
                best[at] = best[at - 1];
                at -= 1;
            }
            best[at] = (logit, index);
            kept = (kept + 1).min(TOP_ALTERNATIVES);
        }
    }
    let max = f64::from(max);
    let total: f64 = logits.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    if !total.is_finite() || total <= 0.0 {
        return None;
    }
    let probability = |logit: f64| ((logit - max).exp() / total).clamp(0.0, 1.0);
    let top = best[..kept]
        .iter()
        .filter_map(|&(logit, index)| {
            let id = i32::try_from(index).ok()?;
            Some((LlamaToken(id), probability(f64::from(logit))))
        })
        .collect();
    Some(PositionView {
        p: probability(chosen),
        top,
    })
}

/// Takes the longest valid UTF-8 prefix out of `bytes`, leaving an incomplete trailing character for the
/// next token; invalid bytes are replaced rather than kept forever.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let text = text.to_owned();
            bytes.clear();
            text
        }
        Err(error) if error.error_len().is_none() => {
            let valid = error.valid_up_to();
            let text = String::from_utf8_lossy(&bytes[..valid]).into_owned();
            bytes.drain(..valid);
            text
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_utf8_is_held_back_until_complete() {
        let euro = "€".as_bytes();
        let mut pending = euro[..2].to_vec();
        assert_eq!(take_utf8(&mut pending), "");
        assert_eq!(pending.len(), 2);
        pending.extend_from_slice(&euro[2..]);
        assert_eq!(take_utf8(&mut pending), "€");
        assert!(pending.is_empty());
    }

    #[test]
    fn a_token_probability_is_the_softmax_of_the_raw_logits_at_it() {
        let logits = [1.0_f32, 3.0, 0.5, 1000.0];
        let p = position_view(&logits, LlamaToken(3)).unwrap().p;
        assert!((p - 1.0).abs() < 1e-9, "{p}");
        let logits = [0.0_f32, 0.0, f32::ln(2.0)];
        let p = position_view(&logits, LlamaToken(2)).unwrap().p;
        assert!((p - 0.5).abs() < 1e-6, "{p}");
        assert!(position_view(&logits, LlamaToken(7)).is_none());
        assert!(position_view(&logits, LlamaToken(-1)).is_none());
    }

    #[test]
    fn the_top_alternatives_are_the_most_probable_of_the_whole_vocabulary() {
        // Ten tokens; the best five are 7, 2, 9, 4, 0 in that order, and the sampled one (5) is not among them.
        let logits = [1.0_f32, -3.0, 4.0, -1.0, 2.0, 0.5, -2.0, 6.0, 0.0, 3.0];
        let view = position_view(&logits, LlamaToken(5)).unwrap();
        let ids: Vec<i32> = view.top.iter().map(|(token, _)| token.0).collect();
        assert_eq!(ids, [7, 2, 9, 4, 0]);
        let all = softmax(&logits);
        for (token, p) in &view.top {
            let expected = all[usize::try_from(token.0).unwrap()];
            assert!((p - expected).abs() < 1e-12, "{token:?}: {p} vs {expected}");
        }
        assert!(view.top.windows(2).all(|pair| pair[0].1 >= pair[1].1));
        assert!(view.top.iter().map(|(_, p)| p).sum::<f64>() < 1.0);
        assert!((view.p - all[5]).abs() < 1e-12);

        // The sampled token among them has exactly its own probability there.
        let view = position_view(&logits, LlamaToken(2)).unwrap();
        let entry = view.top.iter().find(|(token, _)| token.0 == 2).unwrap();
        assert_eq!(entry.1, view.p);

        // A vocabulary smaller than five gives all of it; ties keep vocabulary order.
        let view = position_view(&[0.0, 0.0, 0.0], LlamaToken(1)).unwrap();
        let ids: Vec<i32> = view.top.iter().map(|(token, _)| token.0).collect();
        assert_eq!(ids, [0, 1, 2]);
        let sum: f64 = view.top.iter().map(|(_, p)| p).sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }

    #[test]
    fn logits_that_are_not_finite_give_no_view() {
        assert!(position_view(&[f32::NAN, 1.0], LlamaToken(1)).is_none());
        assert!(position_view(&[f32::INFINITY, 1.0], LlamaToken(1)).is_none());
    }

    #[test]
    fn invalid_bytes_are_replaced_not_kept() {
        let mut pending = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_utf8(&mut pending), "a\u{FFFD}b");
        assert!(pending.is_empty());
    }
}
