//! `groupsync check`: the configuration, every job file, and that every user and group a job
//! names exists. One line per finding on stdout; exit 2 if anything is wrong.

use std::io::Write;

use super::{Ctx, exit};
use crate::backend::Backend;
use crate::job;

pub async fn check<B: Backend>(ctx: &Ctx, backend: &B, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut problems = 0;
    writeln!(out, "ok\tconfig {}", ctx.config.path.display())?;
    writeln!(out, "ok\tstate {}", ctx.config.state.display())?;
    for j in job::load_all(&ctx.config.jobs_dir)? {
        let j = match j {
            Ok(j) => j,
            Err(e) => {
                writeln!(out, "error\t{e}")?;
                problems += 1;
                continue;
            }
        };
        let mut bad = vec![];
        match backend.resolve_user(&j.source).await? {
            None => bad.push(format!("source user {:?} not found", j.source)),
            Some(u) => {
                if backend.find_group(&u, &j.group).await?.is_none() {
                    bad.push(format!(
                        "source group {:?} not found for user {}",
                        j.group, j.source
                    ));
                }
            }
        }
        for d in j.effective_destinations() {
            if backend.resolve_user(&d).await?.is_none() {
                bad.push(format!("invalid destination user: {d}"));
            }
        }
        if let Some(tag) = ctx.store.lock().unwrap().job_tag(&j.name)?
            && tag != j.tag
        {
            bad.push(format!("tag {} differs from the tag {tag} the job was created with; tags must never be edited", j.tag));
        }
        if bad.is_empty() {
            writeln!(
                out,
                "ok\tjob {} ({} destinations)",
                j.name,
                j.effective_destinations().len()
            )?;
        }
        for b in bad {
            writeln!(out, "error\t{}: {b}", j.path.display())?;
            problems += 1;
        }
    }
    Ok(if problems > 0 { exit::USAGE } else { exit::OK })
}
