//! Small promises administrators script against: a reader that goes away early (`| head`) is not
//! an error on any data command, text or JSON; a job name nobody knows is a usage error (exit 2)
//! on every command that takes one; counts read as English.

mod common;

use common::Tree;
use predicates::prelude::*;
use std::process::{Command, Stdio};

/// Runs `groupsync <args>` with its stdout closed before it writes: the exit code and stderr.
fn with_stdout_closed(t: &Tree, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_groupsync"))
        .args(args)
        .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
        .env_remove("GROUPSYNC_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_closed_stdout_exits_0_on_every_data_command() {
    let t = Tree::new(3);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    for args in [
        &["status"][..],
        &["--json", "status"],
        &["history"],
        &["--json", "history"],
        &["log", "team"],
        &["--json", "log", "team"],
        &["plan"],
        &["--json", "plan"],
        &["job", "list"],
        &["--json", "job", "list"],
        &["job", "show", "team"],
        &["--json", "job", "show", "team"],
        &["restore"],
        &["--json", "restore"],
    ] {
        let (code, stderr) = with_stdout_closed(&t, args);
        assert_eq!(code, Some(0), "groupsync {}: {stderr}", args.join(" "));
    }
}

#[test]
fn an_unknown_job_is_a_usage_error_everywhere() {
    let t = Tree::new(1);
    t.write_job("team", &["bob"], "");
    for cmd in [
        &["history", "nosuchjob"][..],
        &["log", "nosuchjob"],
        &["run", "nosuchjob"],
        &["plan", "nosuchjob"],
        &["job", "show", "nosuchjob"],
        &["restore", "--job", "nosuchjob"],
        &["restore", "--purge", "--job", "nosuchjob"],
    ] {
        t.cmd()
            .args(cmd)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("no job named \"nosuchjob\""));
    }
    // A job deleted since keeps its history readable.
    t.cmd().arg("run").assert().success();
    t.cmd().args(["job", "delete", "team"]).assert().success();
    t.cmd()
        .args(["history", "team"])
        .assert()
        .success()
        .stdout(predicate::str::contains("team"));
    t.cmd().args(["log", "team"]).assert().success();
}

#[test]
fn one_is_singular() {
    let t = Tree::new(1);
    t.write_job("team", &["bob"], "");
    t.cmd().arg("run").assert().success();
    t.cmd()
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: 1 copy, last"));
    t.cmd()
        .args(["job", "list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\t1 destination\n"));
    t.cmd()
        .args(["job", "show", "team"])
        .assert()
        .success()
        .stdout(predicate::str::contains("bob: 1 copy, last"));
    t.cmd()
        .arg("check")
        .assert()
        .success()
        .stdout(predicate::str::contains("ok\tjob team (1 destination)"));
}

#[test]
fn check_speaks_json_when_asked() {
    let t = Tree::new(1);
    t.write_job("team", &["bob", "nobody"], "");
    let out = t.cmd().args(["--json", "check"]).assert().code(2);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let lines = v.as_array().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "ok" && l["text"].as_str().unwrap().starts_with("config "))
    );
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "error" && l["text"].as_str().unwrap().contains("nobody")),
        "{v}"
    );
    // And the text form is one tab-separated line a finding, as before.
    t.cmd()
        .arg("check")
        .assert()
        .code(2)
        .stdout(predicate::str::starts_with("ok\tconfig "));
}

/// An unreachable server is named as such ("Connection refused"), not only "error sending
/// request".
#[test]
fn an_unreachable_server_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new(0);
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pw = t.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        t.path().join("groupsync.toml"),
        format!(
            "state = \"state.db\"\njobs_dir = \"jobs\"\n[backend]\nkind = \"carddav\"\nurl = \"http://127.0.0.1:{port}\"\nusername = \"admin\"\npassword_file = \"pw\"\n"
        ),
    )
    .unwrap();
    t.write_job("team", &["bob"], "");
    let out = t.cmd().arg("run").assert().failure();
    let o = out.get_output();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("Connection refused"), "{all}");
}

/// `--json` on the commands that change a job: one JSON object each, saying what changed and
/// the run's report when one ran.
#[test]
fn job_edits_speak_json_when_asked() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    let json = |args: &[&str]| -> serde_json::Value {
        let out = t.cmd().arg("--json").args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout)
            .unwrap_or_else(|e| panic!("groupsync --json {}: {e}", args.join(" ")))
    };
    let v = json(&["job", "add-dest", "team", "carol"]);
    assert_eq!(v["added"], serde_json::json!(["carol"]));
    assert!(v["run"].is_null());
    assert_eq!(
        v["job"]["destinations"],
        serde_json::json!(["bob", "carol"])
    );
    let v = json(&["job", "add-dest", "team", "dave", "--now"]);
    assert_eq!(v["run"]["outcome"], "ok", "{v}");
    assert_eq!(v["run"]["destinations"][0]["user"], "dave", "{v}");
    let v = json(&["job", "remove-dest", "team", "carol", "--defer"]);
    assert_eq!(v["removed"], serde_json::json!(["carol"]));
    assert!(v["run"].is_null());
    let v = json(&["job", "remove-dest", "team", "dave"]);
    assert_eq!(v["run"]["outcome"], "ok", "{v}");
    let v = json(&["job", "delete", "team", "--purge"]);
    assert_eq!(v["deleted"], true);
    assert_eq!(v["run"]["outcome"], "ok", "{v}");
    assert!(v["forgot"]["trash"].as_u64().is_some(), "{v}");
    assert!(t.copies("bob", "Team").is_empty());
}

/// The commands that used to print text or nothing under `--json`: `job new` (with and without
/// its first run), `run` with no enabled job, and `restore ID…`.
#[test]
fn every_data_command_speaks_json_when_asked() {
    let t = Tree::new(2);
    let json = |args: &[&str]| -> serde_json::Value {
        let out = t.cmd().arg("--json").args(args).assert().success();
        serde_json::from_slice(&out.get_output().stdout)
            .unwrap_or_else(|e| panic!("groupsync --json {}: {e}", args.join(" ")))
    };
    assert_eq!(json(&["run"]), serde_json::json!([]));
    let new = [
        "job", "new", "--source", "alice", "--group", "Team", "--dest", "bob",
    ];
    let v = json(&[&new[..], &["quiet", "--no-run"]].concat());
    assert_eq!(v["job"]["name"], "quiet");
    assert!(v["run"].is_null(), "{v}");
    let v = json(&[&new[..], &["team"]].concat());
    assert_eq!(v["job"]["name"], "team");
    assert_eq!(v["run"]["outcome"], "ok", "{v}");
    assert_eq!(v["run"]["destinations"][0]["applied"]["created"], 2, "{v}");
    // bob leaves: his two copies go to the trash; one is put back.
    json(&["job", "remove-dest", "team", "bob"]);
    let trash = json(&["restore", "--job", "team"]);
    let id = trash[0]["id"].as_i64().unwrap();
    let v = json(&["restore", &id.to_string(), "--untag"]);
    assert_eq!(v[0]["id"], id, "{v}");
    assert_eq!(v[0]["user"], "bob", "{v}");
    assert!(v[0]["contact_id"].is_string(), "{v}");
    assert!(v[0]["error"].is_null(), "{v}");
    assert_eq!(t.cards("bob", "Team").len(), 1);
    assert_eq!(
        json(&["restore", "--purge"]),
        serde_json::json!({ "purged": 2 })
    );
}

/// `groupsync man --dir` writes a page for groupsync and one for every subcommand, each with the
/// sections an administrator looks for; every page a page names (SUBCOMMANDS, SEE ALSO) is among
/// those written; every example is a command line groupsync accepts; every argument of every
/// command says what it is.
#[test]
fn every_man_page_is_written_and_names_only_pages_that_exist() {
    use clap::{CommandFactory, Parser};
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_groupsync"))
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let written: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let pages = groupsync::cli::man::pages();
    assert_eq!(written.len(), pages.len(), "{written:?}");
    for name in [
        "groupsync.1",
        "groupsync-run.1",
        "groupsync-job-add-dest.1",
        "groupsync-man.1",
    ] {
        assert!(written.contains(name), "{name} not in {written:?}");
    }
    for file in &written {
        let text = std::fs::read_to_string(dir.path().join(file))
            .unwrap()
            .replace("\\-", "-");
        for section in [
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "EXAMPLES",
            "SYNOPSIS",
        ] {
            assert!(text.contains(section), "{file} has no {section}");
        }
        if file != "groupsync.1" {
            assert!(text.contains("SEE ALSO"), "{file} has no SEE ALSO");
        }
        // Every "groupsync…(1)" named is a page written.
        for (at, _) in text.match_indices("(1)") {
            let start = text[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(0, |i| i + 1);
            let named = &text[start..at];
            if named.starts_with("groupsync") {
                assert!(
                    written.contains(&format!("{named}.1")),
                    "{file} names {named}(1)"
                );
            }
        }
    }
    for page in &pages {
        for (line, _) in groupsync::cli::man::examples_of(&page.name) {
            let words = line.split_whitespace();
            if let Err(e) = groupsync::cli::Cli::try_parse_from(words) {
                panic!("{}: example {line:?} does not parse: {e}", page.name);
            }
        }
    }
    fn described(cmd: &clap::Command, path: &str) {
        for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            assert!(
                a.get_help().is_some() || a.get_long_help().is_some(),
                "{path}: argument {} is not described",
                a.get_id()
            );
        }
        for sub in cmd.get_subcommands() {
            described(sub, &format!("{path} {}", sub.get_name()));
        }
    }
    described(&groupsync::cli::Cli::command(), "groupsync");
}

/// Completes `words` (the last one being typed) in a real bash, through the script `groupsync
/// completions bash` prints, with this build of groupsync first on the PATH.
fn bash_complete(t: &Tree, words: &[&str]) -> Vec<String> {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_groupsync"))
        .parent()
        .unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source <(groupsync completions bash)\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_TYPE=9\n\
         _clap_complete_groupsync groupsync '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = quoted.join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .env("GROUPSYNC_CONFIG", t.path().join("groupsync.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn completion_offers_subcommands_flags_and_the_job_names_of_the_config_in_use() {
    let t = Tree::new(2);
    t.write_job("team", &["bob"], "");
    t.write_job("tech", &["bob"], "");
    t.write_job("sales", &["bob"], "");
    assert_eq!(bash_complete(&t, &["groupsync", "st"]), ["status"]);
    assert_eq!(
        bash_complete(&t, &["groupsync", "run", "te"]),
        ["team", "tech"]
    );
    assert_eq!(
        bash_complete(&t, &["groupsync", "job", "show", "s"]),
        ["sales"]
    );
    assert_eq!(bash_complete(&t, &["groupsync", "log", "sa"]), ["sales"]);
    assert!(bash_complete(&t, &["groupsync", "run", "--dr"]).contains(&"--dry-run".to_string()));
    // --config on the line wins over GROUPSYNC_CONFIG: another tree, other jobs.
    let other = Tree::new(1);
    other.write_job("ops", &["bob"], "");
    let config = other.path().join("groupsync.toml");
    let config = config.to_str().unwrap();
    let jobs = |words: &[&str]| -> Vec<String> {
        let offered = bash_complete(&t, words);
        offered
            .into_iter()
            .filter(|w| !w.starts_with('-'))
            .collect()
    };
    assert_eq!(
        jobs(&["groupsync", "--config", config, "plan", ""]),
        ["ops"]
    );
    assert_eq!(jobs(&["groupsync", "plan", ""]), ["sales", "team", "tech"]);
    // A config that cannot be read completes no job, and says nothing.
    assert!(jobs(&["groupsync", "--config", "/nonexistent.toml", "run", ""]).is_empty());
}
