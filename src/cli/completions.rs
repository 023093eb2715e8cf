//! Shell completion: `groupsync completions SHELL` prints a small script that asks groupsync
//! itself what to complete (`GROUPSYNC_COMPLETE=SHELL groupsync -- WORDS…`), so subcommands and
//! flags come from the same definitions as `--help` and job names from the jobs folder of the
//! configuration in use. Completing never writes anything, and never talks to a provider.

use clap::CommandFactory;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::Shells;
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;

use super::{Cli, exit};

/// The environment variable that turns a `groupsync` call into a completion request.
pub const COMPLETE_VAR: &str = "GROUPSYNC_COMPLETE";

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}

/// Prints the registration script for one shell. The script calls the `groupsync` found on the
/// PATH when completing, so it may be written to a file once (the Debian package does).
pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let name = args.shell.to_string();
    let shells = Shells::builtins();
    let shell = shells
        .completer(&name)
        .ok_or_else(|| super::usage(format!("no completion for the shell {name}")))?;
    let mut buf = Vec::new();
    shell.write_registration(
        COMPLETE_VAR,
        "groupsync",
        "groupsync",
        "groupsync",
        &mut buf,
    )?;
    out.write_all(&buf)?;
    Ok(exit::OK)
}

/// Answers a completion request and exits, when `GROUPSYNC_COMPLETE` is set; returns otherwise.
/// Called first thing by the binary, before anything is written to stdout.
pub fn complete_if_asked() {
    clap_complete::CompleteEnv::with_factory(Cli::command)
        .var(COMPLETE_VAR)
        .complete();
}

/// The jobs whose name starts with what was typed: the `*.toml` files of the jobs folder of the
/// configuration the command line (`--config`), `GROUPSYNC_CONFIG` or the default names. A
/// configuration that cannot be read completes nothing.
pub fn job_names(typed: &OsStr) -> Vec<CompletionCandidate> {
    let typed = typed.to_string_lossy();
    let flag = config_flag(std::env::args_os())
        .or_else(|| std::env::var_os("GROUPSYNC_CONFIG").map(PathBuf::from));
    let path = crate::config::config_path(flag.as_deref());
    let Ok(config) = crate::config::Config::load(&path) else {
        return vec![];
    };
    let Ok(entries) = std::fs::read_dir(&config.jobs_dir) else {
        return vec![];
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            (p.extension() == Some(OsStr::new("toml")))
                .then(|| p.file_stem()?.to_str().map(str::to_string))
                .flatten()
        })
        .filter(|n| crate::job::check_name(n).is_ok() && n.starts_with(typed.as_ref()))
        .collect();
    names.sort();
    names.into_iter().map(CompletionCandidate::new).collect()
}

/// The value of `--config FILE`, `--config=FILE` or `-c FILE` among the words being completed.
fn config_flag(args: impl IntoIterator<Item = OsString>) -> Option<PathBuf> {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
        (a == "--config" || a == "-c")
            .then(|| args.get(i + 1).map(PathBuf::from))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_flag_is_found_in_every_spelling() {
        let words = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_flag(words("groupsync -- groupsync --config a.toml run x")),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            config_flag(words("groupsync -- groupsync run --config=b.toml")),
            Some(PathBuf::from("b.toml"))
        );
        assert_eq!(
            config_flag(words("groupsync -- groupsync -c c.toml plan")),
            Some(PathBuf::from("c.toml"))
        );
        assert_eq!(config_flag(words("groupsync -- groupsync plan -c")), None);
        assert_eq!(config_flag(words("groupsync -- groupsync plan")), None);
    }
}
