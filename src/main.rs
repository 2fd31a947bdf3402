//! The `consentd` binary: parse the command line, then call into the library.

use std::process::ExitCode;

use clap::Parser as _;
use consentd::{
    commands, grpc,
    settings::{CallersCommand, Cli, Command, KeysCommand, PolicyCommand},
    startup::{self, Application},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match telemetry::init("info", cli.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => match startup::shutdown_signal() {
            Ok(signal) => match Application::build(&args).await {
                Ok(app) => app.run_until_stopped(signal).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        Command::CheckConfig(args) => commands::check_config(&args, cli.log_format),
        Command::Migrate(args) => commands::migrate(&args).await,
        Command::Policy(PolicyCommand::Check { file }) => commands::check_policy(&file),
        Command::Callers(CallersCommand::Check { file, policy }) => {
            commands::check_callers(&file, policy.as_deref(), &grpc::served_rpcs())
        }
        Command::Callers(CallersCommand::Token) => commands::new_token(),
        Command::ImportRefusals(args) => commands::import_refusals(&args).await,
        Command::ExportSubject(args) => commands::export_subject(&args, grpc::export_json).await,
        Command::Keys(KeysCommand::Rotate(args)) => commands::rotate_keys(&args).await,
        Command::Verify(args) => commands::verify(&args).await,
    };
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, so the first line a user reads says why.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
