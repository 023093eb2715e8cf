//! The command line: argument definitions (their doc comments are the `--help` text) and one
//! file per command. Commands print data on stdout (`--json` for machines) and talk to people on
//! stderr. They return an exit code; errors are mapped to exit codes by `main`.
//!
//! This module must not hold sync logic: it loads configuration, opens the backend and the state
//! database, takes the state lock where it writes, and calls the engine.

mod backend;
mod check;
pub mod completions;
mod history;
mod interrupt;
mod jobs;
mod log;
pub mod man;
mod output;
mod progress;
mod restore;
mod run;
mod serve;
mod shards;
mod status;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::backend::Backend;
use crate::backend::vdir::DEFAULT_COLLECTION;
use crate::config::{BackendConfig, Config, ConfigError, config_path};
use crate::engine::{JobReport, RunOptions};
use crate::lock::{self, StateLock};
use crate::notify::Notifier;
use crate::serve::AfterRun;
use crate::store::Store;
use std::sync::Arc;

/// Exit codes (fixed: scripts and systemd units rely on them).
pub mod exit {
    /// Everything went well.
    pub const OK: u8 = 0;
    /// At least one destination (or job) failed; the others were synced.
    pub const FAILED: u8 = 1;
    /// Usage or configuration error; nothing was changed.
    pub const USAGE: u8 = 2;
    /// A safety limit stopped a job; nothing was changed at the destinations it guarded.
    pub const STOPPED: u8 = 3;
}

/// Copies a source user's contact group to many destination users, and keeps the copies right.
///
/// Jobs live in TOML files under the configured jobs folder; the `job` commands edit those same
/// files, keeping comments and layout. Exit codes: 0 ok, 1 a destination failed, 2 usage or
/// configuration error, 3 stopped by a safety limit.
#[derive(Debug, Parser)]
#[command(name = "groupsync", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// Configuration file [default: /etc/groupsync/groupsync.toml]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "GROUPSYNC_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Print data as JSON on stdout
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug); GROUPSYNC_LOG overrides
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Logs as JSON lines on stderr (default: text, or journald under systemd)
    #[arg(long, global = true)]
    pub log_json: bool,

    /// No progress bar (it is only ever shown on a terminal)
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Seconds to wait for another groupsync process working on the same state
    #[arg(
        long,
        global = true,
        default_value_t = 10,
        value_name = "SECONDS",
        env = "GROUPSYNC_LOCK_WAIT"
    )]
    pub lock_wait: u64,

    /// Run as shard I of N (counted from 0): only the destinations this shard owns, with a
    /// state database, lock and metrics file of its own and an Nth of the rate limit
    #[arg(
        long,
        global = true,
        env = "GROUPSYNC_SHARD",
        value_name = "I/N",
        conflicts_with = "shard_from_env"
    )]
    pub shard: Option<crate::shard::Shard>,

    /// Take the shard from the environment: I from JOB_COMPLETION_INDEX, GROUPSYNC_SHARD_INDEX
    /// or the -<n> ending HOSTNAME (a pod); N from GROUPSYNC_SHARDS
    #[arg(long, global = true)]
    pub shard_from_env: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, change, list, show and delete jobs (edits the job files)
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// Show what a run would do, per destination, without writing anything
    ///
    /// Exit code is what the run would give: 3 if a safety limit would stop it.
    Plan(run::PlanArgs),
    /// Run jobs now (no names: every enabled job)
    Run(run::RunArgs),
    /// Last run, outcome and destinations of every job
    Status(status::StatusArgs),
    /// Past runs with their counts and outcome, newest first
    History(history::HistoryArgs),
    /// The change log of a job: each change to each contact, newest first
    Log(log::LogArgs),
    /// List deleted contacts kept in the trash, or put them back
    Restore(restore::RestoreArgs),
    /// Check the configuration, every job file, and that users and groups exist
    Check,
    /// Run as a daemon: every enabled job on its schedule, until SIGTERM
    ///
    /// Job files are re-read every minute; a run missed while the daemon was down runs once at
    /// start; a job's `window` delays its runs; `[metrics] listen` serves /metrics.
    Serve,
    /// Print a shell completion script
    Completions(completions::CompletionsArgs),
    /// Print the man page, groupsync(1), or write every page with --dir
    Man(man::ManArgs),
}

/// A mistake in how the command was called: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand for a usage error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Everything a command needs: the config, the state and the global flags.
pub struct Ctx {
    pub config: Config,
    pub json: bool,
    /// Show a progress bar for runs (on a terminal only, never with --json).
    pub progress: bool,
    pub lock_wait: Duration,
    pub store: Arc<Mutex<Store>>,
    /// The shard this process is, if the destinations are split (see `crate::shard`).
    pub shard: Option<crate::shard::Shard>,
    /// The state database as configured, before a shard's name was put in it.
    pub configured_state: PathBuf,
    /// SIGINT and SIGTERM, for the commands that run jobs (`None` for `serve` and the others).
    pub interrupt: Option<interrupt::Interrupt>,
}

impl Ctx {
    /// Takes the state lock (for commands that write). Runs a killed process left `running` are
    /// recorded as `interrupted` then: with the lock held, none of them is still going.
    pub fn lock(&self) -> anyhow::Result<StateLock> {
        let held = lock::acquire(&self.config.state, self.lock_wait)?;
        self.close_stale_runs();
        Ok(held)
    }

    /// Records runs left `running` by a process that was killed as `interrupted` (called with
    /// the state lock held, so no live run is among them).
    fn close_stale_runs(&self) {
        let closed = crate::mutex::lock(&self.store).close_stale_runs();
        match closed {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "{n} runs a stopped process left running are recorded as interrupted"
            ),
            Err(e) => tracing::warn!("could not record runs left running as interrupted: {e}"),
        }
    }

    /// True once SIGINT or SIGTERM came: no other job starts.
    pub fn interrupted(&self) -> bool {
        self.interrupt.as_ref().is_some_and(|i| i.cancelled())
    }

    /// What follows every run: the metrics textfile and notifications.
    pub fn hooks(&self) -> Hooks {
        Hooks {
            textfile: self.config.metrics.textfile.clone(),
            state: self.config.state.clone(),
            shard: self.shard,
            notifier: Notifier::new(&self.config.notify),
        }
    }

    pub fn run_options(&self) -> RunOptions {
        let (concurrency, default_group) = match &self.config.backend {
            BackendConfig::Vdir { concurrency, .. } => {
                (*concurrency, DEFAULT_COLLECTION.to_string())
            }
            BackendConfig::Carddav {
                concurrency,
                default_collection,
                ..
            } => (*concurrency, default_collection.clone()),
            BackendConfig::Google(g) => (g.concurrency, "My Contacts".to_string()),
            BackendConfig::Graph(g) => (g.concurrency, "Contacts".to_string()),
        };
        RunOptions {
            retention: Some(self.config.retention),
            concurrency,
            default_group,
            cancel: self.interrupt.as_ref().map(|i| i.cancel.clone()),
            shard: self.shard.filter(|s| !s.is_whole()),
            ..Default::default()
        }
    }
}

/// After-run work shared by `run`, the `job` commands and `serve`.
pub struct Hooks {
    textfile: Option<PathBuf>,
    state: PathBuf,
    shard: Option<crate::shard::Shard>,
    notifier: Option<Notifier>,
}

impl AfterRun for Hooks {
    fn after_run<'a>(&'a self, report: &'a JobReport) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(path) = &self.textfile {
                let written = Store::open(&self.state)
                    .map_err(|e| e.to_string())
                    .and_then(|s| crate::metrics::render(&s).map_err(|e| e.to_string()))
                    .map(|text| crate::metrics::for_shard(&text, self.shard))
                    .and_then(|text| {
                        crate::metrics::write_textfile(path, &text).map_err(|e| e.to_string())
                    });
                if let Err(e) = written {
                    tracing::warn!("metrics textfile {}: {e}", path.display());
                }
            }
            if let Some(n) = &self.notifier {
                n.notify(report).await;
            }
        })
    }
}

/// Parses nothing; runs a parsed command line and returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Completions(args) => return completions::completions(args, &mut out),
        Command::Man(args) => return man::man(args, &mut out),
        _ => {}
    }
    let path = config_path(cli.config.as_deref());
    let shard = match cli.shard_from_env {
        true => Some(crate::shard::Shard::from_env(|k| std::env::var(k).ok()).map_err(usage)?),
        false => cli.shard,
    };
    let mut config = Config::load(&path)?;
    let configured_state = config.state.clone();
    // `status --all-shards` reads the shards' databases, not one of its own.
    let all_shards = matches!(&cli.command, Command::Status(a) if a.all_shards);
    let store = if all_shards && shard.is_none() {
        Store::open_in_memory()?
    } else {
        sharded(&mut config, shard)?;
        Store::open(&config.state)?
    };
    let progress =
        !cli.no_progress && !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let runs_jobs = matches!(
        cli.command,
        Command::Run(_) | Command::Plan(_) | Command::Job(_)
    );
    let ctx = Ctx {
        json: cli.json,
        progress,
        lock_wait: Duration::from_secs(cli.lock_wait),
        store: Arc::new(Mutex::new(store)),
        config,
        shard,
        configured_state,
        interrupt: runs_jobs.then(interrupt::Interrupt::listen),
    };
    // A run a killed process left `running` is recorded as interrupted by any command that
    // finds the state free (no live run holds its lock).
    if let Ok(free) = lock::acquire(&ctx.config.state, Duration::ZERO) {
        ctx.close_stale_runs();
        drop(free);
    }
    let code = backend::open(&ctx, &cli.command, &mut out).await?;
    Ok(ctx
        .interrupt
        .as_ref()
        .and_then(|i| i.exit_code())
        .unwrap_or(code))
}

/// Runs a command on the provider `backend::open` built.
async fn dispatch<B: Backend + 'static>(
    ctx: &Ctx,
    backend: B,
    command: &Command,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<u8> {
    let backend = &Arc::new(backend);
    match command {
        Command::Job(c) => jobs::job(ctx, backend, c, out).await,
        Command::Plan(a) => run::plan(ctx, backend, a, out).await,
        Command::Run(a) => run::run(ctx, backend, a, out).await,
        Command::Status(args) if args.all_shards => shards::all_shards(ctx, out),
        Command::Status(_) => status::status(ctx, out),
        Command::History(a) => history::history(ctx, a, out),
        Command::Log(a) => log::log(ctx, a, out),
        Command::Restore(a) => restore::restore(ctx, &**backend, a, out).await,
        Command::Check => check::check(ctx, &**backend, out).await,
        Command::Serve => serve::serve(ctx, backend).await,
        Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled before loading the configuration")
        }
    }
}

/// The exit code for an error that reached `main`: 2 for usage and configuration errors, else 1.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<UsageError>().is_some()
        || err.downcast_ref::<ConfigError>().is_some()
        || err.downcast_ref::<clap::Error>().is_some()
    {
        exit::USAGE
    } else {
        exit::FAILED
    }
}

/// True if the error is a closed stdout (`groupsync … | head`): not an error for a CLI.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|e| {
        // serde_json wraps the io error and does not hand it on as its source.
        e.downcast_ref::<std::io::Error>().map(|io| io.kind()) == broken
            || e.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                == broken
    })
}

/// What a shard changes in the configuration: its own state database (and so its own lock) and
/// metrics textfile, and an Nth of the client-side rate limit. A `{shard}` in the state path
/// with no shard given is a usage error.
fn sharded(config: &mut Config, shard: Option<crate::shard::Shard>) -> anyhow::Result<()> {
    let Some(s) = shard else {
        if config.state.to_string_lossy().contains("{shard}") {
            return Err(usage(format!(
                "the state path {} holds {{shard}}: give --shard I/N (or --shard-from-env)",
                config.state.display()
            )));
        }
        return Ok(());
    };
    config.state = s.path(&config.state);
    if let Some(t) = &config.metrics.textfile {
        config.metrics.textfile = Some(s.path(t));
    }
    match &mut config.backend {
        BackendConfig::Google(g) => g.requests_per_minute = s.share(g.requests_per_minute),
        BackendConfig::Graph(g) => g.requests_per_minute = s.share(g.requests_per_minute),
        BackendConfig::Vdir { .. } | BackendConfig::Carddav { .. } => {}
    }
    Ok(())
}

/// An error and its causes on one line, each said once: many errors already carry their
/// cause's text in their own message, which `{:#}` would print again after it.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
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

/// Fails with a usage error (exit 2) unless `name` is a job: a job file, or a job the state
/// remembers (a deleted job's history stays readable).
pub(crate) fn known_job(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    crate::job::check_name(name).map_err(usage)?;
    if crate::job::job_path(&ctx.config.jobs_dir, name).exists() {
        return Ok(());
    }
    let store = crate::mutex::lock(&ctx.store);
    if store.job_tag(name)?.is_some() || !store.runs(Some(name), 1)?.is_empty() {
        return Ok(());
    }
    Err(usage(format!(
        "no job named {name:?} (no file in {} and no history in the state)",
        ctx.config.jobs_dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn an_error_says_each_cause_once() {
        let io = std::io::Error::other("no space left");
        let e = anyhow::Error::new(io).context("cannot create /x: no space left");
        let e = e.context("state database");
        assert_eq!(
            one_line(&e),
            "state database: cannot create /x: no space left"
        );
        let e = anyhow::anyhow!("disk full").context("writing /y");
        assert_eq!(one_line(&e), "writing /y: disk full");
    }
}
