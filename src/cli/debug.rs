//! `troupe debug ...`: the debug mode from a terminal, as a client of a running server (`troupe serve`) over
//! its HTTP API: `debug break add|list|rm` set, list and remove breakpoints (`/api/v1/breakpoints`);
//! `debug state` shows what a paused task waits on (`/api/v1/tasks/{id}/state`) and `debug resume` acts at
//! its pause (`/api/v1/tasks/{id}/resume`). The server validates; a refusal's message is printed as the
//! server says it, with exit code 1. (`troupe run --break ON` pauses a task of its own process and asks on
//! stdin instead: `ask.rs`.)

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::config::{ServerSettings, Settings};
use crate::domain::shorten;

/// `troupe debug [--server URL] ...`
#[derive(Debug, Args)]
pub struct DebugArgs {
    /// The running server's address (default: from server.bind, e.g. http://127.0.0.1:8080).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Debug,
}

/// The debug subcommands.
#[derive(Debug, Subcommand)]
pub enum Debug {
    /// Breakpoints: where tasks pause (kept by the server until removed; they apply to every new task, or
    /// to one with --task).
    Break {
        /// What to do.
        #[command(subcommand)]
        action: Break,
    },
    /// What a task is paused on and holds (its steps, short-term memory, recalled memories, workspace
    /// files), as JSON.
    State {
        /// The task's id.
        task: String,
    },
    /// Act on a task paused at a breakpoint: continue (the default), step to the next point, abort, or
    /// override what is pending (with --chosen, --instruction or --arguments).
    Resume {
        /// The task's id.
        task: String,
        /// continue, step, abort or override (implied by --chosen, --instruction or --arguments).
        #[arg(long)]
        action: Option<String>,
        /// A decision's pause: the option to take instead.
        #[arg(long)]
        chosen: Option<String>,
        /// A step's pause: its new instruction.
        #[arg(long)]
        instruction: Option<String>,
        /// A tool call's pause: its new arguments, as JSON (checked against the tool's schema).
        #[arg(long)]
        arguments: Option<String>,
    },
}

/// `troupe debug break ...`
#[derive(Debug, Subcommand)]
pub enum Break {
    /// Set a breakpoint; prints its id.
    Add {
        /// Where to pause: decision, tool, step or llm.
        #[arg(long)]
        on: String,
        /// Only this agent's points (director, research, code, qa).
        #[arg(long)]
        agent: Option<String>,
        /// Only decisions of this kind (assign_agent, verdict).
        #[arg(long)]
        kind: Option<String>,
        /// Only calls of this tool (run_code, write_file, read_file, list_files, search_memory).
        #[arg(long)]
        tool: Option<String>,
        /// Only this step (from 1).
        #[arg(long)]
        step: Option<i32>,
        /// Only model calls of this purpose or below it (plan, assign, work.2, verify, ...).
        #[arg(long)]
        purpose: Option<String>,
        /// Only where this condition holds, e.g. "confidence < 0.6".
        #[arg(long)]
        when: Option<String>,
        /// Only in this task (one that has not finished).
        #[arg(long)]
        task: Option<String>,
        /// Print the stored breakpoint as JSON instead of its id.
        #[arg(long)]
        json: bool,
    },
    /// List the breakpoints in force, oldest first.
    List {
        /// Only those attached to this task.
        #[arg(long)]
        task: Option<String>,
        /// Print them as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a breakpoint.
    Rm {
        /// Its id.
        id: String,
    },
}

/// Runs a debug subcommand against the server: 0 done, 1 the server refused (its message printed), 2 the
/// server could not be reached (an error).
pub async fn debug(settings: Settings, args: DebugArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&settings.server, args.server.as_deref())?;
    match args.command {
        Debug::Break { action } => breakpoints(&client, action).await,
        Debug::State { task } => {
            let path = format!("/api/v1/tasks/{}/state", query_value(&task));
            match client.send(Method::Get, &path, None).await? {
                Ok(state) => {
                    println!("{}", serde_json::to_string_pretty(&state)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
        Debug::Resume {
            task,
            action,
            chosen,
            instruction,
            arguments,
        } => {
            let body = match resume_body(action, chosen, instruction, arguments.as_deref()) {
                Ok(body) => body,
                Err(why) => {
                    eprintln!("troupe: {why}");
                    return Ok(ExitCode::from(1));
                }
            };
            let path = format!("/api/v1/tasks/{}/resume", query_value(&task));
            match client.send(Method::Post, &path, Some(&body)).await? {
                Ok(answer) => {
                    println!("{}", text(&answer["action"]));
                    Ok(ExitCode::SUCCESS)
                }
                Err(code) => Ok(code),
            }
        }
    }
}

/// The body of `POST /tasks/{id}/resume` from `debug resume`'s flags: an override field implies
/// `"action": "override"`, none implies `continue`; the server checks the rest.
fn resume_body(
    action: Option<String>,
    chosen: Option<String>,
    instruction: Option<String>,
    arguments: Option<&str>,
) -> Result<Value, String> {
    let arguments = arguments
        .map(serde_json::from_str::<Value>)
        .transpose()
        .map_err(|error| format!("--arguments is not JSON: {error}"))?;
    let overriding = chosen.is_some() || instruction.is_some() || arguments.is_some();
    let action =
        action.unwrap_or_else(|| if overriding { "override" } else { "continue" }.to_owned());
    let mut body = json!({ "action": action });
    for (key, value) in [
        ("chosen", chosen.map(Value::from)),
        ("instruction", instruction.map(Value::from)),
        ("arguments", arguments),
    ] {
        if let Some(value) = value {
            body[key] = value;
        }
    }
    Ok(body)
}

async fn breakpoints(client: &Client, action: Break) -> anyhow::Result<ExitCode> {
    match action {
        Break::Add {
            on,
            agent,
            kind,
            tool,
            step,
            purpose,
            when,
            task,
            json,
        } => {
            let mut body = json!({ "on": on });
            for (key, value) in [
                ("agent", agent.map(Value::from)),
                ("kind", kind.map(Value::from)),
                ("tool", tool.map(Value::from)),
                ("step", step.map(Value::from)),
                ("purpose", purpose.map(Value::from)),
                ("when", when.map(Value::from)),
                ("task_id", task.map(Value::from)),
            ] {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            let breakpoint = match client
                .send(Method::Post, "/api/v1/breakpoints", Some(&body))
                .await?
            {
                Ok(breakpoint) => breakpoint,
                Err(code) => return Ok(code),
            };
            if json {
                println!("{breakpoint}");
            } else {
                println!("{}", text(&breakpoint["id"]));
            }
            Ok(ExitCode::SUCCESS)
        }
        Break::List { task, json } => {
            let path = match &task {
                Some(task) => format!("/api/v1/breakpoints?task_id={}", query_value(task)),
                None => "/api/v1/breakpoints".to_owned(),
            };
            let list = match client.send(Method::Get, &path, None).await? {
                Ok(list) => list,
                Err(code) => return Ok(code),
            };
            let rows = list["breakpoints"].as_array().cloned().unwrap_or_default();
            if json {
                println!("{}", Value::Array(rows));
            } else {
                print!("{}", table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Break::Rm { id } => {
            let path = format!("/api/v1/breakpoints/{}", query_value(&id));
            match client.send(Method::Delete, &path, None).await? {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(code) => Ok(code),
            }
        }
    }
}

/// The columns of `list`'s table: heading and the breakpoint's key.
const COLUMNS: [(&str, &str); 9] = [
    ("ID", "id"),
    ("ON", "on"),
    ("AGENT", "agent"),
    ("KIND", "kind"),
    ("TOOL", "tool"),
    ("STEP", "step"),
    ("PURPOSE", "purpose"),
    ("TASK", "task_id"),
    ("WHEN", "when"),
];

/// `rows` as an aligned table with a heading line ("-" for what a breakpoint does not give); a note when
/// there are none.
fn table(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "no breakpoints\n".to_owned();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| COLUMNS.iter().map(|(_, key)| text(&row[*key])).collect())
        .collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(n, (heading, _))| {
            cells
                .iter()
                .map(|row| row[n].chars().count())
                .chain([heading.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let mut out = String::new();
        for (n, value) in values.iter().enumerate() {
            if n + 1 == values.len() {
                out.push_str(value);
            } else {
                out.push_str(value);
                let pad = widths[n].saturating_sub(value.chars().count()) + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(COLUMNS.iter().map(|(heading, _)| *heading).collect());
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON value as a table cell: text as it is, null as "-", anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// What [`query_value`] leaves as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `value` percent-encoded for a path segment or query value (an id passes as it is).
fn query_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, UNRESERVED).to_string()
}

/// The methods the debug commands use.
#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Delete,
}

/// An HTTP client for one server.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for `server` (or the configured server's address), with the configured auth token.
    fn new(settings: &ServerSettings, server: Option<&str>) -> anyhow::Result<Client> {
        let base = match server {
            Some(address) => {
                let address = address.trim().trim_end_matches('/');
                if address.contains("://") {
                    address.to_owned()
                } else {
                    format!("http://{address}")
                }
            }
            None => default_server(settings),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .context("build the HTTP client")?;
        Ok(Client {
            http,
            base,
            token: settings
                .auth_token
                .as_ref()
                .map(|token| token.expose().to_owned()),
        })
    }

    /// Sends a request; `Ok(Ok(body))` on success, `Ok(Err(1))` when the server refused (its message
    /// printed on stderr), `Err` when it could not be reached or answered something that is not the API.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Result<Value, ExitCode>> {
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
            Method::Delete => self.http.delete(&url),
        };
        if let Some(token) = &self.token {
            request = request.header(reqwest::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.with_context(|| {
            format!(
                "reach the Troupe server at {} (is `troupe serve` running? --server sets the address)",
                self.base
            )
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("read the answer of {url}"))?;
        let answer: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(answer) => answer,
                Err(_) if !status.is_success() => Value::Null,
                Err(error) => {
                    return Err(anyhow::anyhow!(
                        "{url} answered {status} with something that is not JSON ({error}): {}",
                        shorten(&String::from_utf8_lossy(&bytes), 200)
                    ))
                }
            }
        };
        if status.is_success() {
            return Ok(Ok(answer));
        }
        let message = answer["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "the server answered {status}: {}",
                    shorten(&String::from_utf8_lossy(&bytes), 200)
                )
            });
        eprintln!("troupe: {message}");
        Ok(Err(ExitCode::from(1)))
    }
}

/// The address of the configured server (`server.bind`), as a client on this machine reaches it.
fn default_server(settings: &ServerSettings) -> String {
    let host = super::serve::browser_host(settings);
    let port = settings
        .bind
        .rsplit_once(':')
        .map_or("8080", |(_, port)| port);
    format!("http://{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_aligned_with_a_dash_for_what_is_not_given() {
        let rows = vec![
            json!({ "id": "a1", "on": "decision", "agent": null, "kind": "assign_agent", "tool": null,
                    "step": null, "purpose": null, "task_id": null, "when": "confidence < 0.6" }),
            json!({ "id": "b22", "on": "tool", "agent": "qa", "kind": null, "tool": "run_code",
                    "step": 3, "purpose": null, "task_id": "t", "when": null }),
        ];
        let shown = table(&rows);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "ID   ON        AGENT  KIND          TOOL      STEP  PURPOSE  TASK  WHEN"
        );
        assert_eq!(
            lines[1],
            "a1   decision  -      assign_agent  -         -     -        -     confidence < 0.6"
        );
        assert_eq!(
            lines[2],
            "b22  tool      qa     -             run_code  3     -        t     -"
        );
        assert_eq!(table(&[]), "no breakpoints\n");
    }

    #[test]
    fn resume_flags_make_the_body_an_override_field_implying_the_action() {
        assert_eq!(
            resume_body(None, None, None, None),
            Ok(json!({ "action": "continue" }))
        );
        assert_eq!(
            resume_body(Some("step".into()), None, None, None),
            Ok(json!({ "action": "step" }))
        );
        assert_eq!(
            resume_body(None, Some("qa".into()), None, None),
            Ok(json!({ "action": "override", "chosen": "qa" }))
        );
        assert_eq!(
            resume_body(None, None, None, Some(r#"{"language": "python"}"#)),
            Ok(json!({ "action": "override", "arguments": { "language": "python" } }))
        );
        assert!(resume_body(None, None, None, Some("{"))
            .unwrap_err()
            .contains("not JSON"));
    }

    #[test]
    fn the_default_server_is_the_configured_bind_as_reachable_from_here() {
        let mut server = Settings::load_from(std::path::Path::new("config"), None)
            .expect("defaults load")
            .server;
        server.bind = "0.0.0.0:9090".into();
        assert_eq!(default_server(&server), "http://127.0.0.1:9090");
        server.bind = "127.0.0.1:8080".into();
        assert_eq!(default_server(&server), "http://127.0.0.1:8080");
        let client = Client::new(&server, Some("localhost:1234/")).unwrap();
        assert_eq!(client.base, "http://localhost:1234");
    }
}
