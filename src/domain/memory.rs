//! What kinds of long-term memory there are ([`MemoryKind`]) and the size of their embeddings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Dimensions of a memory's embedding (all-MiniLM-L6-v2; the `vector(384)` column of `memories`).
pub const EMBEDDING_DIMENSIONS: usize = 384;

/// What a memory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryKind {
    /// A fact an agent stated.
    Fact,
    /// The summary of a finished task (prompt and result).
    Summary,
    /// A piece of code an agent wrote.
    Snippet,
    /// An error signature and the fix that made it pass.
    Pattern,
}

impl MemoryKind {
    /// Every kind.
    pub const ALL: [MemoryKind; 4] = [
        MemoryKind::Fact,
        MemoryKind::Summary,
        MemoryKind::Snippet,
        MemoryKind::Pattern,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryKind::Fact => "fact",
            MemoryKind::Summary => "summary",
            MemoryKind::Snippet => "snippet",
            MemoryKind::Pattern => "pattern",
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a memory kind.
#[derive(Debug, thiserror::Error)]
#[error("unknown memory kind '{0}' (fact, summary, snippet, pattern)")]
pub struct UnknownKind(pub String);

impl FromStr for MemoryKind {
    type Err = UnknownKind;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MemoryKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kinds_round_trip_through_their_names() {
        for kind in MemoryKind::ALL {
            assert_eq!(kind.as_str().parse::<MemoryKind>().unwrap(), kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert!("note".parse::<MemoryKind>().is_err());
    }
}
