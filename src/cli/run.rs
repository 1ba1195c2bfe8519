//! `troupe run "<prompt>"`: one task in this process, shown live (a spinner per agent with its streamed
//! tokens, the plan, every decision with its probabilities, restarts, the verdict), ending with an exit code
//! from the outcome: 0 completed, 1 failed, 130 cancelled (Ctrl-C cancels the task). With `--break ON` the
//! task pauses at every such point and the question of what to do is asked on stdin (`ask.rs`).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;
use tracing::Instrument;

use super::ask;
use crate::config::Settings;
use crate::domain::{AgentKind, BreakOn, Event, EventKind, TaskId, TaskOptions};
use crate::service::Core;

/// Runs the task and returns the process exit code.
pub async fn run(
    settings: Settings,
    prompt: &str,
    options: TaskOptions,
    break_on: &[BreakOn],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let core = Core::start(settings).await?;
    let span = tracing::info_span!("troupe run", otel.name = "troupe run");
    let id = core
        .submit_pausing(prompt, options, break_on)
        .instrument(span)
        .await?;
    let mut subscription = core.events.subscribe(id, 0).await?;
    let mut view = (!json).then(|| LiveView::new(id));
    let mut outcome = EventKind::TaskFailed;
    let mut cancel_requested = false;
    loop {
        let next = tokio::select! {
            next = subscription.next() => next?,
            _ = tokio::signal::ctrl_c(), if !cancel_requested => {
                cancel_requested = true;
                if let Some(view) = &view { view.note("cancelling…"); }
                if let Err(error) = core.cancel(id).await {
                    tracing::warn!(%error, "cancel");
                }
                continue;
            }
        };
        let Some(event) = next else { break };
        if event.kind.is_terminal() {
            outcome = event.kind;
        }
        match &mut view {
            Some(view) => view.show(&event),
            None => println!("{}", serde_json::to_string(&event)?),
        }
        if event.kind == EventKind::TaskPaused {
            let note = |line: &str| match &view {
                Some(view) => view.note(line),
                None => eprintln!("{line}"),
            };
            ask::at_pause(&core, id, &event, note);
        }
    }
    if let Some(view) = view {
        view.finish();
        if outcome == EventKind::TaskCompleted {
            if let Some(task) = core.storage.task(id).await? {
                print_result(task.result.as_ref());
            }
        }
    }
    // A clean end releases the lease: tasks this process took over at start and did not finish are taken
    // over again by the next process to start (resumed from their records).
    core.stop().await;
    Ok(match outcome {
        EventKind::TaskCompleted => ExitCode::SUCCESS,
        EventKind::TaskCancelled => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

fn print_result(result: Option<&Value>) {
    let Some(result) = result else { return };
    println!();
    if let Some(answer) = result.get("answer").and_then(Value::as_str) {
        println!("Answer:\n{answer}");
    }
    // Tables in the steps' outputs, aligned.
    for found in result
        .get("tables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let table = &found["table"];
        let columns: Vec<&str> = table["columns"]
            .as_array()
            .map(|columns| columns.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let rows: Vec<Vec<String>> = table["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(Value::as_array)
                    .map(|row| {
                        row.iter()
                            .map(|cell| cell.as_str().unwrap_or("").to_owned())
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !columns.is_empty() {
            println!(
                "
Table from step {}:",
                found["step"]
            );
            print!("{}", super::table::render(&columns, &rows));
        }
    }
    if let Some(verdict) = result.get("verdict").filter(|v| !v.is_null()) {
        println!(
            "\nQA verdict: {} ({})",
            verdict
                .get("verdict")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            verdict
                .get("feedback")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
    }
}

/// The terminal view: a line per event worth reading, a spinner per agent.
struct LiveView {
    multi: MultiProgress,
    spinners: HashMap<AgentKind, ProgressBar>,
    streamed: HashMap<AgentKind, String>,
}

impl LiveView {
    fn new(id: TaskId) -> Self {
        let multi = MultiProgress::new();
        let view = LiveView {
            multi,
            spinners: HashMap::new(),
            streamed: HashMap::new(),
        };
        view.note(&format!("task {id}"));
        view
    }

    fn spinner(&mut self, agent: AgentKind) -> &ProgressBar {
        let multi = &self.multi;
        self.spinners.entry(agent).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {prefix:>9.bold} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(agent.as_str());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    /// Prints a line above the spinners; when stdout is not a terminal (piped, logged) indicatif draws
    /// nothing, so the line is printed plainly.
    fn note(&self, line: &str) {
        if self.multi.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    fn show(&mut self, event: &Event) {
        let data = &event.data;
        let text = |key: &str| {
            data.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        match event.kind {
            EventKind::TaskQueued => {}
            EventKind::TaskStarted => {
                self.spinner(AgentKind::Director).set_message("planning…");
            }
            EventKind::PlanCreated => {
                let steps = data
                    .get("steps")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                self.note("plan:");
                for (index, step) in steps.iter().enumerate() {
                    self.note(&format!("  {}. {}", index + 1, step.as_str().unwrap_or("")));
                }
                self.spinner(AgentKind::Director)
                    .set_message("assigning steps…");
            }
            EventKind::DecisionMade => {
                let options = data
                    .get("options")
                    .and_then(Value::as_array)
                    .map(|options| {
                        options
                            .iter()
                            .map(|o| {
                                // A calibrated decision shows the model's own probability beside the
                                // calibrated one it was made by.
                                let raw = o
                                    .get("raw_probability")
                                    .and_then(Value::as_f64)
                                    .map(|raw| format!(" (raw {raw:.2})"))
                                    .unwrap_or_default();
                                format!(
                                    "{} {:.2}{raw}",
                                    o.get("name").and_then(Value::as_str).unwrap_or("?"),
                                    o.get("probability").and_then(Value::as_f64).unwrap_or(0.0)
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                self.note(&format!(
                    "decision: step {} → {} ({options}) {}",
                    data.get("step").and_then(Value::as_i64).unwrap_or(0),
                    text("chosen"),
                    text("reasoning")
                ));
            }
            EventKind::MemoryRead => {
                let hits = data
                    .get("hits")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let used: Vec<String> = hits
                    .iter()
                    .filter(|hit| hit.get("used").and_then(Value::as_bool) == Some(true))
                    .map(|hit| {
                        format!(
                            "{} {:.2}",
                            hit.get("kind").and_then(Value::as_str).unwrap_or("?"),
                            hit.get("score").and_then(Value::as_f64).unwrap_or(0.0)
                        )
                    })
                    .collect();
                if !hits.is_empty() {
                    let agent = event.agent.map_or("?", AgentKind::as_str);
                    self.note(&format!(
                        "memory: {agent} recalled {} of {} ({})",
                        used.len(),
                        hits.len(),
                        if used.is_empty() {
                            "none close enough".to_owned()
                        } else {
                            used.join(", ")
                        }
                    ));
                }
            }
            EventKind::AgentStarted => {
                if let Some(agent) = event.agent {
                    self.spinner(AgentKind::Director)
                        .set_message(format!("supervising {agent}"));
                    self.streamed.insert(agent, String::new());
                    let message = format!(
                        "step {}: {}",
                        data.get("step").and_then(Value::as_i64).unwrap_or(0),
                        text("instruction")
                    );
                    self.spinner(agent).set_message(message);
                }
            }
            EventKind::LlmToken => {
                if let Some(agent) = event.agent {
                    let streamed = self.streamed.entry(agent).or_default();
                    streamed.push_str(&text("text"));
                    let tail: String = streamed
                        .replace('\n', " ")
                        .chars()
                        .rev()
                        .take(70)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    self.spinner(agent).set_message(tail);
                }
            }
            EventKind::LlmFinished => {
                if let Some(agent) = event.agent {
                    self.streamed.insert(agent, String::new());
                }
            }
            EventKind::AgentFinished => {
                if let Some(agent) = event.agent {
                    let message = format!(
                        "✓ step {} done",
                        data.get("step").and_then(Value::as_i64).unwrap_or(0)
                    );
                    self.spinner(agent).set_message(message);
                }
            }
            EventKind::AgentRestarted => {
                self.note(&format!(
                    "! {} restarted by its supervisor ({}: {})",
                    event.agent.map_or("agent", AgentKind::as_str),
                    text("reason"),
                    text("detail")
                ));
            }
            EventKind::QaVerdict => {
                self.note(&format!(
                    "qa verdict: {} ({})",
                    text("verdict"),
                    text("feedback")
                ));
            }
            EventKind::ConsensusReached => {
                let votes: Vec<String> = data
                    .get("votes")
                    .and_then(Value::as_array)
                    .map(|votes| {
                        votes
                            .iter()
                            .map(|vote| {
                                format!(
                                    "voter {} {}",
                                    vote.get("voter").and_then(Value::as_u64).unwrap_or(0),
                                    vote.get("verdict").and_then(Value::as_str).unwrap_or("?")
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.note(&format!(
                    "consensus ({}): {}, {:.0}% agreeing ({})",
                    text("rule"),
                    text("outcome"),
                    100.0 * data.get("agreement").and_then(Value::as_f64).unwrap_or(0.0),
                    votes.join(", ")
                ));
            }
            EventKind::ToolCalled => {
                if let Some(agent) = event.agent {
                    let message = format!("tool {} {}", text("tool"), text("outcome"));
                    self.spinner(agent).set_message(message);
                }
            }
            EventKind::ToolReplayed => {
                let same = data.get("same").and_then(Value::as_bool) == Some(true);
                self.note(&format!(
                    "replayed tool call {} ({}): {}",
                    text("call_id"),
                    text("tool"),
                    if same { "same" } else { "different" }
                ));
            }
            EventKind::SandboxViolation => {
                self.note(&format!(
                    "! sandbox contained {} ({})",
                    text("kind"),
                    text("detail")
                ));
            }
            EventKind::CodeAttempt => {
                let passed = data.get("passed").and_then(Value::as_bool) == Some(true);
                let vacuous = data.get("vacuous").and_then(Value::as_bool) == Some(true);
                let off_task = data.get("off_task").and_then(Value::as_bool) == Some(true);
                self.note(&format!(
                    "step {} attempt {} of {}: test {}",
                    data.get("step").and_then(Value::as_i64).unwrap_or(0),
                    data.get("attempt").and_then(Value::as_i64).unwrap_or(0),
                    data.get("of").and_then(Value::as_i64).unwrap_or(0),
                    match (passed, vacuous, off_task) {
                        (true, _, _) => "passed",
                        (false, true, _) => "vacuous (it cannot fail)",
                        (false, false, true) => "passed, but the code is not for the task",
                        (false, false, false) => "failed",
                    }
                ));
            }
            EventKind::QaRevision => {
                self.note(&format!(
                    "qa sends the work back (round {}): {}",
                    data.get("round").and_then(Value::as_i64).unwrap_or(0),
                    text("feedback")
                ));
            }
            EventKind::TaskPaused if text("reason") != "cloud_fallback" => {
                self.note(&ask::describe_pause(data));
            }
            EventKind::TaskPaused => {
                let to = |key: &str| {
                    data.get("to")
                        .and_then(|to| to.get(key))
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                };
                self.note(&format!(
                    "! paused: the model failed ({}); a cloud fallback to {} {} would cost about ${:.4}",
                    text("error"),
                    to("provider"),
                    to("model"),
                    data.get("estimated_cost_usd")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0)
                ));
            }
            EventKind::TaskResumed if event.data.get("after_crash").is_some() => {
                self.note("resumed after its process stopped")
            }
            EventKind::TaskResumed if text("reason") == "debug" => {
                self.note(&format!("resumed: {}", text("action")))
            }
            EventKind::TaskResumed => self.note(&format!("resumed: {}", text("answer"))),
            EventKind::DecisionOverridden => self.note(&format!(
                "overridden ({}): {} → {}",
                text("what"),
                ask::brief(&data["before"]),
                ask::brief(&data["after"])
            )),
            EventKind::LlmFallback => self.note(&format!(
                "! model call {} falls back ({})",
                text("purpose"),
                text("reason")
            )),
            EventKind::BudgetExceeded => self.note(&format!(
                "! budget: {} limit reached; {}",
                text("limit"),
                text("action")
            )),
            EventKind::ReplayDiverged => self.note(&format!(
                "! replay diverged at {} ({}); {}",
                text("purpose"),
                text("part"),
                match text("action").as_str() {
                    "live" => "live from here",
                    _ => "stopping",
                }
            )),
            EventKind::TaskForked => self.note(&format!(
                "fork of {} from step {}",
                text("source"),
                data.get("from_step").and_then(Value::as_i64).unwrap_or(0)
            )),
            EventKind::BreakpointSet | EventKind::BreakpointRemoved => {
                let breakpoint = &data["breakpoint"];
                let field = |key: &str| breakpoint.get(key).and_then(Value::as_str).unwrap_or("");
                self.note(&format!(
                    "breakpoint {} on {}{}",
                    if event.kind == EventKind::BreakpointSet {
                        "set"
                    } else {
                        "removed"
                    },
                    field("on"),
                    match field("when") {
                        "" => String::new(),
                        when => format!(" when {when}"),
                    }
                ));
            }
            EventKind::TaskCompleted => self.note("task completed"),
            EventKind::TaskFailed => self.note(&format!("task failed: {}", text("error"))),
            EventKind::TaskCancelled => self.note("task cancelled"),
        }
    }

    fn finish(self) {
        for bar in self.spinners.values() {
            bar.finish_and_clear();
        }
    }
}
