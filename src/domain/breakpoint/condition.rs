//! A breakpoint's condition (`when`): comparisons `<field> <op> <literal>` joined by `and` / `or`, with
//! parentheses, parsed from text ([`Condition::parse`]), shown back as its canonical text (`Display`) and
//! evaluated against a [`PausePoint`] ([`Condition::holds`]).
//!
//! The grammar, `and` binding tighter than `or`:
//! ```text
//! condition  := and_group ("or" and_group)*
//! and_group  := primary ("and" primary)*
//! primary    := "(" condition ")" | comparison
//! comparison := field op literal
//! op         := "<" | "<=" | ">" | ">=" | "==" | "!="
//! literal    := number | "quoted" | 'quoted' | true | false
//! field      := confidence | probability | step | attempt | revision | round
//!             | agent | chosen | tool | purpose | kind | arguments.<name>(.<name>)*
//! ```
//! Bounded: [`MAX_CONDITION_CHARS`] characters, parentheses [`MAX_DEPTH`] deep, [`MAX_COMPARISONS`]
//! comparisons. The numeric fields compare with numbers (all six operators), the text fields with quoted
//! strings (`==`, `!=`); `arguments.<name>` (a tool call's argument) with any literal, ordering only with a
//! number. A comparison whose field the point does not have, or whose value is of another type than the
//! literal, is false, whatever its operator.
//!
//! What the fields mean at each point, and which points have them, is the pause engine's to supply (see
//! [`PausePoint`]); which fields a breakpoint may use for its `on` is checked by
//! [`BreakpointSpec::validate`](super::BreakpointSpec::validate).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::PausePoint;

/// Longest condition text, in characters.
pub const MAX_CONDITION_CHARS: usize = 256;
/// Deepest nesting of parentheses.
pub const MAX_DEPTH: usize = 8;
/// Most comparisons in one condition.
pub const MAX_COMPARISONS: usize = 16;

/// The fields a condition can name (besides `arguments.<name>`), as listed in error messages.
pub const FIELD_NAMES: [&str; 11] = [
    "confidence",
    "probability",
    "step",
    "attempt",
    "revision",
    "round",
    "agent",
    "chosen",
    "tool",
    "purpose",
    "kind",
];

/// A parsed condition. Its text form (`Display`, and what it serializes as) is canonical: parsing it
/// again gives the same condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    expr: Expr,
}

/// A condition's tree: groups are n-ary and never hold a group of their own kind (parsing flattens them),
/// so each condition has one canonical text.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// Holds when any part holds (at least two parts).
    Or(Vec<Expr>),
    /// Holds when every part holds (at least two parts).
    And(Vec<Expr>),
    /// One comparison.
    Compare(Comparison),
}

/// One comparison `<field> <op> <literal>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// What is compared.
    pub field: Field,
    /// How.
    pub op: Op,
    /// With what.
    pub literal: Literal,
}

/// A field a condition reads at a pause point.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The probability of the chosen option of a scored decision (`assign_agent`).
    Confidence,
    /// The probability of the chosen option, as the decision's options list it.
    Probability,
    /// The step's position, from 1.
    Step,
    /// The Code/QA loop's attempt, from 1.
    Attempt,
    /// Which revision QA's `fail` verdict asked for (0 before any).
    Revision,
    /// The verification round, from 1.
    Round,
    /// The agent at the point.
    Agent,
    /// The option a decision chose (an agent, `pass`, `fail`).
    Chosen,
    /// The tool called.
    Tool,
    /// The model call's purpose (`plan`, `assign.2`, `work.2`, `verify`, ...).
    Purpose,
    /// The decision's kind (`assign_agent`, `verdict`).
    Kind,
    /// A tool call's argument: the path below `arguments` (`arguments.code` is `["code"]`).
    Argument(Vec<String>),
}

/// What a field's values are, for checking comparisons when they are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A number: every operator, number literals.
    Number,
    /// Text: `==` and `!=`, quoted literals.
    Text,
    /// Whatever the tool call holds: any literal, ordering only with numbers.
    Any,
}

impl Field {
    /// The field named `name` as a condition writes it (`arguments.<name>` included).
    pub fn named(name: &str) -> Option<Field> {
        Some(match name {
            "confidence" => Field::Confidence,
            "probability" => Field::Probability,
            "step" => Field::Step,
            "attempt" => Field::Attempt,
            "revision" => Field::Revision,
            "round" => Field::Round,
            "agent" => Field::Agent,
            "chosen" => Field::Chosen,
            "tool" => Field::Tool,
            "purpose" => Field::Purpose,
            "kind" => Field::Kind,
            _ => {
                let path = name
                    .strip_prefix("arguments.")
                    .filter(|path| !path.is_empty())?;
                return Some(Field::Argument(
                    path.split('.').map(str::to_owned).collect(),
                ));
            }
        })
    }

    /// The type of the field's values.
    pub fn field_type(&self) -> FieldType {
        match self {
            Field::Confidence
            | Field::Probability
            | Field::Step
            | Field::Attempt
            | Field::Revision
            | Field::Round => FieldType::Number,
            Field::Agent | Field::Chosen | Field::Tool | Field::Purpose | Field::Kind => {
                FieldType::Text
            }
            Field::Argument(_) => FieldType::Any,
        }
    }

    /// The field's name as a condition writes it; `arguments` for every argument (see `Display` for
    /// the whole path).
    pub fn name(&self) -> &'static str {
        match self {
            Field::Confidence => "confidence",
            Field::Probability => "probability",
            Field::Step => "step",
            Field::Attempt => "attempt",
            Field::Revision => "revision",
            Field::Round => "round",
            Field::Agent => "agent",
            Field::Chosen => "chosen",
            Field::Tool => "tool",
            Field::Purpose => "purpose",
            Field::Kind => "kind",
            Field::Argument(_) => "arguments",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Argument(path) => write!(f, "arguments.{}", path.join(".")),
            other => f.write_str(other.name()),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    /// How it is written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    /// Whether it orders (numbers only) rather than tests equality.
    pub fn orders(self) -> bool {
        !matches!(self, Op::Eq | Op::Ne)
    }

    fn accepts(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Op::Lt => ordering == Less,
            Op::Le => ordering != Greater,
            Op::Gt => ordering == Greater,
            Op::Ge => ordering != Less,
            Op::Eq => ordering == Equal,
            Op::Ne => ordering != Equal,
        }
    }
}

/// A literal a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A finite number.
    Number(f64),
    /// A quoted string.
    Text(String),
    /// `true` or `false`.
    Bool(bool),
}

impl Literal {
    fn type_name(&self) -> &'static str {
        match self {
            Literal::Number(_) => "a number",
            Literal::Text(_) => "a string",
            Literal::Bool(_) => "a boolean",
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // f64's Display is the shortest text that parses back to the same number.
            Literal::Number(number) => write!(f, "{number}"),
            Literal::Text(text) => {
                f.write_str("\"")?;
                for c in text.chars() {
                    match c {
                        '"' => f.write_str("\\\"")?,
                        '\\' => f.write_str("\\\\")?,
                        other => write!(f, "{other}")?,
                    }
                }
                f.write_str("\"")
            }
            Literal::Bool(value) => write!(f, "{value}"),
        }
    }
}

/// A condition text that does not parse: what is wrong and where (a 1-based character column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct ConditionError {
    /// The column (in characters, from 1) where the problem is.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Condition {
    /// Parses `text` (see the module's grammar).
    pub fn parse(text: &str) -> Result<Condition, ConditionError> {
        parse::condition(text)
    }

    /// Every comparison, left to right.
    pub fn comparisons(&self) -> Vec<&Comparison> {
        fn walk<'a>(expr: &'a Expr, into: &mut Vec<&'a Comparison>) {
            match expr {
                Expr::Or(parts) | Expr::And(parts) => {
                    for part in parts {
                        walk(part, into);
                    }
                }
                Expr::Compare(comparison) => into.push(comparison),
            }
        }
        let mut all = Vec::new();
        walk(&self.expr, &mut all);
        all
    }

    /// Whether the condition holds at `point`.
    pub fn holds(&self, point: &PausePoint) -> bool {
        fn eval(expr: &Expr, point: &PausePoint) -> bool {
            match expr {
                Expr::Or(parts) => parts.iter().any(|part| eval(part, point)),
                Expr::And(parts) => parts.iter().all(|part| eval(part, point)),
                Expr::Compare(comparison) => comparison.holds(point),
            }
        }
        eval(&self.expr, point)
    }
}

/// A field's value at a point, borrowed.
enum Operand<'a> {
    Number(f64),
    Text(&'a str),
    Bool(bool),
    /// A JSON value of another kind (null, array, object): it equals no literal.
    Other,
}

impl<'a> Operand<'a> {
    fn of(value: &'a serde_json::Value) -> Operand<'a> {
        match value {
            serde_json::Value::Number(number) => {
                number.as_f64().map_or(Operand::Other, Operand::Number)
            }
            serde_json::Value::String(text) => Operand::Text(text),
            serde_json::Value::Bool(value) => Operand::Bool(*value),
            _ => Operand::Other,
        }
    }
}

impl Comparison {
    /// Whether it holds at `point` (false when the point lacks the field or holds another type).
    pub fn holds(&self, point: &PausePoint) -> bool {
        let Some(operand) = lookup(&self.field, point) else {
            return false;
        };
        match (operand, &self.literal) {
            (Operand::Number(value), Literal::Number(literal)) => value
                .partial_cmp(literal)
                .is_some_and(|ordering| self.op.accepts(ordering)),
            (Operand::Text(value), Literal::Text(literal)) if !self.op.orders() => {
                self.op.accepts(value.cmp(literal.as_str()))
            }
            (Operand::Bool(value), Literal::Bool(literal)) if !self.op.orders() => {
                self.op.accepts(value.cmp(literal))
            }
            _ => false,
        }
    }
}

/// The value of `field` at `point`, if it has one.
fn lookup<'a>(field: &Field, point: &'a PausePoint) -> Option<Operand<'a>> {
    let value = |name: &str| point.values.get(name).map(Operand::of);
    match field {
        Field::Agent => Some(Operand::Text(point.agent.as_str())),
        Field::Step => point.step.map(|step| Operand::Number(f64::from(step))),
        Field::Kind => point.kind.as_deref().map(Operand::Text),
        Field::Tool => point.tool.as_deref().map(Operand::Text),
        Field::Purpose => point.purpose.as_deref().map(Operand::Text),
        Field::Confidence
        | Field::Probability
        | Field::Attempt
        | Field::Revision
        | Field::Round
        | Field::Chosen => value(field.name()),
        Field::Argument(path) => {
            let mut current = point.values.get("arguments")?;
            for name in path {
                current = current.get(name)?;
            }
            Some(Operand::of(current))
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.field, self.op.as_str(), self.literal)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Compare(comparison) => write!(f, "{comparison}"),
            Expr::Or(parts) => {
                for (n, part) in parts.iter().enumerate() {
                    if n > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{part}")?;
                }
                Ok(())
            }
            Expr::And(parts) => {
                for (n, part) in parts.iter().enumerate() {
                    if n > 0 {
                        f.write_str(" and ")?;
                    }
                    match part {
                        Expr::Or(_) => write!(f, "({part})")?,
                        _ => write!(f, "{part}")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

impl FromStr for Condition {
    type Err = ConditionError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Condition::parse(text)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Condition::parse(&text).map_err(serde::de::Error::custom)
    }
}

mod parse;

#[cfg(test)]
mod tests;
