//! The sandbox's public vocabulary: what a run is given ([`RunRequest`], [`WorkspaceFile`], [`Language`]),
//! what it reports ([`RunReport`]), why one is refused ([`SandboxError`]), and the checks a request passes
//! before anything starts.

use serde::{Deserialize, Serialize};

use super::classify::{Outcome, Violation};
use crate::config::SandboxSettings;

/// Longest file name in a run's workspace (and in the file tools' schemas).
pub const MAX_NAME_CHARS: usize = 100;

/// A language the sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3 (the configured interpreter).
    Python,
    /// POSIX shell.
    Shell,
}

impl Language {
    /// Every language.
    pub const ALL: [Language; 2] = [Language::Python, Language::Shell];

    /// The stable name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Shell => "shell",
        }
    }

    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Language::Python => "py",
            Language::Shell => "sh",
        }
    }
}

impl std::str::FromStr for Language {
    type Err = SandboxError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "python" | "python3" | "py" => Ok(Language::Python),
            "shell" | "sh" => Ok(Language::Shell),
            other => Err(SandboxError::Request(format!(
                "language '{other}' is not supported (python, shell); Rust is not built: compiling in the \
                 jail would need the toolchain inside it"
            ))),
        }
    }
}

/// A file of a run's workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceFile {
    /// A plain file name (letters, digits, `.`, `_`, `-`; no folders).
    pub name: String,
    /// Its content.
    pub content: String,
}

/// One run: files to put in the workspace and which of them to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    /// The language of `entry`.
    pub language: Language,
    /// The workspace's files.
    pub files: Vec<WorkspaceFile>,
    /// The file to run (one of `files`).
    pub entry: String,
}

impl RunRequest {
    /// A run of one snippet, as `main.py` or `main.sh`.
    pub fn snippet(language: Language, code: impl Into<String>) -> Self {
        let entry = format!("main.{}", language.extension());
        RunRequest {
            language,
            files: vec![WorkspaceFile {
                name: entry.clone(),
                content: code.into(),
            }],
            entry,
        }
    }
}

/// What a run did and used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// The language.
    pub language: Language,
    /// How it ended.
    pub outcome: Outcome,
    /// The program's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Wall-clock seconds from start to exit.
    pub wall_seconds: f64,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak resident set of the run's largest process, in bytes (the program, the children it waited for,
    /// the orphans the shim reaped), measured by the shim in the jail; 0 when there is no report (the run
    /// was killed by the sandbox).
    pub peak_rss_bytes: u64,
    /// Standard output (at most `output_limit_bytes`; lossy UTF-8).
    pub stdout: String,
    /// Standard error, the audit hook's reports removed.
    pub stderr: String,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
    /// What the jail and the limits contained.
    pub violations: Vec<Violation>,
}

impl RunReport {
    /// The last lines of stderr (or stdout when stderr is empty): what a failure says, for feedback.
    pub fn failure_output(&self, max_chars: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = text.trim_end();
        let start = text
            .char_indices()
            .rev()
            .nth(max_chars.saturating_sub(1))
            .map_or(0, |(i, _)| i);
        let mut tail = text[start..].trim_start().to_owned();
        if tail.is_empty() {
            tail = format!("the run ended with outcome {}", self.outcome.as_str());
        }
        tail
    }
}

/// Why a run could not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SandboxError {
    /// `sandbox.enabled = false`.
    #[error("the sandbox is disabled (sandbox.enabled = false)")]
    Disabled,
    /// bubblewrap is missing or cannot create its namespaces here; nothing runs unconfined.
    #[error("the sandbox cannot run code on this machine: {0}")]
    Unavailable(String),
    /// The request is unusable (bad file name, unknown language, too large).
    #[error("{0}")]
    Request(String),
    /// bubblewrap failed to set up the jail for this run.
    #[error("the jail could not be set up: {0}")]
    Jail(String),
    /// Starting or watching the process failed.
    #[error("run: {0}")]
    Io(String),
    /// Every run slot stayed taken for as long as the caller would wait ([`Sandbox::run_waiting`]).
    ///
    /// [`Sandbox::run_waiting`]: super::Sandbox::run_waiting
    #[error("every sandbox slot stayed busy for {0} s; try again shortly")]
    Busy(u64),
    /// The run's task was cancelled before a slot was free.
    #[error("the task was cancelled before the run started")]
    Cancelled,
}

/// Checks file names, the entry and the total size.
pub(super) fn validate(
    request: &RunRequest,
    settings: &SandboxSettings,
) -> Result<(), SandboxError> {
    if request.files.is_empty() {
        return Err(SandboxError::Request(
            "a run needs at least one file".into(),
        ));
    }
    for file in &request.files {
        check_file_name(&file.name)?;
    }
    if !request.files.iter().any(|file| file.name == request.entry) {
        return Err(SandboxError::Request(format!(
            "the entry '{}' is not one of the run's files",
            request.entry
        )));
    }
    let total: usize = request.files.iter().map(|file| file.content.len()).sum();
    let limit = settings.max_file_bytes.min(settings.workspace_bytes);
    if u64::try_from(total).unwrap_or(u64::MAX) > limit {
        return Err(SandboxError::Request(format!(
            "the run's files hold {total} bytes; at most {limit}"
        )));
    }
    Ok(())
}

/// A plain file name: 1..=100 characters of letters, digits, `.`, `_`, `-`, not starting with a dot.
pub fn check_file_name(name: &str) -> Result<(), SandboxError> {
    let plain = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        Ok(())
    } else {
        Err(SandboxError::Request(format!(
            "'{}' is not a plain file name (1..={MAX_NAME_CHARS} letters, digits, '.', '_', '-'; no folders, \
             not starting with '.')",
            name.chars().take(MAX_NAME_CHARS).collect::<String>()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_must_be_plain() {
        for good in ["main.py", "test_solution.py", "a-b_c.sh"] {
            assert!(check_file_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x.py", "/etc/passwd", "a/b.py", ".hidden", "x y.py"] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn languages_parse_and_rust_says_why_not() {
        assert_eq!("python".parse::<Language>().unwrap(), Language::Python);
        assert_eq!("sh".parse::<Language>().unwrap(), Language::Shell);
        let error = "rust".parse::<Language>().unwrap_err();
        assert!(error.to_string().contains("not supported"));
    }

    #[test]
    fn failure_output_is_the_tail_of_stderr() {
        let report = RunReport {
            language: Language::Python,
            outcome: Outcome::Error,
            exit_code: Some(1),
            signal: None,
            wall_seconds: 0.0,
            cpu_seconds: 0.0,
            peak_rss_bytes: 0,
            stdout: "noise".into(),
            stderr: "Traceback\n  line 1\nAssertionError: 1 != 2\n".into(),
            truncated: false,
            violations: vec![],
        };
        assert_eq!(report.failure_output(23), "AssertionError: 1 != 2");
    }
}
