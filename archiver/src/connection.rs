//! How to reach PostgreSQL: the connection every PostgreSQL backup (and the binary's other
//! commands that talk to the server) opens.

use std::time::Duration;

use tracing::debug;

use crate::ArchiveError;
use crate::error::PgContext;

/// How to reach PostgreSQL. `Debug` never shows the password.
#[derive(Clone)]
pub struct ConnectionOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl std::fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl ConnectionOptions {
    /// The driver's configuration for this server (its Debug output shows the password: never
    /// log it).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("lifeline")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client, ArchiveError> {
        let (client, connection) = self
            .pg_config()
            .connect(tokio_postgres::NoTls)
            .await
            .doing("connecting (check DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME)")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("PostgreSQL connection closed: {e}");
            }
        });
        Ok(client)
    }
}
