//! Notifications: a Slack incoming webhook and email over SMTP, for failovers, failed backups
//! and failed verifications. A notification that cannot be delivered is reported as a warning
//! and never changes the outcome of the operation it reports. The webhook URL is a secret (it
//! is the credential): it never appears in a message, an error or a log line.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

/// How long one delivery may take before it is given up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// `[notify]` in the configuration file; `SLACK_WEBHOOK_URL`, `NOTIFICATION_EMAIL` and
/// `SMTP_PASSWORD` override it. No `Debug`: it holds secrets.
#[derive(Default, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NotifyConfig {
    pub slack_webhook_url: Option<String>,
    /// Where email goes (comma-separated addresses).
    pub email_to: Option<String>,
    pub email_from: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    /// `starttls` (default), `tls` or `none` (a relay on the same host only).
    pub smtp_tls: Option<String>,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field(
                "slack",
                &self.slack_webhook_url.as_ref().map(|_| "<redacted>"),
            )
            .field("email_to", &self.email_to)
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .finish_non_exhaustive()
    }
}

/// What happened, in the words the on-call engineer reads first.
#[derive(Debug, Clone)]
pub struct Event {
    /// `failover`, `backup`, `verify-recovery`, `drill`...
    pub operation: String,
    pub ok: bool,
    /// One line: what happened.
    pub summary: String,
    /// The report, several lines.
    pub details: String,
}

impl Event {
    fn subject(&self) -> String {
        format!(
            "[lifeline] {} {}: {}",
            self.operation,
            if self.ok { "succeeded" } else { "FAILED" },
            self.summary
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Notifier {
    config: NotifyConfig,
    host: String,
}

impl Notifier {
    /// `host` names this machine in messages and the default sender address.
    pub fn new(config: NotifyConfig, host: String) -> Self {
        Self { config, host }
    }

    pub fn is_configured(&self) -> bool {
        self.config.slack_webhook_url.is_some() || self.config.email_to.is_some()
    }

    /// Deliver `event` everywhere configured; returns one warning per channel that failed.
    pub async fn send(&self, event: &Event) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(url) = &self.config.slack_webhook_url {
            let text = format!(
                "*{}* (on {})\n```{}```",
                event.subject(),
                self.host,
                event.details
            );
            if let Err(e) = post_slack(url.clone(), text).await {
                warnings.push(format!("Slack notification not delivered: {e}"));
            }
        }
        if let Some(to) = &self.config.email_to
            && let Err(e) = self.send_email(to, event).await
        {
            warnings.push(format!("email notification to {to} not delivered: {e}"));
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        warnings
    }

    async fn send_email(&self, to: &str, event: &Event) -> Result<(), String> {
        let Some(smtp_host) = &self.config.smtp_host else {
            return Err("no smtp-host is configured ([notify] smtp-host)".into());
        };
        let from = self
            .config
            .email_from
            .clone()
            .unwrap_or_else(|| format!("lifeline@{}", self.host));
        let from: Mailbox = from
            .parse()
            .map_err(|e| format!("email-from {from:?} is not an address: {e}"))?;
        let mut message = Message::builder().from(from).subject(event.subject());
        for address in to.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| format!("{address:?} is not an address: {e}"))?;
            message = message.to(mailbox);
        }
        let body = format!(
            "{}\n\nhost: {}\n\n{}\n",
            event.subject(),
            self.host,
            event.details
        );
        let message = message.body(body).map_err(|e| e.to_string())?;
        let tls = self.config.smtp_tls.as_deref().unwrap_or("starttls");
        let builder = match tls {
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp_host),
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(smtp_host)
                .map_err(|e| e.to_string())?,
            "tls" => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(smtp_host).map_err(|e| e.to_string())?
            }
            other => return Err(format!("smtp-tls {other:?}: use starttls, tls or none")),
        };
        let mut builder = builder.timeout(Some(DELIVERY_TIMEOUT));
        if let Some(port) = self.config.smtp_port {
            builder = builder.port(port);
        }
        if let (Some(user), Some(password)) =
            (&self.config.smtp_username, &self.config.smtp_password)
        {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        builder
            .build()
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP server {smtp_host}: {e}"))
    }
}

/// POST `text` to the webhook. Errors name the failure, never the URL.
async fn post_slack(url: String, text: String) -> Result<(), String> {
    let body = serde_json::json!({ "text": text }).to_string();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(DELIVERY_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| crate::http::describe_error(&e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("the webhook answered HTTP {status}"))
        }
    })
    .await
    .map_err(|e| format!("the delivery task failed: {e}"))?
}
