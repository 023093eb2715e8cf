//! The one place a provider is built from its configuration: secrets read (mode 0600), the
//! provider opened, wrapped in `Counting`, and the command run on it.

use super::{Command, Ctx};
use crate::backend::carddav::{CarddavBackend, CarddavConfig, Credentials};
use crate::backend::counting::Counting;
use crate::backend::vdir::VdirBackend;
use crate::config::{BackendConfig, ConfigError};
use std::path::Path;

/// Opens the configured provider and runs the command on it.
pub async fn open(
    ctx: &Ctx,
    command: &Command,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<u8> {
    match ctx.config.backend.clone() {
        BackendConfig::Vdir { root, options, .. } => {
            check_root(&root, &ctx.config.path)?;
            super::dispatch(
                ctx,
                Counting::new(VdirBackend::with_options(root, options)),
                command,
                out,
            )
            .await
        }
        BackendConfig::Carddav {
            url,
            home,
            admin,
            credentials_file,
            default_collection,
            ..
        } => {
            let cfg_err = |m: String| ConfigError::file(&ctx.config.path, m);
            let admin = match admin {
                Some((username, file)) => Some(Credentials {
                    username,
                    password: crate::config::read_secret(&file, "password_file")
                        .map_err(cfg_err)?,
                }),
                None => None,
            };
            let users = match credentials_file {
                Some(file) => crate::config::read_credentials(&file).map_err(cfg_err)?,
                None => Default::default(),
            };
            let backend = CarddavBackend::new(CarddavConfig {
                url,
                home,
                admin,
                users,
                default_collection,
            })
            .map_err(cfg_err)?;
            super::dispatch(ctx, Counting::new(backend), command, out).await
        }
        BackendConfig::Google(g) => {
            let backend = crate::backend::google::GoogleBackend::new(g)
                .map_err(|m| ConfigError::file(&ctx.config.path, m))?;
            super::dispatch(ctx, Counting::new(backend), command, out).await
        }
        BackendConfig::Graph(g) => {
            let backend = crate::backend::graph::GraphBackend::new(g)
                .map_err(|m| ConfigError::file(&ctx.config.path, m))?;
            super::dispatch(ctx, Counting::new(backend), command, out).await
        }
    }
}

fn check_root(root: &Path, config: &Path) -> Result<(), ConfigError> {
    if root.is_dir() {
        Ok(())
    } else {
        Err(ConfigError::file(
            config,
            format!("backend root {} is not a folder", root.display()),
        ))
    }
}
