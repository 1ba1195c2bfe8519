//! `troupe`: parse the command line, load configuration, start telemetry, run the command. Nothing else.

use std::process::ExitCode;

use clap::Parser;

use troupe::cli::{self, Cli, Command};
use troupe::config::{SamplingSettings, Settings};
use troupe::domain::TaskOptions;
use troupe::llm::worker::WorkerOptions;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The model worker speaks its protocol on stdout: no logging set-up, no configuration.
    if let Command::ModelWorker {
        model,
        threads,
        context_size,
        seed,
        temperature,
        repeat_penalty,
        repeat_last_n,
        dry_multiplier,
        dry_base,
        dry_allowed_length,
        dry_penalty_last_n,
    } = &cli.command
    {
        let options = WorkerOptions {
            model: model.clone(),
            threads: *threads,
            context: *context_size,
            seed: *seed,
            temperature: *temperature,
            sampling: SamplingSettings {
                repeat_penalty: *repeat_penalty,
                repeat_last_n: *repeat_last_n,
                dry_multiplier: *dry_multiplier,
                dry_base: *dry_base,
                dry_allowed_length: *dry_allowed_length,
                dry_penalty_last_n: *dry_penalty_last_n,
            },
        };
        return match cli::model_worker::model_worker(&options) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("model-worker: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    let settings = {
        let dir = std::env::var_os("TROUPE_CONFIG_DIR").map_or_else(
            || std::path::PathBuf::from("config"),
            std::path::PathBuf::from,
        );
        match Settings::load_from(&dir, cli.profile.as_deref()) {
            Ok(settings) => settings,
            Err(error) => {
                eprintln!("troupe: {error}");
                return ExitCode::from(2);
            }
        }
    };
    let mut settings = settings;
    if let Some(role) = cli.command.role() {
        settings.server.role = role;
        if let Err(error) = settings.validate() {
            eprintln!("troupe: {error}");
            return ExitCode::from(2);
        }
    }
    if matches!(
        cli.command,
        Command::Run { verbose: false, .. }
            | Command::Memory { .. }
            | Command::Experiment { .. }
            | Command::Sandbox { .. }
            | Command::Debug(_)
    ) {
        // The live view (or the hits) is the output; log lines would tear it.
        settings.telemetry.log_level = "warn".to_owned();
    }
    let _telemetry = match troupe::telemetry::init(&settings.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("troupe: {error}");
            return ExitCode::from(2);
        }
    };
    let result = actix_rt::System::new().block_on(async move {
        match cli.command {
            Command::Run {
                prompt,
                json,
                max_steps,
                replay_of,
                break_on,
                ..
            } => {
                cli::run::run(
                    settings,
                    &prompt,
                    TaskOptions {
                        max_steps,
                        replay_of,
                        ..TaskOptions::default()
                    },
                    &break_on,
                    json,
                )
                .await
            }
            Command::Serve { bind, .. } | Command::Worker { bind } => {
                if let Some(bind) = bind {
                    settings.server.bind = bind;
                }
                cli::serve::serve(settings)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::Migrate => cli::migrate::migrate(&settings)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Memory { action } => cli::memory::memory(settings, action).await,
            Command::Experiment {
                action: cli::ExperimentCommand::Run { file, json },
            } => cli::experiment::run(settings, &file, json).await,
            Command::Sandbox { action } => cli::sandbox::sandbox(settings, action).await,
            Command::Debug(args) => cli::debug::debug(settings, args).await,
            Command::ModelWorker { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("troupe: {error:#}");
            ExitCode::from(2)
        }
    }
}
