//! The questions `troupe run` asks on stdin when its task pauses: yes or no to a cloud fallback, and what to
//! do at a debug-mode pause (`--break ON`): continue, step, abort, or override what is pending. Each is
//! read in the background, so the task's events go on being shown meanwhile.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::{json, Value};

use crate::debug::{Action, ActionError};
use crate::domain::{shorten, Event, TaskId};
use crate::messages::{CancelTask, Envelope};
use crate::service::Core;

/// Task `id` paused (`event` is its `task.paused`): asks what to do, or says how to answer; `note` prints a
/// line beside the live view.
pub fn at_pause(core: &Core, id: TaskId, event: &Event, note: impl Fn(&str)) {
    match event.data.get("reason").and_then(Value::as_str) {
        Some("cloud_fallback") => ask_to_confirm(core, id, &event.data, note),
        Some(_) if event.data.get("key").is_some() => ask_at_breakpoint(core, id, &event.data),
        _ => {}
    }
}

/// A cloud fallback: on a terminal, asks y/N (an unanswered question ends with the task's confirmation
/// timeout); elsewhere, says how to answer.
fn ask_to_confirm(core: &Core, id: TaskId, data: &Value, note: impl Fn(&str)) {
    let timeout = data
        .get("timeout_seconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if !std::io::stdin().is_terminal() {
        note(&format!(
            "task {id} waits for a confirmation of a cloud fallback; `troupe run` asks on a terminal and stdin \
             is not one, so the task fails in {timeout} s (run it on a terminal, or use `troupe serve` and \
             POST /api/v1/tasks/{id}/confirm)"
        ));
        return;
    }
    let confirmations = core.confirmations.clone();
    tokio::task::spawn_blocking(move || {
        let answer = read_answer("Send this call to the cloud? [y/N] ");
        let allow = matches!(
            answer.as_deref().map(str::trim),
            Some("y" | "Y" | "yes" | "Yes")
        );
        // The wait may have timed out meanwhile: then the answer is too late and changes nothing.
        let _ = confirmations.answer(id, allow);
    });
}

/// A debug-mode pause: asks until an answer is taken. Lines come from stdin whether or not it is a
/// terminal (so a script can answer); stdin at its end aborts the task, as nobody can answer any more.
fn ask_at_breakpoint(core: &Core, id: TaskId, data: &Value) {
    let debugger = core.tools.debugger().clone();
    let director = core.director.clone();
    // An abort also cancels the task, as `POST /resume` does: whatever it has running stops too.
    let abort = move || {
        let _ = debugger.answer(id, Action::Abort);
        director.do_send(Envelope::new(id, CancelTask));
    };
    let debugger = core.tools.debugger().clone();
    let on = data["point"]["on"].as_str().unwrap_or("").to_owned();
    tokio::task::spawn_blocking(move || loop {
        let Some(line) = read_answer(PROMPT) else {
            eprintln!("stdin is closed, so nobody can answer: aborting the task");
            abort();
            return;
        };
        let action = match parse_answer(&on, &line) {
            Ok(Action::Abort) => {
                abort();
                return;
            }
            Ok(action) => action,
            Err(why) => {
                eprintln!("{why}");
                continue;
            }
        };
        match debugger.answer(id, action) {
            Ok(()) => return,
            Err(ActionError::InvalidOverride(why)) => eprintln!("invalid override: {why}"),
            // Ended or resumed meanwhile (cancelled with Ctrl-C): nothing to answer.
            Err(ActionError::NotPaused(_)) => return,
        }
    });
}

/// What the pause question says.
const PROMPT: &str = "[c]ontinue, [s]tep, [a]bort, [o]verride VALUE? ";

/// Prints `question` on stderr and reads a line from stdin (`None` at its end or on a read error).
fn read_answer(question: &str) -> Option<String> {
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{question}");
    let _ = stderr.flush();
    let mut answer = String::new();
    match std::io::stdin().lock().read_line(&mut answer) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(answer),
    }
}

/// A line typed at a pause of a point `on` (decision, step, tool, llm) as an action: `c`/`continue`,
/// `s`/`step`, `a`/`abort`, or `o VALUE`/`override VALUE` where VALUE is the decision's option, the step's
/// new instruction or the tool call's arguments as JSON.
fn parse_answer(on: &str, line: &str) -> Result<Action, String> {
    let line = line.trim();
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    match word {
        "" | "c" | "continue" => Ok(Action::Continue),
        "s" | "step" => Ok(Action::Step),
        "a" | "abort" => Ok(Action::Abort),
        "o" | "override" if rest.is_empty() => Err(format!(
            "override what? {}",
            match on {
                "decision" => "give the option to choose, e.g. `o research`",
                "step" => "give the step's new instruction, e.g. `o Write add(a, b) in Python`",
                "tool" =>
                    "give the tool call's arguments as JSON, e.g. `o {\"language\": \"python\"}`",
                _ => "a model call's pause takes continue, step or abort",
            }
        )),
        "o" | "override" => match on {
            "decision" => Ok(Action::Override(json!({ "chosen": rest }))),
            "step" => Ok(Action::Override(json!({ "instruction": rest }))),
            "tool" => serde_json::from_str::<Value>(rest)
                .map(|arguments| Action::Override(json!({ "arguments": arguments })))
                .map_err(|error| format!("the arguments are not JSON: {error}")),
            _ => Err("a model call's pause takes continue, step or abort".to_owned()),
        },
        other => Err(format!(
            "'{}' is not an answer: c (continue), s (step), a (abort) or o VALUE (override)",
            shorten(other, 40)
        )),
    }
}

/// A debug-mode `task.paused` event's data as one line: where it paused, why, and what is pending.
pub fn describe_pause(data: &Value) -> String {
    let point = &data["point"];
    let pending = &data["pending"];
    let text = |value: &Value| value.as_str().unwrap_or("?").to_owned();
    let step = point["step"]
        .as_i64()
        .map(|step| format!(" step {step}"))
        .unwrap_or_default();
    let what = match point["on"].as_str() {
        Some("decision") => {
            let options = pending["options"]
                .as_array()
                .map(|options| {
                    options
                        .iter()
                        .map(|option| match option["probability"].as_f64() {
                            Some(p) => format!("{} {p:.2}", text(&option["name"])),
                            None => text(&option["name"]),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!(
                "decision {}{step}: the model chose {} ({options})",
                text(&point["kind"]),
                text(&pending["chosen"])
            )
        }
        Some("tool") => format!(
            "tool call {}{step}: arguments {}",
            text(&point["tool"]),
            brief(&pending["arguments"])
        ),
        Some("step") => format!(
            "{} for {}: {}",
            step.trim(),
            text(&point["agent"]),
            brief(&pending["instruction"])
        ),
        Some("llm") => format!(
            "model call {} of {}{step}",
            text(&point["purpose"]),
            text(&point["agent"])
        ),
        _ => "an unknown point".to_owned(),
    };
    let why = match data["reason"].as_str() {
        Some("breakpoint") => "at a breakpoint",
        Some("step") => "stepping",
        Some("restart") => "still, after a restart",
        _ => "",
    };
    format!("⏸ paused {why}: {what}")
}

/// A value in a line: text as it is, anything else as JSON; at most 120 characters.
pub fn brief(value: &Value) -> String {
    let text = match value {
        Value::String(text) => text.replace('\n', " "),
        other => other.to_string(),
    };
    shorten(&text, 120)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_their_first_word_and_an_override_by_the_kind_of_point() {
        assert_eq!(parse_answer("decision", "\n"), Ok(Action::Continue));
        assert_eq!(parse_answer("decision", "c"), Ok(Action::Continue));
        assert_eq!(parse_answer("step", " step "), Ok(Action::Step));
        assert_eq!(parse_answer("llm", "a"), Ok(Action::Abort));
        assert_eq!(
            parse_answer("decision", "o research"),
            Ok(Action::Override(json!({ "chosen": "research" })))
        );
        assert_eq!(
            parse_answer("step", "override Write add(a, b)  in Python"),
            Ok(Action::Override(
                json!({ "instruction": "Write add(a, b)  in Python" })
            ))
        );
        assert_eq!(
            parse_answer("tool", r#"o {"language": "python"}"#),
            Ok(Action::Override(
                json!({ "arguments": { "language": "python" } })
            ))
        );
        assert!(parse_answer("tool", "o {not json")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_answer("decision", "o")
            .unwrap_err()
            .contains("option"));
        assert!(parse_answer("llm", "o x")
            .unwrap_err()
            .contains("continue, step or abort"));
        assert!(parse_answer("decision", "maybe")
            .unwrap_err()
            .contains("not an answer"));
    }

    #[test]
    fn a_pause_is_described_by_its_point() {
        let decision = json!({
            "reason": "breakpoint",
            "point": { "on": "decision", "kind": "assign_agent", "step": 1, "agent": "director" },
            "pending": {
                "chosen": "code",
                "options": [{ "name": "code", "probability": 0.8 }, { "name": "qa", "probability": 0.2 }]
            }
        });
        assert_eq!(
            describe_pause(&decision),
            "⏸ paused at a breakpoint: decision assign_agent step 1: the model chose code (code 0.80, qa 0.20)"
        );
        let tool = json!({
            "reason": "step",
            "point": { "on": "tool", "tool": "run_code", "agent": "qa" },
            "pending": { "arguments": { "language": "python" } }
        });
        assert_eq!(
            describe_pause(&tool),
            r#"⏸ paused stepping: tool call run_code: arguments {"language":"python"}"#
        );
        let step = json!({
            "reason": "step",
            "point": { "on": "step", "step": 2, "agent": "research" },
            "pending": { "instruction": "Summarise" }
        });
        assert_eq!(
            describe_pause(&step),
            "⏸ paused stepping: step 2 for research: Summarise"
        );
    }
}
