//! The `troupe` command line: argument parsing and one file per subcommand under `cli/`.

pub mod ask;
pub mod debug;
pub mod experiment;
pub mod memory;
pub mod migrate;
pub mod model_worker;
pub mod run;
pub mod sandbox;
pub mod serve;
pub mod table;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Role;
use crate::domain::TaskId;

/// Troupe: a Director and its Code, Research and QA agents working your task on a local model.
#[derive(Debug, Parser)]
#[command(name = "troupe", version, about)]
pub struct Cli {
    /// Configuration profile (config/<profile>.toml); also TROUPE_PROFILE.
    #[arg(long, global = true, env = "TROUPE_PROFILE")]
    pub profile: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one task in this process and watch the agents work it live.
    Run {
        /// The task.
        prompt: String,
        /// Print events as JSON lines instead of the live view.
        #[arg(long)]
        json: bool,
        /// Most steps in the plan (1..=director.max_steps; more is refused).
        #[arg(long)]
        max_steps: Option<u32>,
        /// Replay the recorded model outputs of this earlier task instead of calling the model.
        #[arg(long)]
        replay_of: Option<TaskId>,
        /// Pause at every point of this kind (decision, tool, step, llm; repeatable) and ask on stdin
        /// what to do: continue, step, abort or override.
        #[arg(long = "break", value_name = "ON")]
        break_on: Vec<crate::domain::BreakOn>,
        /// Show log lines (at telemetry.log_level) beside the live view; by default only warnings.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Serve the HTTP and WebSocket API (and run tasks, unless --role api).
    Serve {
        /// Listen address (default: server.bind, 127.0.0.1:8080).
        #[arg(long)]
        bind: Option<String>,
        /// api: take tasks and put them on the Redis queue; worker: run the queue's tasks; all: both
        /// (default: server.role, all).
        #[arg(long)]
        role: Option<Role>,
    },
    /// Run the tasks of the Redis queue (`troupe serve --role worker`): health, metrics and the API are
    /// served too, on --bind.
    Worker {
        /// Listen address (default: server.bind).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Experiments: `experiment run FILE` runs a set of prompts under two or more variants in this process
    /// and prints the comparison (pass rates with intervals, usage, latency, significance tests).
    Experiment {
        /// What to do.
        #[command(subcommand)]
        action: ExperimentCommand,
    },
    /// Look into long-term memory (the configured database, with the embedding model in this process).
    Memory {
        /// What to do.
        #[command(subcommand)]
        action: MemoryCommand,
    },
    /// Run code in the sandbox Troupe runs generated code in, and print the outcome and resource figures.
    Sandbox {
        /// What to do.
        #[command(subcommand)]
        action: SandboxCommand,
    },
    /// Debug mode against a running server: breakpoints (`debug break add|list|rm`), a paused task's state
    /// (`debug state`) and actions at its pause (`debug resume`).
    Debug(debug::DebugArgs),
    /// Host the embedded model for a server (started by Troupe itself; speaks JSON lines on stdin/stdout).
    #[command(hide = true)]
    ModelWorker {
        /// GGUF model file.
        #[arg(long)]
        model: PathBuf,
        /// Inference threads.
        #[arg(long, default_value_t = 2)]
        threads: i32,
        /// Context window in tokens.
        #[arg(long, default_value_t = 2048)]
        context_size: u32,
        /// Sampling seed.
        #[arg(long, default_value_t = 42)]
        seed: u32,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Repetition penalty (1: off); the server passes `[llm.sampling]`.
        #[arg(long, default_value_t = 1.0)]
        repeat_penalty: f32,
        /// Repetition penalty window in tokens (0: off, -1: the context).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        repeat_last_n: i32,
        /// DRY multiplier (0: off).
        #[arg(long, default_value_t = 0.0)]
        dry_multiplier: f32,
        /// DRY base.
        #[arg(long, default_value_t = 1.75)]
        dry_base: f32,
        /// DRY: repeats up to this long are free.
        #[arg(long, default_value_t = 2)]
        dry_allowed_length: i32,
        /// DRY window in tokens (0: off, -1: the context).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        dry_penalty_last_n: i32,
    },
}

impl Command {
    /// The role the command gives the process, over `server.role`.
    pub fn role(&self) -> Option<Role> {
        match self {
            Command::Serve { role, .. } => *role,
            Command::Worker { .. } => Some(Role::Worker),
            _ => None,
        }
    }
}

/// `troupe sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run a file or a snippet (-e) in the sandbox; prints the run as JSON (outcome, exit code, wall and
    /// CPU seconds, peak RSS, output, violations). Exit code 0 when the outcome is ok, 1 otherwise, 2 when
    /// the sandbox cannot run code or the input is bad.
    Run {
        /// python or shell.
        #[arg(long, default_value = "python")]
        lang: String,
        /// The code to run, instead of a file.
        #[arg(short = 'e', long = "eval", conflicts_with = "file")]
        code: Option<String>,
        /// A file to run ("-" reads standard input).
        #[arg(required_unless_present = "code")]
        file: Option<PathBuf>,
    },
}

/// `troupe memory ...`
#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// The memories closest in meaning to a text, with their similarity scores.
    Search {
        /// The text.
        query: String,
        /// How many hits (1..=50).
        #[arg(long, short, default_value_t = 5)]
        k: usize,
        /// Only these kinds, comma-separated (fact, summary, snippet, pattern).
        #[arg(long)]
        kind: Option<String>,
        /// Print the hits as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `troupe experiment ...`.
#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Run the experiment a JSON file specifies (as `POST /api/v1/experiments` takes it) and print its report.
    Run {
        /// The specification.
        file: PathBuf,
        /// Print the report as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}
