//! The settings against the README table and their defaults.

use clap::CommandFactory as _;

use super::*;

mod readme_settings {
    include!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/api/readme_settings.rs"
    ));
}

#[test]
fn the_command_line_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn serve_defaults_match_the_documented_ones() {
    let cli = Cli::try_parse_from(["consentd", "serve"]).unwrap();
    let Command::Serve(args) = &cli.command else {
        panic!("not serve")
    };
    assert_eq!(args.grpc_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(args.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(args.admin_addr.to_string(), "127.0.0.1:8081");
    assert_eq!(args.policy, PathBuf::from("deploy/policy.toml"));

    let mut command = Cli::command();
    // Building applies implied defaults (a flag's `false`) and global flags.
    command.build();
    let serve = command.find_subcommand("serve").unwrap();
    for row in readme_settings::rows(include_str!("../../README.md")) {
        let documented = readme_settings::documented_default(&row);
        let parsed = parsed_default(&cli, args, &row.flag);
        assert_eq!(
            parsed, documented,
            "{} parses to its documented default",
            row.flag
        );
        let declared = serve
            .get_arguments()
            .find(|arg| arg.get_long() == row.flag.strip_prefix("--"))
            .unwrap_or_else(|| panic!("{} is not a serve flag", row.flag))
            .get_default_values()
            .first()
            .map(|v| v.to_string_lossy().into_owned());
        assert_eq!(declared, documented, "{} in --help", row.flag);
    }
}

/// What `consentd serve` with no flags set for `flag`, as text.
fn parsed_default(cli: &Cli, args: &ServeArgs, flag: &str) -> Option<String> {
    args.settings(cli.log_format)
        .into_iter()
        .find(|(name, _)| *name == flag)
        .unwrap_or_else(|| panic!("the README documents {flag}, which ServeArgs::settings lacks"))
        .1
}

/// Verify, rotate and import run statements as long as the data needs.
#[test]
fn only_serve_bounds_its_statements() {
    let cli = Cli::try_parse_from(["consentd", "verify"]).unwrap();
    let Command::Verify(args) = &cli.command else {
        panic!("not verify")
    };
    assert_eq!(args.connection_settings().statement_timeout, None);
    let cli = Cli::try_parse_from(["consentd", "serve", "--db-connect-timeout-ms", "700"]).unwrap();
    let Command::Serve(args) = &cli.command else {
        panic!("not serve")
    };
    let settings = args.connection_settings();
    assert_eq!(settings.statement_timeout, Some(Duration::from_secs(5)));
    assert_eq!(settings.connect_timeout, Duration::from_millis(700));
    assert_eq!(settings.pool_wait, Duration::from_secs(5));
}

/// Both ways: `settings()` lists every serve flag clap knows, and only those.
#[test]
fn settings_name_every_serve_flag() {
    let cli = Cli::try_parse_from(["consentd", "serve"]).unwrap();
    let Command::Serve(args) = &cli.command else {
        panic!("not serve")
    };
    let mut listed: Vec<&str> = args
        .settings(cli.log_format)
        .iter()
        .map(|(f, _)| *f)
        .collect();
    let mut command = Cli::command();
    command.build();
    let serve = command.find_subcommand("serve").unwrap();
    let mut flags: Vec<String> = serve
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
        .filter(|flag| flag != "--help")
        .collect();
    listed.sort_unstable();
    flags.sort_unstable();
    assert_eq!(listed, flags);
}
