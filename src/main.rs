//! The `groupsync` binary: parses the command line, sets up logging on stderr, calls the
//! library, and maps errors to exit codes (0 ok, 1 a destination failed, 2 usage or
//! configuration error, 3 stopped by a safety limit). A closed stdout exits 0.

use clap::Parser;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

use groupsync::cli::{self, Cli};

fn main() -> ExitCode {
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
    let filter =
        EnvFilter::try_from_env("GROUPSYNC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

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
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code_for(&e))
        }
    }
}
