//! How to reach PostgreSQL: the connection every PostgreSQL backup (and the binary's other
//! commands that talk to the server) opens.

use std::time::Duration;

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
    /// `db-sslmode` and `db-sslrootcert`.
    pub tls: pgtls::TlsSettings,
}

impl std::fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.tls.mode)
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
        match pgtls::connect(&self.pg_config(), &self.tls).await {
            Ok(client) => Ok(client),
            Err(pgtls::ConnectError::Tls(e)) => Err(e.into()),
            Err(pgtls::ConnectError::Postgres(e)) => Err(e).doing(
                "connecting (check DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME, db-sslmode)",
            ),
        }
    }

    /// libpq's variables for a client program (pg_dump, pg_restore, psql): the same server,
    /// user and TLS as lifeline's own connections, the password never on a command line.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGSSLMODE", self.tls.mode.to_string()),
        ];
        if let Some(root) = &self.tls.root_cert {
            env.push(("PGSSLROOTCERT", root.display().to_string()));
        }
        if let Some(password) = &self.password {
            env.push(("PGPASSWORD", password.clone()));
        }
        env
    }
}
