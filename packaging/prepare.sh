#!/usr/bin/env bash
# Writes what the Debian package ships besides the binary, from the release binary itself:
# a man page for groupsync and each subcommand (target/man/) and the bash, zsh and fish
# completions (target/completions/). Run after `cargo build --release`, before `cargo deb --no-build`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/groupsync
"$bin" man --dir target/man
mkdir -p target/completions
"$bin" completions bash > target/completions/groupsync
"$bin" completions zsh > target/completions/_groupsync
"$bin" completions fish > target/completions/groupsync.fish
