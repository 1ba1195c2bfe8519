//! From text to a [`Condition`]: the tokenizer (with each token's column) and the recursive-descent parser,
//! with its bounds and the type checks done when a comparison is read.

use super::{
    Comparison, Condition, ConditionError, Expr, Field, FieldType, Literal, Op, FIELD_NAMES,
    MAX_COMPARISONS, MAX_CONDITION_CHARS, MAX_DEPTH,
};

/// Parses `text` into a condition (see the grammar in `condition.rs`).
pub(super) fn condition(text: &str) -> Result<Condition, ConditionError> {
    let chars = text.chars().count();
    if chars > MAX_CONDITION_CHARS {
        return Err(ConditionError {
            column: MAX_CONDITION_CHARS + 1,
            message: format!(
                "the condition has {chars} characters; at most {MAX_CONDITION_CHARS} are allowed"
            ),
        });
    }
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        position: 0,
        depth: 0,
        comparisons: 0,
    };
    if parser.peek().token == Token::End {
        return Err(ConditionError {
            column: parser.peek().column,
            message: "the condition is empty".into(),
        });
    }
    let expr = parser.or_group()?;
    let next = parser.peek();
    match &next.token {
        Token::End => Ok(Condition { expr }),
        Token::Close => Err(ConditionError {
            column: next.column,
            message: "unexpected ')' with no '(' before it".into(),
        }),
        other => Err(ConditionError {
            column: next.column,
            message: format!(
                "expected 'and', 'or' or the end of the condition after '{}', found {}",
                parser.previous_text(),
                other.describe()
            ),
        }),
    }
}

/// A token of a condition's text.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A name: a field, or a word that is not a keyword.
    Name(String),
    Number(f64),
    Text(String),
    Bool(bool),
    Op(Op),
    And,
    Or,
    Open,
    Close,
    End,
}

impl Token {
    /// How an error message names it.
    fn describe(&self) -> String {
        match self {
            Token::Name(name) => format!("'{name}'"),
            Token::Number(number) => format!("the number {number}"),
            Token::Text(text) => format!("the string {}", Literal::Text(text.clone())),
            Token::Bool(value) => format!("'{value}'"),
            Token::Op(op) => format!("'{}'", op.as_str()),
            Token::And => "'and'".into(),
            Token::Or => "'or'".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::End => "the end of the condition".into(),
        }
    }
}

/// A token, the column it starts at, and its text as written.
#[derive(Debug, Clone)]
struct Spanned {
    token: Token,
    column: usize,
    text: String,
}

/// Splits `text` into tokens, ending with [`Token::End`].
fn tokenize(text: &str) -> Result<Vec<Spanned>, ConditionError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    let error = |column: usize, message: String| ConditionError { column, message };
    while at < chars.len() {
        let c = chars[at];
        let column = at + 1;
        if c.is_whitespace() {
            at += 1;
            continue;
        }
        let start = at;
        let token = match c {
            '(' => {
                at += 1;
                Token::Open
            }
            ')' => {
                at += 1;
                Token::Close
            }
            '<' | '>' | '=' | '!' => {
                let equals = chars.get(at + 1) == Some(&'=');
                at += if equals { 2 } else { 1 };
                match (c, equals) {
                    ('<', false) => Token::Op(Op::Lt),
                    ('<', true) => Token::Op(Op::Le),
                    ('>', false) => Token::Op(Op::Gt),
                    ('>', true) => Token::Op(Op::Ge),
                    ('=', true) => Token::Op(Op::Eq),
                    ('!', true) => Token::Op(Op::Ne),
                    ('=', false) => {
                        return Err(error(
                            column,
                            "'=' is not an operator: use '==' to compare".into(),
                        ))
                    }
                    _ => {
                        return Err(error(
                            column,
                            "'!' is not an operator: use '!=' to compare".into(),
                        ))
                    }
                }
            }
            '"' | '\'' => {
                let quote = c;
                at += 1;
                let mut value = String::new();
                loop {
                    match chars.get(at) {
                        None => {
                            return Err(error(
                                column,
                                format!("unterminated string: no closing {quote} for the quote opened"),
                            ))
                        }
                        Some(&end) if end == quote => {
                            at += 1;
                            break;
                        }
                        Some('\\') => match chars.get(at + 1) {
                            Some(&escaped @ ('\\' | '"' | '\'')) => {
                                value.push(escaped);
                                at += 2;
                            }
                            Some(other) => {
                                return Err(error(
                                    at + 1,
                                    format!("unknown escape '\\{other}' in a string (only \\\\, \\\" and \\' are escapes)"),
                                ))
                            }
                            None => {
                                return Err(error(
                                    column,
                                    format!("unterminated string: no closing {quote} for the quote opened"),
                                ))
                            }
                        },
                        Some(&other) => {
                            value.push(other);
                            at += 1;
                        }
                    }
                }
                Token::Text(value)
            }
            '0'..='9' | '-' | '.' => {
                at += 1;
                while at < chars.len()
                    && (chars[at].is_ascii_alphanumeric()
                        || chars[at] == '.'
                        || ((chars[at] == '-' || chars[at] == '+')
                            && matches!(chars[at - 1], 'e' | 'E')))
                {
                    at += 1;
                }
                let written: String = chars[start..at].iter().collect();
                let well_formed = written
                    .strip_prefix('-')
                    .unwrap_or(&written)
                    .starts_with(|c: char| c.is_ascii_digit() || c == '.')
                    && !written.contains("inf")
                    && !written.to_ascii_lowercase().contains("nan");
                match written.parse::<f64>() {
                    Ok(number) if well_formed && number.is_finite() => Token::Number(number),
                    Ok(_) if well_formed => {
                        return Err(error(
                            column,
                            format!("the number {written} is out of range"),
                        ))
                    }
                    _ => return Err(error(column, format!("'{written}' is not a number"))),
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                while at < chars.len()
                    && (chars[at].is_ascii_alphanumeric() || chars[at] == '_' || chars[at] == '.')
                {
                    at += 1;
                }
                let word: String = chars[start..at].iter().collect();
                match word.as_str() {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "true" => Token::Bool(true),
                    "false" => Token::Bool(false),
                    _ => Token::Name(word),
                }
            }
            other => return Err(error(column, format!("unexpected character '{other}'"))),
        };
        tokens.push(Spanned {
            token,
            column,
            text: chars[start..at].iter().collect(),
        });
    }
    tokens.push(Spanned {
        token: Token::End,
        column: chars.len() + 1,
        text: String::new(),
    });
    Ok(tokens)
}

/// A recursive-descent parser over the tokens.
struct Parser {
    tokens: Vec<Spanned>,
    position: usize,
    depth: usize,
    comparisons: usize,
}

impl Parser {
    fn peek(&self) -> &Spanned {
        // The last token is always End, and the parser never moves past it.
        &self.tokens[self.position.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Spanned {
        let token = self.peek().clone();
        if token.token != Token::End {
            self.position += 1;
        }
        token
    }

    /// The text of the token before the current one (for "after '...'").
    fn previous_text(&self) -> &str {
        self.position
            .checked_sub(1)
            .and_then(|n| self.tokens.get(n))
            .map_or("", |token| token.text.as_str())
    }

    fn or_group(&mut self) -> Result<Expr, ConditionError> {
        let mut parts = vec![self.and_group()?];
        while self.peek().token == Token::Or {
            self.advance();
            parts.push(self.and_group()?);
        }
        Ok(group(parts, true))
    }

    fn and_group(&mut self) -> Result<Expr, ConditionError> {
        let mut parts = vec![self.primary()?];
        while self.peek().token == Token::And {
            self.advance();
            parts.push(self.primary()?);
        }
        Ok(group(parts, false))
    }

    fn primary(&mut self) -> Result<Expr, ConditionError> {
        if self.peek().token == Token::Open {
            let open = self.advance();
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(ConditionError {
                    column: open.column,
                    message: format!("parentheses are nested more than {MAX_DEPTH} deep"),
                });
            }
            let inner = self.or_group()?;
            let close = self.advance();
            if close.token != Token::Close {
                return Err(ConditionError {
                    column: close.column,
                    message: format!(
                        "expected ')' to close the '(' at column {}, found {}",
                        open.column,
                        close.token.describe()
                    ),
                });
            }
            self.depth -= 1;
            return Ok(inner);
        }
        self.comparison().map(Expr::Compare)
    }

    fn comparison(&mut self) -> Result<Comparison, ConditionError> {
        let name = self.advance();
        let field = match &name.token {
            Token::Name(word) => Field::named(word).ok_or_else(|| ConditionError {
                column: name.column,
                message: if word == "arguments" || word.starts_with("arguments.") {
                    format!("'{word}' needs a name after the dot (arguments.<name>)")
                } else {
                    format!(
                        "unknown field '{word}'; the fields are {} and arguments.<name>",
                        FIELD_NAMES.join(", ")
                    )
                },
            })?,
            other => {
                return Err(ConditionError {
                    column: name.column,
                    message: format!(
                        "expected a field name ({}, arguments.<name>), found {}",
                        FIELD_NAMES.join(", "),
                        other.describe()
                    ),
                })
            }
        };
        if let Field::Argument(path) = &field {
            if path.iter().any(String::is_empty) {
                return Err(ConditionError {
                    column: name.column,
                    message: format!(
                        "'{}' has an empty name between dots (arguments.<name>.<name>)",
                        name.text
                    ),
                });
            }
        }
        let op_token = self.advance();
        let Token::Op(op) = op_token.token else {
            return Err(ConditionError {
                column: op_token.column,
                message: format!(
                    "expected a comparison operator (<, <=, >, >=, ==, !=) after '{}', found {}",
                    name.text,
                    op_token.token.describe()
                ),
            });
        };
        let value = self.advance();
        let literal = match value.token {
            Token::Number(number) => Literal::Number(number),
            Token::Text(text) => Literal::Text(text),
            Token::Bool(flag) => Literal::Bool(flag),
            other => {
                return Err(ConditionError {
                    column: value.column,
                    message: format!(
                        "expected a number, a quoted string, true or false after '{}', found {}",
                        op.as_str(),
                        other.describe()
                    ),
                })
            }
        };
        check_types(&field, op, &literal, name.column, value.column)?;
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(ConditionError {
                column: name.column,
                message: format!("more than {MAX_COMPARISONS} comparisons"),
            });
        }
        Ok(Comparison { field, op, literal })
    }
}

/// `parts` as one expression: the single part itself, or an `or` (`any`) or `and` group with nested groups
/// of the same kind merged into it.
fn group(parts: Vec<Expr>, any: bool) -> Expr {
    if parts.len() == 1 {
        if let Some(single) = parts.into_iter().next() {
            return single;
        }
        return Expr::Or(Vec::new());
    }
    let mut flat = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Expr::Or(inner) if any => flat.extend(inner),
            Expr::And(inner) if !any => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if any {
        Expr::Or(flat)
    } else {
        Expr::And(flat)
    }
}

/// Whether `field op literal` compares like with like.
fn check_types(
    field: &Field,
    op: Op,
    literal: &Literal,
    field_column: usize,
    literal_column: usize,
) -> Result<(), ConditionError> {
    let field_type = field.field_type();
    match (field_type, literal) {
        (FieldType::Number, Literal::Number(_))
        | (FieldType::Text, Literal::Text(_))
        | (FieldType::Any, _) => {}
        (FieldType::Number, other) => {
            return Err(ConditionError {
                column: literal_column,
                message: format!(
                    "'{field}' is a number and cannot be compared with {}",
                    other.type_name()
                ),
            })
        }
        (FieldType::Text, other) => {
            return Err(ConditionError {
                column: literal_column,
                message: format!(
                    "'{field}' is text and cannot be compared with {} (quote it: \"...\")",
                    other.type_name()
                ),
            })
        }
    }
    if op.orders() && !matches!(literal, Literal::Number(_)) {
        return Err(ConditionError {
            column: field_column,
            message: format!(
                "'{}' compares numbers only; compare '{field}' with == or !=",
                op.as_str()
            ),
        });
    }
    Ok(())
}
