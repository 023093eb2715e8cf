#!/usr/bin/env bash
# Runs the bundled example job on a private copy of this folder and shows the result.
# Usage: bash jobs/example/try.sh   (from the repository root; needs cargo)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work="$repo/example-run"
if [ ! -d "$work" ]; then
  mkdir -p "$work"
  cp -R "$here/contacts" "$here/jobs" "$here/groupsync.toml" "$work/"
fi
cargo build --quiet --manifest-path "$repo/Cargo.toml" --bin groupsync
gs="$repo/target/debug/groupsync"
export GROUPSYNC_CONFIG="$work/groupsync.toml"
echo "\$ groupsync plan team"
"$gs" plan team || true
echo
echo "\$ groupsync run"
"$gs" run
echo
echo "Contacts now (example-run/contacts):"
(cd "$work/contacts" && find . -name '*.vcf' | sort)
echo
first=$(find "$work/contacts/bob/Team" -name '*.vcf' | sort | head -n 1)
echo "One copy, $first:"
cat "$first"
echo
echo "Next: edit or delete a copy under example-run/contacts/bob/Team, add a card of your own there,"
echo "then: export GROUPSYNC_CONFIG=$work/groupsync.toml; $gs run; $gs job remove-dest team carol"
