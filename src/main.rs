//! `ledgerbus`: one binary, one subcommand per component (docs/architecture.md).

mod cli;
mod cluster_file;
mod config_file;
mod run;
mod validate;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use cli::{BenchCommand, Cli, Command, LogFormat, LogLevel, SqlCommand};
use config_file::FileSettings;

/// Exit status for configuration errors (as clap uses for usage errors).
const EXIT_CONFIG: u8 = 2;
/// Exit status when an address to listen on is in use (sysexits' EX_TEMPFAIL: try
/// again, or elsewhere); the demo picks other ports when a child exits with it.
const EXIT_ADDRESS_IN_USE: u8 = ledgerbus_tools::cluster::EXIT_ADDRESS_IN_USE as u8;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    let mut from_file = FileSettings::new();
    if let Some(path) = config_file::find_config_path(&args) {
        match config_file::apply(command, &path) {
            Ok((with_file, applied)) => {
                command = with_file;
                from_file = applied;
            }
            Err(error) => {
                eprintln!("error: {}", one_line(&error));
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let matches = command.clone().get_matches_from(args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    init_tracing(cli.log_level, cli.log_format);
    if let Err(error) = cli.command.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.check_config {
        let mut out = String::new();
        print_settings(&command, &matches, "", &from_file, &mut out);
        let _ = std::io::stdout().write_all(out.as_bytes());
        return ExitCode::SUCCESS;
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            if address_in_use(&error) {
                ExitCode::from(EXIT_ADDRESS_IN_USE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether `error` comes from binding an address that is in use.
fn address_in_use(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
            || cause.to_string().contains("(os error 98)")
    })
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Schema => {
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = std::io::stdout().write_all(ledgerbus_codec::SCHEMA_XML.as_bytes());
            Ok(())
        }
        Command::Demo(args) => run::demo::run(&args),
        Command::Sequencer(args) => run::sequencer::run(&args),
        Command::Gateway(args) => run::gateway::run(&args),
        Command::Consumer(args) => run::consumer::run(&args),
        Command::Sql(SqlCommand::Verify(args)) => run::sql::verify(&args),
        Command::Bench(BenchCommand::Codec(args)) => run::bench::codec(&args),
        Command::Bench(BenchCommand::Transport(args)) => run::bench::transport(&args),
        Command::Bench(BenchCommand::Sequencer(args)) => run::bench::sequencer(&args),
        Command::Bench(BenchCommand::E2e(args)) => run::bench_e2e::run(&args),
        Command::Bench(BenchCommand::Failover(args)) => run::bench_failover::run(&args),
        Command::Bench(BenchCommand::Hops(args)) => run::bench::hops(&args),
        Command::Bench(BenchCommand::Floor(args)) => run::bench::floor(&args),
        Command::Bench(BenchCommand::Plot(args)) => run::bench::plot(&args),
        Command::Bench(BenchCommand::Sql(args)) => run::bench_sql::run(&args),
        Command::Replay(args) => run::replay::run(&args),
    }
}

/// An error and its causes on one line, each said once: many errors already show
/// their cause in their own message, which the chain would otherwise repeat.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Logs to stderr at `--log-level`, or as `RUST_LOG` says when it is set (per-module
/// filters such as `ledgerbus_transport=debug,info`); colours only on a terminal.
fn init_tracing(level: LogLevel, format: LogFormat) {
    use std::io::IsTerminal;
    let level = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => tracing_subscriber::EnvFilter::new(directives),
        _ => tracing_subscriber::EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Settings whose values must never be printed.
const SECRET_SETTINGS: &[&str] = &["secret", "api_keys", "bus_key", "query_key"];

/// Settings holding a URL that may carry a password: shown with it replaced.
const URL_SETTINGS: &[&str] = &["database", "sql"];

/// Prints `name = value  # source` for every setting of the chosen subcommand path.
fn print_settings(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    section: &str,
    from_file: &FileSettings,
    out: &mut String,
) {
    let header = if section.is_empty() { "# global".to_string() } else { format!("[{section}]") };
    out.push_str(&header);
    out.push('\n');
    for arg in command.get_arguments() {
        // Global flags are printed once, at the top.
        if !section.is_empty() && arg.is_global_set() {
            continue;
        }
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "check_config" | "config") {
            continue;
        }
        let Some(source) = matches.value_source(id) else { continue };
        let Ok(Some(raw)) = matches.try_get_raw(id) else { continue };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let origin = match source {
            ValueSource::CommandLine => "flag",
            ValueSource::EnvVariable => "env",
            _ if from_file.contains(&(section.to_string(), id.to_string())) => "file",
            _ => "default",
        };
        let shown = if SECRET_SETTINGS.contains(&id) {
            "<hidden>".to_string()
        } else if URL_SETTINGS.contains(&id) {
            values.iter().map(|url| ledgerbus_consumers::sql::redact(url)).collect::<Vec<_>>().join(",")
        } else {
            values.join(",")
        };
        out.push_str(&format!("{} = {shown:?}  # {origin}\n", id.replace('_', "-")));
    }
    if let Some((name, sub_matches)) = matches.subcommand() {
        let nested = if section.is_empty() { name.to_string() } else { format!("{section}.{name}") };
        if let Some(sub_command) = command.find_subcommand(name) {
            print_settings(sub_command, sub_matches, &nested, from_file, out);
        }
    }
}
