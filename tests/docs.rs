//! The docs cannot drift from the code: every relative link (and #anchor) resolves; every
//! `groupsync …` command line names subcommands and flags that exist; every key in a TOML block
//! is one the parsers accept; the configuration reference lists exactly the keys the parsers
//! know (read off the parsers' own "expected one of" errors, not a list kept by hand); and the
//! JSON page documents every key the commands print.

mod common;

use clap::CommandFactory;
use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::Tree;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown pages: the front door, the map, the changelog and the book.
fn pages() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "CHANGELOG.md"]
        .iter()
        .map(|p| root().join(p))
        .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    v.extend(docs);
    v
}

/// A page's text split into prose lines and fenced code blocks (with their info string).
struct Page {
    prose: Vec<(usize, String)>,
    blocks: Vec<(String, usize, Vec<String>)>,
}

fn read(path: &Path) -> Page {
    let text = std::fs::read_to_string(path).unwrap();
    let mut page = Page {
        prose: vec![],
        blocks: vec![],
    };
    let mut block: Option<(String, usize, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut block, fence) {
            (None, Some(info)) => block = Some((info.trim().to_string(), i + 1, vec![])),
            (Some(_), Some(_)) => page.blocks.push(block.take().unwrap()),
            (Some((_, _, lines)), None) => lines.push(line.to_string()),
            (None, None) => page.prose.push((i + 1, line.to_string())),
        }
    }
    page
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Page) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in &page.prose {
        let Some(h) = line.strip_prefix('#') else {
            continue;
        };
        let s = slug(h.trim_start_matches('#'));
        let n = seen.entry(s.clone()).or_insert(0);
        out.insert(if *n == 0 {
            s.clone()
        } else {
            format!("{s}-{n}")
        });
        *n += 1;
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut bad = vec![];
    let mut checked = 0;
    for path in pages() {
        let page = read(&path);
        for (n, line) in &page.prose {
            for c in link.captures_iter(line) {
                let target = &c[1];
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let file = if file.is_empty() {
                    path.clone()
                } else {
                    path.parent().unwrap().join(file)
                };
                let at = format!("{}:{n}: {target}", path.display());
                checked += 1;
                if !file.exists() {
                    bad.push(format!("{at}: no such file"));
                } else if !anchor.is_empty()
                    && file.extension().is_some_and(|e| e == "md")
                    && !anchors(&read(&file)).contains(anchor)
                {
                    bad.push(format!("{at}: no such heading"));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} relative links found");
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

/// Every flag of a command (long and short), each with whether it takes a value.
fn flags(cmd: &clap::Command) -> BTreeMap<String, bool> {
    cmd.get_arguments()
        .flat_map(|a| {
            let takes = a.get_action().takes_values();
            let long = a.get_long().map(|l| (format!("--{l}"), takes));
            let short = a.get_short().map(|s| (format!("-{s}"), takes));
            long.into_iter().chain(short)
        })
        .chain([("--help".to_string(), false), ("-h".to_string(), false)])
        .collect()
}

/// What is wrong with the words after `groupsync` on a documented command line, if anything.
fn check_words(words: &[&str]) -> Option<String> {
    let mut cli = groupsync::cli::Cli::command();
    cli.build();
    let globals = flags(&cli);
    let mut cmd = &cli;
    let mut positional = false;
    let mut value_next = false;
    for w in words {
        if std::mem::take(&mut value_next) {
            continue;
        }
        if w.starts_with('-') {
            let name = w.split('=').next().unwrap();
            // -vv is -v twice.
            let name = if name.len() > 2 && !name.starts_with("--") {
                &name[..2]
            } else {
                name
            };
            match flags(cmd).get(name).or_else(|| globals.get(name)) {
                None => return Some(format!("{name} is not a flag of `{}`", cmd.get_name())),
                Some(takes) => value_next = *takes && !w.contains('='),
            }
        } else if !positional {
            match cmd.find_subcommand(w) {
                Some(sub) => cmd = sub,
                None if cmd.has_subcommands() => {
                    return Some(format!("{w} is not a subcommand of `{}`", cmd.get_name()));
                }
                None => positional = true,
            }
        }
    }
    None
}

/// The words after `groupsync` where it is the command: at the start of an inline code span, or
/// in a line of shell at the start, after `sudo`, `;`, `&&`, `|` or `$(`, with or without a path.
fn command_words(text: &str, shell: bool) -> Vec<Vec<String>> {
    let at = if shell {
        r"(?:^|[;&|(]\s*|sudo\s+)(?:\S*/)?groupsync ((?:[^|;&>#`)]|&[^&])*)"
    } else {
        r"^(?:\S*/)?groupsync ((?:[^|;&>#`)]|&[^&])*)"
    };
    Regex::new(at)
        .unwrap()
        .captures_iter(text.trim())
        .map(|c| c[1].split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn every_documented_command_line_exists() {
    let span = Regex::new(r"`([^`]+)`").unwrap();
    let mut bad = vec![];
    let mut checked = 0;
    for path in pages() {
        // The changelog tells history: flags it names may be gone.
        if path.ends_with("CHANGELOG.md") {
            continue;
        }
        let page = read(&path);
        let mut lines: Vec<(usize, String, bool)> = vec![];
        for (n, line) in &page.prose {
            for c in span.captures_iter(line) {
                lines.push((*n, c[1].to_string(), false));
            }
        }
        for (info, start, block) in &page.blocks {
            if ["sh", "bash", "shell", "console"].contains(&info.as_str()) {
                for (k, l) in block.iter().enumerate() {
                    lines.push((start + 1 + k, l.clone(), true));
                }
            }
        }
        for (n, line, shell) in lines {
            for words in command_words(&line, shell) {
                checked += 1;
                let words: Vec<&str> = words
                    .iter()
                    .map(String::as_str)
                    .take_while(|w| !w.contains('(') && !w.starts_with('$') && !w.starts_with('"'))
                    .map(|w| {
                        w.trim_start_matches('[')
                            .trim_end_matches([']', ',', '.', ':'])
                    })
                    .filter(|w| !w.is_empty() && *w != "…" && *w != "...")
                    .collect();
                if let Some(why) = check_words(&words) {
                    bad.push(format!(
                        "{}:{n}: groupsync {}: {why}",
                        path.display(),
                        words.join(" ")
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} command lines found");
    assert!(
        bad.is_empty(),
        "documented commands that do not exist:\n{}",
        bad.join("\n")
    );
}

/// The field names a parser expects, from its own error for a key it does not know.
fn expected_keys(error: &str) -> BTreeSet<String> {
    let tail = error
        .split_once("expected one of ")
        .or_else(|| error.split_once("expected "))
        .unwrap_or_else(|| panic!("no expected keys in: {error}"))
        .1;
    Regex::new(r"`([a-z_]+)`")
        .unwrap()
        .captures_iter(tail)
        .map(|c| c[1].to_string())
        .collect()
}

/// Every key a config file may hold, dotted (`backend.kind`), as the parser knows them.
fn config_keys() -> BTreeSet<String> {
    let probe = |text: &str| -> BTreeSet<String> {
        let e = groupsync::config::Config::parse(Path::new("probe.toml"), text)
            .expect_err("the probe key is refused");
        expected_keys(&e.to_string())
    };
    let backend = "[backend]\nkind = \"vdir\"\nroot = \"c\"\n";
    let mut keys = probe(&format!("__probe = 1\n{backend}"));
    for table in ["backend", "metrics", "notify"] {
        assert!(keys.remove(table), "{table} is a table of the config file");
    }
    for (table, text) in [
        ("backend", format!("{backend}__probe = 1\n")),
        ("metrics", format!("[metrics]\n__probe = 1\n{backend}")),
        ("notify", format!("[notify]\n__probe = 1\n{backend}")),
        ("state", format!("[state]\n__probe = 1\n{backend}")),
    ] {
        keys.extend(probe(&text).into_iter().map(|k| format!("{table}.{k}")));
    }
    keys
}

/// Every key a job file may hold, dotted (`limits.max_delete`), as the parser knows them.
fn job_keys() -> BTreeSet<String> {
    let probe = |text: &str| -> BTreeSet<String> {
        let e = groupsync::job::parse(Path::new("probe.toml"), text)
            .expect_err("the probe key is refused");
        expected_keys(&e.to_string())
    };
    let mut keys = probe("__probe = 1\n");
    for table in ["filter", "limits"] {
        assert!(keys.remove(table), "{table} is a table of a job file");
        keys.extend(
            probe(&format!("[{table}]\n__probe = 1\n"))
                .into_iter()
                .map(|k| format!("{table}.{k}")),
        );
    }
    keys
}

#[test]
fn every_key_in_a_toml_block_exists() {
    let (config, job) = (config_keys(), job_keys());
    let header = Regex::new(r"^\s*#?\s*\[([a-z_]+)\]\s*(#.*)?$").unwrap();
    let key = Regex::new(r"^\s*#?\s*([a-z_]+)\s*=").unwrap();
    let mut bad = vec![];
    let mut checked = 0;
    for path in pages() {
        if path.ends_with("CHANGELOG.md") {
            continue;
        }
        for (info, start, block) in read(&path).blocks {
            if info != "toml" {
                continue;
            }
            let is_job = block.first().is_some_and(|l| l.starts_with("# jobs/"));
            let known = if is_job { &job } else { &config };
            let mut table = String::new();
            for (k, line) in block.iter().enumerate() {
                if let Some(c) = header.captures(line) {
                    table = c[1].to_string();
                } else if let Some(c) = key.captures(line) {
                    let name = if table.is_empty() {
                        c[1].to_string()
                    } else {
                        format!("{table}.{}", &c[1])
                    };
                    checked += 1;
                    if !known.contains(&name) {
                        let kind = if is_job { "job file" } else { "config file" };
                        bad.push(format!(
                            "{}:{}: {name} is no {kind} key",
                            path.display(),
                            start + 1 + k
                        ));
                    }
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} keys found in TOML blocks");
    assert!(
        bad.is_empty(),
        "unknown keys in the docs:\n{}",
        bad.join("\n")
    );
}

/// The dotted keys in the first column of the tables of a page's section (from the `## `
/// heading containing `start` to the next `## `).
fn table_keys(page: &str, start: &str) -> BTreeSet<String> {
    let row = Regex::new(r"^\|\s*`([^`]+)`\s*\|").unwrap();
    let mut inside = false;
    let mut keys = BTreeSet::new();
    for line in page.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            inside = h.contains(start);
        } else if let (true, Some(c)) = (inside, row.captures(line)) {
            keys.insert(c[1].to_string());
        }
    }
    keys
}

#[test]
fn the_configuration_reference_lists_exactly_the_keys_the_parsers_know() {
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    for (section, known) in [
        ("The config file", config_keys()),
        ("Job files", job_keys()),
    ] {
        let documented = table_keys(&page, section);
        let missing: Vec<_> = known.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&known).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/configuration.md, {section}: not documented {missing:?}; documented but unknown {extra:?}"
        );
    }
}

/// Every key path of a JSON value, in the grammar of docs/json.md: `a.b`, `a[].b`, `[].b`.
fn paths(v: &serde_json::Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a.iter().filter(|v| v.is_object()) {
                paths(v, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

/// Whether a printed path is documented: listed, or under a documented `name.*` map.
fn documented(path: &str, docs: &BTreeSet<String>) -> bool {
    docs.contains(path)
        || docs
            .iter()
            .filter_map(|d| d.strip_suffix(".*"))
            .any(|m| path.starts_with(&format!("{m}.")))
}

#[test]
fn the_json_page_documents_every_key_each_command_prints() {
    let page = std::fs::read_to_string(root().join("docs/json.md")).unwrap();
    let t = Tree::new(3);
    t.write_job("team", &["bob", "carol"], "");
    let json = |args: &[&str]| -> serde_json::Value {
        let out = t.cmd().arg("--json").args(args).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "groupsync --json {}: {e}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let new = [
        "job", "new", "--source", "alice", "--group", "Team", "--dest", "dave", "more",
    ];
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("plan", vec!["plan"]),
        ("run", vec!["run"]),
        ("job new", new.to_vec()),
        (
            "job add-dest",
            vec!["job", "add-dest", "team", "dave", "--now"],
        ),
        (
            "job remove-dest",
            vec!["job", "remove-dest", "team", "carol"],
        ),
        ("status", vec!["status"]),
        ("history", vec!["history"]),
        ("log", vec!["log", "team"]),
        ("check", vec!["check"]),
        ("job list", vec!["job", "list"]),
        ("job show", vec!["job", "show", "team"]),
        ("restore", vec!["restore"]),
        ("job delete", vec!["job", "delete", "more", "--purge"]),
        ("status --all-shards", vec!["status", "--all-shards"]),
    ];
    // Two shards have run, for `status --all-shards`.
    for shard in ["0/2", "1/2"] {
        t.cmd().args(["run", "--shard", shard]).assert().success();
    }
    let mut bad = vec![];
    for (name, args) in runs {
        let docs = table_keys(&page, &format!("`groupsync {name}`"));
        assert!(
            !docs.is_empty(),
            "docs/json.md has no table for groupsync {name}"
        );
        let mut printed = BTreeSet::new();
        paths(&json(&args), "", &mut printed);
        for p in printed.iter().filter(|p| !documented(p, &docs)) {
            bad.push(format!("groupsync {name}: {p}"));
        }
    }
    assert!(
        bad.is_empty(),
        "keys printed but not in docs/json.md:\n{}",
        bad.join("\n")
    );
}
