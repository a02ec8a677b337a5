//! What archiver and ops are given from the settings: PostgreSQL, Redis, the verify checks.

use ops::Settings;
use ops::settings::{Database, RedisServer};

/// The PostgreSQL server as the archiver reaches it.
pub fn connection(db: &Database) -> archiver::ConnectionOptions {
    archiver::ConnectionOptions {
        host: db.host.clone(),
        port: db.port,
        user: db.user.clone(),
        password: db.password.clone(),
        dbname: db.dbname.clone(),
        tls: db.tls.clone(),
    }
}

/// The standby a base backup reads, reached as the primary is (same user and database).
pub fn standby(
    settings: &Settings,
    from_standby: bool,
) -> Result<Option<archiver::StandbyOptions>, ops::OpsError> {
    let Some(standby) = settings.backup_standby(from_standby)? else {
        return Ok(None);
    };
    Ok(Some(archiver::StandbyOptions {
        mode: match standby.mode {
            ops::settings::StandbyMode::Prefer => archiver::StandbyMode::Prefer,
            ops::settings::StandbyMode::Require => archiver::StandbyMode::Require,
        },
        connection: archiver::ConnectionOptions {
            host: standby.host,
            port: standby.port,
            ..connection(settings.database())
        },
        data_dir: standby.data_dir,
        max_lag: standby.max_lag,
    }))
}

/// Redis as the archiver reaches it.
pub fn redis_client(redis: &RedisServer) -> archiver::RedisOptions {
    archiver::RedisOptions {
        host: redis.host.clone(),
        port: redis.port,
        password: redis.password.clone(),
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
        database: settings.database().server(),
        staging_database: settings.staging_db.clone(),
        checks: settings.ops.verify.clone(),
        redis: redis(&settings.redis),
        redis_configured: settings.ops.redis_configured,
    }
}

/// Redis at its address, its keys counted by the archiver's client.
fn redis(redis: &RedisServer) -> ops::Redis {
    let client = redis_client(redis);
    ops::Redis {
        host: redis.host.clone(),
        port: redis.port,
        count_keys: std::sync::Arc::new(move || {
            archiver::keyspace(&client).map_err(|e| e.to_string())
        }),
    }
}
