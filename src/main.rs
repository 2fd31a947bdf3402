//! The `consentd` binary: parse the command line, then call into the library.

use std::process::ExitCode;

use clap::Parser as _;
use consentd::{
    policy::Policy,
    settings::{Cli, Command, PolicyCommand},
    startup::{self, Application, Database},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init("info");
    let result = match cli.command {
        Command::Serve(args) => match Application::build(&args).await {
            Ok(app) => app.run_until_stopped(startup::shutdown_signal()).await,
            Err(e) => Err(e),
        },
        Command::Migrate(args) => migrate(&args).await,
        Command::Policy(PolicyCommand::Check { file }) => check_policy(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain, so the first line a user reads says why.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(args: &consentd::settings::DatabaseArgs) -> anyhow::Result<()> {
    let database = Database::open(args).await?;
    let applied = database.store.migrate().await?;
    println!("applied {applied} migration(s); the database is up to date");
    Ok(())
}

fn check_policy(file: &std::path::Path) -> anyhow::Result<()> {
    let policy = Policy::load(file)?;
    println!(
        "{}: OK, policy version {}",
        file.display(),
        policy.version()
    );
    for purpose in policy.purposes() {
        let fields: Vec<_> = purpose.fields.iter().map(ToString::to_string).collect();
        println!(
            "  purpose {} ({:?}): {}",
            purpose.code,
            purpose.basis,
            fields.join(", ")
        );
    }
    Ok(())
}
