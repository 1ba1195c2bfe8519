//! Unit tests of conditions: parsing (good and bad, with the error messages), canonical text, evaluation.

use super::*;
use crate::domain::AgentKind;
use serde_json::json;

fn error(text: &str) -> String {
    Condition::parse(text).unwrap_err().to_string()
}

fn decision(confidence: f64) -> PausePoint {
    PausePoint::decision(AgentKind::Director, "assign_agent")
        .at_step(2)
        .with("confidence", json!(confidence))
        .with("chosen", json!("code"))
}

#[test]
fn comparisons_parse_and_show_in_canonical_form() {
    for (text, canonical) in [
        ("confidence < 0.6", "confidence < 0.6"),
        ("confidence<0.6", "confidence < 0.6"),
        ("  step >= 2 ", "step >= 2"),
        ("step == 2.0", "step == 2"),
        ("chosen == 'code'", "chosen == \"code\""),
        ("chosen != \"qa\"", "chosen != \"qa\""),
        ("arguments.flag == true", "arguments.flag == true"),
        ("arguments.a.b >= -1.5e2", "arguments.a.b >= -150"),
        (
            "arguments.text == 'say \\'hi\\' \\\\ \"x\"'",
            "arguments.text == \"say 'hi' \\\\ \\\"x\\\"\"",
        ),
    ] {
        let condition = Condition::parse(text).unwrap();
        assert_eq!(condition.to_string(), canonical, "{text}");
        assert_eq!(
            Condition::parse(canonical).unwrap(),
            condition,
            "{canonical}"
        );
    }
}

#[test]
fn and_binds_tighter_than_or_and_parentheses_survive_only_where_needed() {
    for (text, canonical) in [
        (
            "step == 1 or step == 2 and attempt > 1",
            "step == 1 or step == 2 and attempt > 1",
        ),
        (
            "(step == 1 or step == 2) and attempt > 1",
            "(step == 1 or step == 2) and attempt > 1",
        ),
        ("((step == 1))", "step == 1"),
        (
            "(step == 1 and round == 1) and attempt > 1",
            "step == 1 and round == 1 and attempt > 1",
        ),
        (
            "step == 1 or (round == 2 or attempt == 3)",
            "step == 1 or round == 2 or attempt == 3",
        ),
        (
            "(step == 1 or round == 2) and (attempt == 3 or revision == 1)",
            "(step == 1 or round == 2) and (attempt == 3 or revision == 1)",
        ),
    ] {
        let condition = Condition::parse(text).unwrap();
        assert_eq!(condition.to_string(), canonical, "{text}");
        let again = Condition::parse(canonical).unwrap();
        assert_eq!(again, condition);
        assert_eq!(again.to_string(), canonical);
    }
    // The precedence is real, not only in the text: step 1 with attempt 1 holds the first, not the
    // parenthesised one.
    let point = PausePoint::step(AgentKind::Code, 1).with("attempt", json!(1));
    assert!(Condition::parse("step == 1 or step == 2 and attempt > 1")
        .unwrap()
        .holds(&point));
    assert!(
        !Condition::parse("(step == 1 or step == 2) and attempt > 1")
            .unwrap()
            .holds(&point)
    );
}

#[test]
fn parse_errors_say_what_and_where() {
    assert_eq!(
        error("confidence 0.6"),
        "expected a comparison operator (<, <=, >, >=, ==, !=) after 'confidence', found the number 0.6 at column 12"
    );
    assert_eq!(
        error("confidence <"),
        "expected a number, a quoted string, true or false after '<', found the end of the condition at column 13"
    );
    assert!(error("conf < 1").starts_with("unknown field 'conf'; the fields are confidence,"));
    assert!(error("conf < 1").ends_with("at column 1"));
    assert_eq!(error(""), "the condition is empty at column 1");
    assert_eq!(error("   "), "the condition is empty at column 4");
    assert_eq!(
        error("step = 2"),
        "'=' is not an operator: use '==' to compare at column 6"
    );
    assert_eq!(
        error("step ! 2"),
        "'!' is not an operator: use '!=' to compare at column 6"
    );
    assert_eq!(
        error("(step == 2"),
        "expected ')' to close the '(' at column 1, found the end of the condition at column 11"
    );
    assert_eq!(
        error("step == 2)"),
        "unexpected ')' with no '(' before it at column 10"
    );
    assert_eq!(
        error("step == 2 step == 3"),
        "expected 'and', 'or' or the end of the condition after '2', found 'step' at column 11"
    );
    assert_eq!(
        error("step == 2 and"),
        "expected a field name (confidence, probability, step, attempt, revision, round, agent, chosen, tool, purpose, kind, arguments.<name>), found the end of the condition at column 14"
    );
    assert_eq!(
        error("chosen == 'code"),
        "unterminated string: no closing ' for the quote opened at column 11"
    );
    assert_eq!(
        error("chosen == 'a\\nb'"),
        "unknown escape '\\n' in a string (only \\\\, \\\" and \\' are escapes) at column 13"
    );
    assert_eq!(
        error("step == 1.2.3"),
        "'1.2.3' is not a number at column 9"
    );
    assert_eq!(
        error("step == 1e999"),
        "the number 1e999 is out of range at column 9"
    );
    assert_eq!(error("step == -inf"), "'-inf' is not a number at column 9");
    assert_eq!(error("step # 2"), "unexpected character '#' at column 6");
    assert_eq!(
        error("arguments. == 1"),
        "'arguments.' needs a name after the dot (arguments.<name>) at column 1"
    );
    assert_eq!(
        error("arguments.a..b == 1"),
        "'arguments.a..b' has an empty name between dots (arguments.<name>.<name>) at column 1"
    );
}

#[test]
fn comparisons_of_unlike_types_are_refused_when_parsed() {
    assert_eq!(
        error("confidence == 'high'"),
        "'confidence' is a number and cannot be compared with a string at column 15"
    );
    assert_eq!(
        error("agent == code"),
        "expected a number, a quoted string, true or false after '==', found 'code' at column 10"
    );
    assert_eq!(
        error("agent == 1"),
        "'agent' is text and cannot be compared with a number (quote it: \"...\") at column 10"
    );
    assert_eq!(
        error("agent < 'code'"),
        "'<' compares numbers only; compare 'agent' with == or != at column 1"
    );
    assert_eq!(
        error("arguments.flag > true"),
        "'>' compares numbers only; compare 'arguments.flag' with == or != at column 1"
    );
}

#[test]
fn conditions_are_bounded() {
    let long = format!("step == {}", "1".repeat(MAX_CONDITION_CHARS));
    assert!(
        error(&long).contains("at most 256 are allowed"),
        "{}",
        error(&long)
    );
    let deep = format!(
        "{}step == 1{}",
        "(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(
        error(&deep),
        "parentheses are nested more than 8 deep at column 9"
    );
    let fine = format!(
        "{}step == 1{}",
        "(".repeat(MAX_DEPTH),
        ")".repeat(MAX_DEPTH)
    );
    assert!(Condition::parse(&fine).is_ok());
    let many = vec!["step == 1"; MAX_COMPARISONS + 1].join(" or ");
    assert!(
        error(&many).starts_with("more than 16 comparisons"),
        "{}",
        error(&many)
    );
    let enough = vec!["step == 1"; MAX_COMPARISONS].join(" or ");
    assert_eq!(
        Condition::parse(&enough).unwrap().comparisons().len(),
        MAX_COMPARISONS
    );
}

#[test]
fn conditions_evaluate_against_a_point() {
    let holds = |text: &str, point: &PausePoint| Condition::parse(text).unwrap().holds(point);
    let low = decision(0.4);
    let high = decision(0.9);
    assert!(holds("confidence < 0.6", &low));
    assert!(!holds("confidence < 0.6", &high));
    assert!(holds("confidence <= 0.4", &low) && holds("confidence >= 0.4", &low));
    assert!(holds("confidence > 0.6 or step == 2", &low));
    assert!(!holds("confidence > 0.6 and step == 2", &low));
    assert!(holds(
        "chosen == 'code' and agent == 'director' and kind == 'assign_agent'",
        &low
    ));
    assert!(holds("chosen != 'qa'", &low));
    assert!(!holds("step != 2", &low));
    // A field the point does not have: false whatever the operator.
    assert!(!holds("attempt == 1", &low));
    assert!(!holds("attempt != 1", &low));
    assert!(!holds("tool == 'run_code'", &low));
    assert!(!holds("tool != 'run_code'", &low));
    // A value of another type than the literal: false too.
    let odd =
        PausePoint::decision(AgentKind::Director, "assign_agent").with("confidence", json!("high"));
    assert!(!holds("confidence < 0.6", &odd) && !holds("confidence != 0.6", &odd));

    let call = PausePoint::tool(AgentKind::Qa, "run_code").at_step(3).with(
        "arguments",
        json!({ "entry": "step1_test.py", "limits": { "seconds": 5 }, "network": false }),
    );
    assert!(holds("arguments.entry == 'step1_test.py'", &call));
    assert!(holds("arguments.limits.seconds > 2", &call));
    assert!(holds("arguments.network == false", &call));
    assert!(!holds("arguments.network == 'false'", &call));
    assert!(!holds("arguments.missing == 1", &call));
    assert!(!holds("arguments.limits == 1", &call));
    assert!(holds("tool == 'run_code' and step == 3", &call));
}

#[test]
fn a_condition_serializes_as_its_canonical_text() {
    let condition = Condition::parse("(step==1 or step==2)and confidence<0.6").unwrap();
    let json = serde_json::to_value(&condition).unwrap();
    assert_eq!(json, json!("(step == 1 or step == 2) and confidence < 0.6"));
    let back: Condition = serde_json::from_value(json).unwrap();
    assert_eq!(back, condition);
    let bad = serde_json::from_value::<Condition>(json!("step ==")).unwrap_err();
    assert!(bad.to_string().contains("after '=='"), "{bad}");
}
