//! Notifications: when a run fails, cannot run, or is stopped by a safety limit (or after every
//! run with `on = "always"`), a JSON POST to a webhook (retried with backoff on network errors,
//! 429 and 5xx) and/or an email through SMTP or the local sendmail (lettre). A notification that
//! cannot be delivered is logged; it never changes a run's outcome or exit code.

use backon::{ExponentialBuilder, Retryable};
use lettre::message::Mailbox;
use lettre::{AsyncSendmailTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Serialize;
use std::time::Duration;

use crate::config::{NotifyConfig, NotifyOn};
use crate::engine::{JobReport, Outcome};

/// The webhook's JSON body.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    pub job: &'a str,
    pub tag: &'a str,
    pub outcome: &'a str,
    pub run_id: Option<i64>,
    pub message: Option<&'a str>,
    pub host: String,
    pub created: i64,
    pub updated: i64,
    pub deleted: i64,
    pub moved: i64,
    pub destinations: usize,
    pub failed: Vec<FailedDest<'a>>,
    pub summary: String,
}

/// A destination that failed or was stopped.
#[derive(Debug, Serialize)]
pub struct FailedDest<'a> {
    pub user: &'a str,
    pub error: Option<&'a str>,
    pub stopped: Option<&'a str>,
}

/// Sends notifications as configured.
pub struct Notifier {
    cfg: NotifyConfig,
    http: reqwest::Client,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// A few lines a person can read in a mail or a chat message.
pub fn summary(r: &JobReport) -> String {
    let c = r.counts;
    let mut s = format!(
        "groupsync job {} ({}): {} — {} destinations, {} failed; created {}, updated {}, deleted {}, moved {}",
        r.job,
        r.tag,
        r.outcome.as_str(),
        c.destinations,
        c.failed,
        c.created,
        c.updated,
        c.deleted,
        c.moved
    );
    if let Some(m) = &r.message {
        s.push_str(&format!("\n{m}"));
    }
    for d in &r.destinations {
        if let Some(e) = d.error.as_deref().or(d.stopped.as_deref()) {
            s.push_str(&format!("\n- {}: {e}", d.user));
        }
    }
    s
}

impl Notifier {
    /// `None` when nothing is configured.
    pub fn new(cfg: &NotifyConfig) -> Option<Notifier> {
        if cfg.webhook.is_none() && cfg.email_to.is_empty() {
            return None;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("groupsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok()?;
        Some(Notifier {
            cfg: cfg.clone(),
            http,
        })
    }

    /// True if this report is worth a notification.
    pub fn wants(&self, r: &JobReport) -> bool {
        self.cfg.on == NotifyOn::Always || (!r.dry_run && r.outcome != Outcome::Ok)
    }

    /// Sends what is configured; returns the delivery errors (already logged).
    pub async fn notify(&self, r: &JobReport) -> Vec<String> {
        if !self.wants(r) {
            return vec![];
        }
        let mut errors = vec![];
        if let Some(url) = &self.cfg.webhook
            && let Err(e) = self.webhook(url, r).await
        {
            errors.push(format!("webhook {url}: {e}"));
        }
        if !self.cfg.email_to.is_empty()
            && let Err(e) = self.email(r).await
        {
            errors.push(format!("email: {e}"));
        }
        for e in &errors {
            tracing::warn!(job = %r.job, "notification not delivered: {e}");
        }
        errors
    }

    async fn webhook(&self, url: &str, r: &JobReport) -> Result<(), String> {
        let payload = Payload {
            job: &r.job,
            tag: &r.tag,
            outcome: r.outcome.as_str(),
            run_id: r.run_id,
            message: r.message.as_deref(),
            host: hostname(),
            created: r.counts.created,
            updated: r.counts.updated,
            deleted: r.counts.deleted,
            moved: r.counts.moved,
            destinations: r.destinations.len(),
            failed: r
                .destinations
                .iter()
                .filter(|d| d.error.is_some() || d.stopped.is_some())
                .map(|d| FailedDest {
                    user: &d.user,
                    error: d.error.as_deref(),
                    stopped: d.stopped.as_deref(),
                })
                .collect(),
            summary: summary(r),
        };
        let send = || async {
            let resp = self
                .http
                .post(url)
                .json(&payload)
                .send()
                .await
                .map_err(|e| (true, e.to_string()))?;
            let status = resp.status();
            if status.is_success() {
                Ok(())
            } else {
                Err((
                    status.is_server_error() || status.as_u16() == 429,
                    format!("HTTP {status}"),
                ))
            }
        };
        send.retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(500)).with_max_times(3).with_jitter())
            .when(|(retryable, _)| *retryable)
            .notify(|(_, e), after| tracing::info!(job = %r.job, "webhook failed ({e}); retrying in {after:?}"))
            .await
            .map_err(|(_, e)| e)
    }

    async fn email(&self, r: &JobReport) -> Result<(), String> {
        let from: Mailbox = self
            .cfg
            .email_from
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("email_from: {e}"))?;
        let mut msg = Message::builder().from(from).subject(format!(
            "[groupsync] {}: {}",
            r.job,
            r.outcome.as_str()
        ));
        for to in &self.cfg.email_to {
            msg = msg.to(to.parse().map_err(|e| format!("email_to {to}: {e}"))?);
        }
        let msg = msg.body(summary(r)).map_err(|e| e.to_string())?;
        if let Some(url) = &self.cfg.smtp {
            let (tls, rest) = match url.strip_prefix("smtps://") {
                Some(rest) => (true, rest),
                None => (false, url.trim_start_matches("smtp://")),
            };
            let rest = rest.trim_end_matches('/');
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h,
                    p.parse::<u16>().map_err(|_| format!("bad port in {url}"))?,
                ),
                None => (rest, if tls { 465 } else { 25 }),
            };
            let transport = if tls {
                AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                    .map_err(|e| e.to_string())?
                    .port(port)
                    .build()
            } else {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                    .port(port)
                    .timeout(Some(Duration::from_secs(15)))
                    .build()
            };
            transport
                .send(msg)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            let cmd = self
                .cfg
                .sendmail
                .clone()
                .unwrap_or_else(|| "/usr/sbin/sendmail".into());
            AsyncSendmailTransport::<Tokio1Executor>::new_with_command(cmd)
                .send(msg)
                .await
                .map_err(|e| e.to_string())
        }
    }
}
