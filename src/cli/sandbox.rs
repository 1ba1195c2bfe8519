//! `troupe sandbox run --lang python <file|-e CODE>`: one run through the same sandbox (jail, limits,
//! classification) as the agents' `run_code`, printed as JSON so users can check it on their machine.

use std::io::Read;
use std::process::ExitCode;

use crate::cli::SandboxCommand;
use crate::config::Settings;
use crate::sandbox::{Language, Outcome, RunRequest, Sandbox};
use crate::telemetry::metrics::Metrics;

/// Runs a sandbox subcommand: exit code 0 when the run's outcome is `ok`, 1 for any other outcome, 2 when
/// the input is bad or the sandbox cannot run code here.
pub async fn sandbox(settings: Settings, action: SandboxCommand) -> anyhow::Result<ExitCode> {
    match action {
        SandboxCommand::Run { lang, code, file } => {
            let language: Language = lang.parse()?;
            let code = match (code, file) {
                (Some(code), _) => code,
                (None, Some(path)) if path.as_os_str() == "-" => {
                    let mut code = String::new();
                    std::io::stdin().read_to_string(&mut code)?;
                    code
                }
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?,
                (None, None) => anyhow::bail!("give a file or -e CODE"),
            };
            let sandbox = Sandbox::start(settings.sandbox, Metrics::new()?).await;
            sandbox.check_ready()?;
            let report = sandbox.run(RunRequest::snippet(language, code)).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(if report.outcome == Outcome::Ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
