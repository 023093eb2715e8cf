//! The `groupsync` binary: parses the command line, sets up logging on stderr, calls the
//! library, and maps errors to exit codes (0 ok, 1 a destination failed, 2 usage or
//! configuration error, 3 stopped by a safety limit). A closed stdout exits 0.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use groupsync::cli::{self, Cli};

fn main() -> ExitCode {
    cli::completions::complete_if_asked();
    groupsync::procstat::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::exit::USAGE
            } else {
                cli::exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    init_logging(default, cli.log_json);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(cli::exit::FAILED);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::from(cli::exit::OK),
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&e));
            ExitCode::from(cli::exit_code_for(&e))
        }
    }
}

/// Logs go to journald when systemd started us (JOURNAL_STREAM is set), as JSON lines on stderr
/// with `--log-json`, else as text on stderr (coloured only on a terminal). `GROUPSYNC_LOG`
/// overrides the level (e.g. `GROUPSYNC_LOG=debug`).
fn init_logging(default: &str, json: bool) {
    let filter =
        || EnvFilter::try_from_env("GROUPSYNC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    if !json
        && std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter())
            .with(journald.with_syslog_identifier("groupsync".into()))
            .init();
        return;
    }
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    }
}
