//! `groupsync serve`: the daemon, with metrics over HTTP when `[metrics] listen` is set. Stops
//! on SIGTERM or Ctrl-C after finishing the destination in progress.

use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, exit};
use crate::backend::Backend;
use crate::serve::{Daemon, SystemClock};

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn serve<B: Backend + 'static>(ctx: &Ctx, backend: &Arc<B>) -> anyhow::Result<u8> {
    let metrics_task = match ctx.config.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("metrics.listen {addr}: {e}"))?;
            eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
            Some(tokio::spawn(crate::metrics::serve_http(
                listener,
                ctx.config.state.clone(),
                ctx.shard,
            )))
        }
        None => None,
    };
    let hooks = ctx.hooks();
    let daemon = Daemon {
        backend,
        store: &ctx.store,
        jobs_dir: ctx.config.jobs_dir.clone(),
        state: ctx.config.state.clone(),
        opts: ctx.run_options(),
        reload: Duration::from_secs(60),
        events: None,
        after_run: Some(&hooks),
    };
    daemon.run(&SystemClock, shutdown_signal()).await?;
    if let Some(t) = metrics_task {
        t.abort();
    }
    Ok(exit::OK)
}
