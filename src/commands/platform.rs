//! What the ops crate is given from the settings: the repository, the catalog and BACKUP_DIR
//! (through `ops::Repository`), the PostgreSQL server, Redis, and the verify checks.

use std::path::Path;

use crate::config::Settings;

impl ops::Repository for Settings {
    async fn open(&self) -> Result<std::sync::Arc<dyn storage::Storage>, ops::OpsError> {
        self.repository()
            .await
            .map_err(|e| ops::OpsError::Repository(format!("{e:#}")))
    }

    fn catalog_path(&self) -> Result<std::path::PathBuf, ops::OpsError> {
        Settings::catalog_path(self).map_err(|e| ops::OpsError::NotConfigured(format!("{e:#}")))
    }

    fn backup_dir(&self) -> Option<&Path> {
        self.backup_dir.as_deref()
    }
}

/// The primary as the settings name it; the replica is the same at another address.
pub fn server(db: &archiver::ConnectionOptions) -> ops::pg::Server {
    ops::pg::Server {
        host: db.host.clone(),
        port: db.port,
        config: db.pg_config(),
    }
}

/// What the checks reach, as the settings name it.
pub fn verify_options(
    settings: &Settings,
    depth: ops::Depth,
    target: restore::Target,
) -> ops::VerifyOptions {
    ops::VerifyOptions {
        depth,
        target,
        database: server(&settings.db),
        staging_database: settings.staging_db.clone(),
        checks: settings.ops.verify.clone(),
        redis: redis(&settings.redis),
        redis_configured: settings.ops.redis_configured,
    }
}

/// Redis at its address, its keys counted by the archiver's client.
fn redis(redis: &archiver::RedisOptions) -> ops::Redis {
    let client = redis.clone();
    ops::Redis {
        host: redis.host.clone(),
        port: redis.port,
        count_keys: std::sync::Arc::new(move || {
            archiver::keyspace(&client).map_err(|e| e.to_string())
        }),
    }
}
