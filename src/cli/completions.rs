//! `groupsync completions SHELL`: generated from the same definitions as `--help`, so it never
//! drifts (the manual pages are `man.rs`).

use clap::CommandFactory;
use std::io::Write;

use super::{Cli, exit};

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell
    pub shell: clap_complete::Shell,
}

pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    // Generated into memory first: clap_complete panics on a write error (a closed pipe).
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "groupsync", &mut buf);
    out.write_all(&buf)?;
    Ok(exit::OK)
}
