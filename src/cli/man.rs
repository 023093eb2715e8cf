//! `groupsync man`: the manual pages, rendered from the definitions `--help` shows (clap_mangen)
//! with the sections clap does not know: EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES and SEE ALSO.
//! One page for `groupsync` and one for each subcommand (`groupsync-job-add-dest(1)`), the pages
//! every SUBCOMMANDS and SEE ALSO section names. It renders pages and writes them; nothing else.

use anyhow::Context;
use clap::CommandFactory;
use roff::{Roff, bold, roman};
use std::io::Write;
use std::path::PathBuf;

use super::{Cli, exit};

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write every page into this folder (groupsync.1, and one per subcommand:
    /// groupsync-run.1, groupsync-job-add-dest.1, …) and list them, instead of printing
    /// groupsync(1)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn man(args: &ManArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let pages = pages();
    let Some(dir) = &args.dir else {
        render(&pages, 0, out)?;
        return Ok(exit::OK);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let mut written = vec![];
    for (i, page) in pages.iter().enumerate() {
        let path = dir.join(format!("{}.1", page.name));
        let mut text = Vec::new();
        render(&pages, i, &mut text)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    // Listed once every page is written: a reader that goes away early stops only the list.
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(exit::OK)
}

/// One manual page: the command it documents, and its name (`groupsync-job-add-dest`, the
/// file's name without `.1`).
pub struct Page {
    pub name: String,
    cmd: clap::Command,
    /// The page of the command this one is a subcommand of.
    parent: Option<usize>,
}

/// Every page: `groupsync` first, then each subcommand after its parent, depth first.
pub fn pages() -> Vec<Page> {
    fn walk(cmd: &clap::Command, parent: Option<usize>, out: &mut Vec<Page>) {
        let at = out.len();
        out.push(Page {
            name: cmd.get_display_name().unwrap_or(cmd.get_name()).to_string(),
            cmd: cmd.clone(),
            parent,
        });
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, Some(at), out);
        }
    }
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = vec![];
    walk(&cmd, None, &mut out);
    out
}

/// Renders page `i` of `pages`: clap's sections, then ours.
fn render(pages: &[Page], i: usize, out: &mut dyn Write) -> std::io::Result<()> {
    let page = &pages[i];
    let man = clap_mangen::Man::new(page.cmd.clone()).manual("groupsync manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    if page.cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(out)?;
    }
    if page.cmd.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    let mut roff = Roff::new();
    exit_status(&mut roff);
    environment(&mut roff);
    files(&mut roff);
    examples(&mut roff, &page.name);
    see_also(&mut roff, pages, i);
    roff.to_writer(out)?;
    if page.parent.is_none() {
        man.render_version_section(out)?;
    }
    Ok(())
}

/// A tagged paragraph: `term` in bold, then `text`.
fn item(roff: &mut Roff, term: &str, text: &str) {
    roff.control("TP", [])
        .text([bold(term)])
        .text([roman(text)]);
}

fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, text) in EXIT_CODES {
        item(roff, &code.to_string(), text);
    }
}

/// Every exit code, as scripts and systemd units rely on them (see `exit`).
pub const EXIT_CODES: [(u8, &str); 6] = [
    (exit::OK, "Everything went well."),
    (
        exit::FAILED,
        "At least one destination (or job) failed; the others were synced. The report names each.",
    ),
    (
        exit::USAGE,
        "Usage or configuration error (a bad flag, a job file or config key at fault, an unknown job name, a user or group that does not exist); nothing was changed.",
    ),
    (
        exit::STOPPED,
        "A safety limit (the deletion limit, the empty-source guard) stopped a job; nothing was changed at the destinations it guarded. --force goes past it.",
    ),
    (
        130,
        "Interrupted by SIGINT (Ctrl-C): the destinations in progress finished, no other started, and the run is recorded as interrupted.",
    ),
    (143, "Stopped by SIGTERM, as for SIGINT."),
];

fn environment(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    item(
        roff,
        "GROUPSYNC_CONFIG",
        "The configuration file, when --config is not given (default /etc/groupsync/groupsync.toml).",
    );
    item(
        roff,
        "GROUPSYNC_LOG",
        "The log filter, over -v: a level (error, warn, info, debug, trace) or tracing directives such as groupsync=debug.",
    );
    item(
        roff,
        "GROUPSYNC_LOCK_WAIT",
        "Seconds to wait for another groupsync process working on the same state, when --lock-wait is not given (default 10).",
    );
}

fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    item(
        roff,
        "/etc/groupsync/groupsync.toml",
        "The configuration: where the state database and the job files are, and which provider to use (mode 0640; secrets in files of their own, mode 0600).",
    );
    item(
        roff,
        "/etc/groupsync/jobs/NAME.toml",
        "One job a file (jobs_dir, relative to the configuration's folder); the job commands edit these files and keep their comments.",
    );
    item(
        roff,
        "/var/lib/groupsync/state.db",
        "The state database (state): what each run did, the copies made, the change log and the trash of deleted contacts; created mode 0600. A relative path is taken from the configuration's folder.",
    );
    item(
        roff,
        "/var/lib/groupsync/state.db.lock",
        "The lock that keeps two processes off the same state (see --lock-wait).",
    );
}

/// Examples a page shows: each a command line `tests/cli_promises.rs` parses, and what it does.
pub fn examples_of(page: &str) -> &'static [(&'static str, &'static str)] {
    EXAMPLES
        .iter()
        .find(|(p, _)| *p == page)
        .map_or(&[], |(_, e)| e)
}

/// Examples, by page.
type Examples = &'static [(&'static str, &'static [(&'static str, &'static str)])];

const EXAMPLES: Examples = &[
    (
        "groupsync",
        &[
            (
                "groupsync check",
                "Check the configuration, the job files, and that every user and group exists.",
            ),
            (
                "groupsync plan sales",
                "Show what a run of the job sales would change, changing nothing.",
            ),
            ("groupsync run", "Run every enabled job now."),
            (
                "groupsync restore --job sales --dest bob@example.com",
                "List what the job deleted at bob's.",
            ),
        ],
    ),
    (
        "groupsync-run",
        &[
            ("groupsync run sales", "Run the job sales now."),
            (
                "groupsync --json run sales",
                "The same, with the report as JSON on stdout.",
            ),
            (
                "groupsync run --force sales",
                "Run it past a safety limit that stopped it (the plan said why).",
            ),
        ],
    ),
    (
        "groupsync-plan",
        &[(
            "groupsync plan sales",
            "What a run of sales would create, update and delete at each destination.",
        )],
    ),
    (
        "groupsync-job",
        &[(
            "groupsync job list",
            "The jobs, with their source, group and destinations.",
        )],
    ),
    (
        "groupsync-job-new",
        &[(
            "groupsync job new sales --source alice@example.com --group Customers --dest bob@example.com --dest group:sales-team",
            "Copy alice's group Customers to bob and to every member of the group sales-team, and run it once.",
        )],
    ),
    (
        "groupsync-job-add-dest",
        &[(
            "groupsync job add-dest sales carol@example.com --now",
            "Add carol to the job and sync her at once.",
        )],
    ),
    (
        "groupsync-job-remove-dest",
        &[(
            "groupsync job remove-dest sales bob@example.com",
            "Remove bob: his copies and group go now; the contacts he added himself move to My Contacts.",
        )],
    ),
    (
        "groupsync-job-list",
        &[("groupsync --json job list", "Every job, as JSON.")],
    ),
    (
        "groupsync-job-show",
        &[(
            "groupsync job show sales",
            "The job's settings and what the state knows of it.",
        )],
    ),
    (
        "groupsync-job-delete",
        &[(
            "groupsync job delete --purge sales",
            "Remove the job's copies and groups everywhere, then the job.",
        )],
    ),
    (
        "groupsync-status",
        &[(
            "groupsync status",
            "Each job's last run, its outcome and its destinations.",
        )],
    ),
    (
        "groupsync-history",
        &[(
            "groupsync history sales --limit 5",
            "The job's last five runs.",
        )],
    ),
    (
        "groupsync-log",
        &[(
            "groupsync log sales --dest bob@example.com --contact smith",
            "What changed for Smith at bob's, newest first.",
        )],
    ),
    (
        "groupsync-restore",
        &[
            (
                "groupsync restore --job sales --dest bob@example.com",
                "List the trash entries of the job at bob's.",
            ),
            (
                "groupsync restore 42 --untag",
                "Put entry 42 back as bob's own contact, never to be deleted by the job again.",
            ),
        ],
    ),
    (
        "groupsync-check",
        &[(
            "groupsync --json check",
            "Each finding as a JSON object, for monitoring.",
        )],
    ),
    (
        "groupsync-serve",
        &[(
            "groupsync serve",
            "Run every enabled job on its schedule until SIGTERM.",
        )],
    ),
    (
        "groupsync-completions",
        &[(
            "groupsync completions bash",
            "The bash completion script, on stdout.",
        )],
    ),
    (
        "groupsync-man",
        &[(
            "groupsync man --dir /usr/local/share/man/man1",
            "Write every page.",
        )],
    ),
];

fn examples(roff: &mut Roff, page: &str) {
    let list = examples_of(page);
    if list.is_empty() {
        return;
    }
    roff.control("SH", ["EXAMPLES"]);
    for (line, what) in list {
        item(roff, line, what);
    }
}

/// groupsync(1), the page above this one, and the pages below it.
fn see_also(roff: &mut Roff, pages: &[Page], i: usize) {
    let mut names: Vec<&str> = vec![];
    if i != 0 {
        names.push(&pages[0].name);
    }
    if let Some(p) = pages[i].parent.filter(|&p| p != 0) {
        names.push(&pages[p].name);
    }
    names.extend(
        pages
            .iter()
            .filter(|p| p.parent == Some(i))
            .map(|p| p.name.as_str()),
    );
    if names.is_empty() {
        return;
    }
    roff.control("SH", ["SEE ALSO"]);
    let refs: Vec<String> = names.iter().map(|n| format!("{n}(1)")).collect();
    roff.text([roman(refs.join(", "))]);
}
