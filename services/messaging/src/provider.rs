//! Providers deliver messages; the local sink provider writes each one as a file.

use std::path::PathBuf;

use anyhow::Context;
use async_trait::async_trait;
use uuid::Uuid;

/// A message ready for a provider.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message_id: Uuid,
    pub lead_id: Uuid,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Something that delivers messages. Delivering the same `message_id` twice must not reach
/// the person twice (providers take it as their idempotency key).
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Returns the provider's name, recorded with each message.
    fn name(&self) -> &'static str;
    /// Delivers `message`.
    async fn send(&self, message: &Outgoing) -> anyhow::Result<()>;
}

/// Writes each message to `<dir>/<message_id>.eml` instead of sending it (development, tests).
#[derive(Debug, Clone)]
pub struct SinkProvider {
    dir: PathBuf,
}

impl SinkProvider {
    /// Returns a sink writing into `dir`, creating it when missing.
    pub async fn new(dir: PathBuf) -> anyhow::Result<Self> {
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("create sink directory {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// Returns the path a message is written to.
    pub fn path_of(&self, message_id: Uuid) -> PathBuf {
        self.dir.join(format!("{message_id}.eml"))
    }
}

#[async_trait]
impl Provider for SinkProvider {
    fn name(&self) -> &'static str {
        "sink"
    }

    async fn send(&self, message: &Outgoing) -> anyhow::Result<()> {
        let text = format!(
            "Message-ID: <{id}@leadflow.localhost>\r\nX-Leadflow-Lead: {lead}\r\nFrom: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
            id = message.message_id,
            lead = message.lead_id,
            from = message.from,
            to = message.to,
            subject = message.subject,
            body = message.body,
        );
        // Written whole, then renamed: a reader never sees half a message, and a second
        // delivery of the same id replaces the file rather than adding one.
        let path = self.path_of(message.message_id);
        let partial = path.with_extension("eml.partial");
        tokio::fs::write(&partial, text)
            .await
            .context("write sink message")?;
        tokio::fs::rename(&partial, &path)
            .await
            .context("publish sink message")?;
        Ok(())
    }
}
