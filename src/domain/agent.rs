//! The agents' names: [`AgentKind`], the Director and its specialists.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The agents of Troupe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// Plans, assigns, supervises, assembles.
    Director,
    /// Finds and states facts.
    Research,
    /// Writes code.
    Code,
    /// Checks work.
    Qa,
}

impl AgentKind {
    /// Every agent.
    pub const ALL: [AgentKind; 4] = [
        AgentKind::Director,
        AgentKind::Research,
        AgentKind::Code,
        AgentKind::Qa,
    ];

    /// The specialists, in the order they usually work: the agents the Director supervises and can assign
    /// a step to (the order their options are scored in).
    pub const SPECIALISTS: [AgentKind; 3] = [AgentKind::Research, AgentKind::Code, AgentKind::Qa];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Director => "director",
            AgentKind::Research => "research",
            AgentKind::Code => "code",
            AgentKind::Qa => "qa",
        }
    }

    /// Whether the Director supervises it.
    pub fn is_specialist(self) -> bool {
        self != AgentKind::Director
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an agent.
#[derive(Debug, thiserror::Error)]
#[error("unknown agent '{0}'")]
pub struct UnknownAgent(pub String);

impl FromStr for AgentKind {
    type Err = UnknownAgent;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AgentKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownAgent(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_round_trip() {
        for kind in AgentKind::ALL {
            assert_eq!(kind.as_str().parse::<AgentKind>().unwrap(), kind);
        }
        assert!("planner".parse::<AgentKind>().is_err());
    }

    #[test]
    fn the_specialists_are_every_agent_but_the_director() {
        let specialists: Vec<_> = AgentKind::ALL
            .into_iter()
            .filter(|kind| kind.is_specialist())
            .collect();
        assert_eq!(specialists, AgentKind::SPECIALISTS);
    }
}
