use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use storage::{BackupKind, Service};

use crate::error::QueryContext;
use crate::{CatalogError, Restorability};

/// Schema versions, applied in order; `user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE clusters (
        system_identifier TEXT PRIMARY KEY,
        first_seen_us INTEGER NOT NULL
    );
    CREATE TABLE wal_files (
        system_identifier TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        timeline INTEGER NOT NULL,
        segment_number INTEGER,
        size_bytes INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL,
        checksum TEXT NOT NULL,
        archived_at_us INTEGER NOT NULL,
        PRIMARY KEY (system_identifier, name)
    );
    CREATE INDEX wal_files_by_segment ON wal_files (system_identifier, segment_number);
    CREATE TABLE backups (
        backup_id TEXT PRIMARY KEY,
        service TEXT NOT NULL,
        kind TEXT NOT NULL,
        system_identifier TEXT NOT NULL,
        timeline INTEGER NOT NULL,
        start_lsn INTEGER NOT NULL,
        stop_lsn INTEGER NOT NULL,
        start_wal TEXT NOT NULL,
        stop_wal TEXT NOT NULL,
        started_at_us INTEGER NOT NULL,
        finished_at_us INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        new_bytes INTEGER NOT NULL,
        file_count INTEGER NOT NULL,
        state TEXT NOT NULL,
        retention TEXT NOT NULL,
        restorability TEXT NOT NULL
    );
    CREATE INDEX backups_by_time ON backups (service, finished_at_us);",
    // Which server version a backup is of and where its files were read; rows from before
    // say '' until the catalog is rebuilt from the repository.
    "ALTER TABLE backups ADD COLUMN server_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE backups ADD COLUMN source TEXT NOT NULL DEFAULT 'primary';",
];

/// One archived WAL, history or backup-history file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub system_identifier: u64,
    pub name: String,
    pub kind: String,
    pub timeline: u32,
    pub segment_number: Option<u64>,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    pub checksum: String,
    pub archived_at_us: i64,
}

/// A backup the catalog lists: only complete ones are ever recorded (a backup exists once
/// its manifest does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub backup_id: String,
    pub service: Service,
    pub kind: BackupKind,
    pub system_identifier: u64,
    pub timeline: u32,
    pub start_lsn: u64,
    pub stop_lsn: u64,
    pub start_wal: String,
    pub stop_wal: String,
    pub started_at_us: i64,
    pub finished_at_us: i64,
    pub size_bytes: u64,
    pub new_bytes: u64,
    pub file_count: u64,
    pub retention: String,
    pub restorability: Restorability,
    /// The server's version as it reported it ("15.4", Redis "7.0.15"); "" when not known.
    pub server_version: String,
    pub source: storage::BackupSource,
}

pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

fn to_i64(v: u64) -> i64 {
    // LSNs and sizes fit in 63 bits in practice; store the bit pattern so nothing is lost.
    v as i64
}

fn to_u64(v: i64) -> u64 {
    v as u64
}

fn parse_sysid(s: String) -> Result<u64, rusqlite::Error> {
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Catalog {
    /// Open (creating and migrating if needed) the catalog at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |cause| CatalogError::Open {
            path: path.clone(),
            cause,
        };
        create_private(&path)?;
        let mut conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(60))
            .map_err(open_err)?;
        set_wal_journal(&conn).map_err(open_err)?;
        // Each `wal push` is a short-lived process and usually the last connection: without
        // this, every close would checkpoint the WAL into the database with three fsyncs.
        // SQLite still checkpoints automatically as the WAL grows.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        migrate(&mut conn).map_err(|e| CatalogError::Migrate {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Catalog { conn, path })
    }

    /// An empty catalog in memory: a dry run plans from it, and writes no file.
    pub fn in_memory() -> Result<Self, CatalogError> {
        let path = PathBuf::from(":memory:");
        let mut conn = Connection::open_in_memory().map_err(|cause| CatalogError::Open {
            path: path.clone(),
            cause,
        })?;
        migrate(&mut conn).map_err(|e| CatalogError::Migrate {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Catalog { conn, path })
    }

    /// The catalog at `path` when there is one, else an empty one in memory: for runs that
    /// must create nothing (`SIMULATE_MODE`).
    pub fn open_existing_or_empty(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        match path.as_ref().exists() {
            true => Catalog::open(path),
            false => Catalog::in_memory(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn register_cluster(
        &mut self,
        system_identifier: u64,
        now_us: i64,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO clusters (system_identifier, first_seen_us) VALUES (?1, ?2)",
                params![system_identifier.to_string(), now_us],
            )
            .doing("registering the cluster")?;
        Ok(())
    }

    pub fn clusters(&self) -> Result<Vec<u64>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare("SELECT system_identifier FROM clusters ORDER BY first_seen_us")
            .doing("listing clusters")?;
        let rows = stmt
            .query_map([], |r| parse_sysid(r.get(0)?))
            .doing("listing clusters")?;
        rows.collect::<Result<_, _>>().doing("listing clusters")
    }

    pub fn record_wal(&mut self, wal: &WalRecord) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("recording a WAL file")?;
        insert_wal(&tx, wal)?;
        tx.commit().doing("recording a WAL file")
    }

    /// Every archived WAL file of a cluster, ordered by timeline and name.
    pub fn wal_files(&self, system_identifier: u64) -> Result<Vec<WalRecord>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT system_identifier, name, kind, timeline, segment_number, size_bytes,
                        stored_bytes, checksum, archived_at_us
                 FROM wal_files WHERE system_identifier = ?1 ORDER BY timeline, name",
            )
            .doing("listing WAL files")?;
        let rows = stmt
            .query_map(params![system_identifier.to_string()], wal_from_row)
            .doing("listing WAL files")?;
        rows.collect::<Result<_, _>>().doing("listing WAL files")
    }

    /// The most recently archived WAL file of any cluster.
    pub fn last_wal(&self) -> Result<Option<WalRecord>, CatalogError> {
        self.conn
            .query_row(
                "SELECT system_identifier, name, kind, timeline, segment_number, size_bytes,
                        stored_bytes, checksum, archived_at_us
                 FROM wal_files ORDER BY archived_at_us DESC, name DESC LIMIT 1",
                [],
                wal_from_row,
            )
            .optional()
            .doing("finding the last archived WAL")
    }

    pub fn wal_totals(&self) -> Result<(u64, u64), CatalogError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(stored_bytes), 0) FROM wal_files",
                [],
                |r| Ok((to_u64(r.get(0)?), to_u64(r.get(1)?))),
            )
            .doing("summing WAL files")
    }

    pub fn upsert_backup(&mut self, backup: &BackupRecord) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("recording a backup")?;
        insert_backup(&tx, backup)?;
        tx.commit().doing("recording a backup")
    }

    /// Backups in the order they finished (never by name), optionally of one service.
    pub fn backups(&self, service: Option<Service>) -> Result<Vec<BackupRecord>, CatalogError> {
        let service = service.map(Service::as_str);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT backup_id, service, kind, system_identifier, timeline, start_lsn, stop_lsn,
                        start_wal, stop_wal, started_at_us, finished_at_us, size_bytes, new_bytes,
                        file_count, retention, restorability, server_version, source
                 FROM backups WHERE (?1 IS NULL OR service = ?1) AND state = 'complete'
                 ORDER BY finished_at_us, stop_lsn, backup_id",
            )
            .doing("listing backups")?;
        let rows = stmt
            .query_map(params![service], backup_from_row)
            .doing("listing backups")?;
        rows.collect::<Result<_, _>>().doing("listing backups")
    }

    /// The newest backup of `kind` (of the cluster `system_identifier`, when given): what a
    /// restore, a drill or a failover takes when none is named.
    pub fn newest_backup(
        &self,
        kind: BackupKind,
        system_identifier: Option<u64>,
    ) -> Result<Option<BackupRecord>, CatalogError> {
        Ok(self.backups(Some(kind.service()))?.into_iter().rfind(|b| {
            b.kind == kind && system_identifier.is_none_or(|id| b.system_identifier == id)
        }))
    }

    pub fn backup(&self, backup_id: &str) -> Result<Option<BackupRecord>, CatalogError> {
        Ok(self
            .backups(None)?
            .into_iter()
            .find(|b| b.backup_id == backup_id))
    }

    /// Replace the whole content with what the repository holds (catalog rebuild).
    pub fn replace_all(
        &mut self,
        clusters: &[(u64, i64)],
        wal: &[WalRecord],
        backups: &[BackupRecord],
    ) -> Result<(), CatalogError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .doing("rebuilding the catalog")?;
        tx.execute_batch("DELETE FROM wal_files; DELETE FROM backups; DELETE FROM clusters;")
            .doing("clearing the catalog")?;
        for (sysid, first_seen) in clusters {
            tx.execute(
                "INSERT OR IGNORE INTO clusters (system_identifier, first_seen_us) VALUES (?1, ?2)",
                params![sysid.to_string(), first_seen],
            )
            .doing("restoring a cluster")?;
        }
        for w in wal {
            insert_wal(&tx, w)?;
        }
        for b in backups {
            insert_backup(&tx, b)?;
        }
        tx.commit().doing("rebuilding the catalog")
    }
}

/// Create the database file if it is missing: 0600, and as root given to the owner of its
/// directory. SQLite creates its `-wal` and `-shm` files with the database file's mode and
/// owner, so they are private too. The directory itself is never created: a missing one is a
/// wrong path or an unmounted volume. Files an older version left readable are tightened.
fn create_private(path: &Path) -> Result<(), CatalogError> {
    use storage::private::{self, Owner};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(CatalogError::MissingDir {
            dir: dir.to_path_buf(),
        });
    }
    let create_err = |cause| CatalogError::Create {
        path: path.to_path_buf(),
        cause,
    };
    match std::fs::symlink_metadata(path) {
        // SQLite would follow it: a link there (whoever can write the directory may plant one)
        // would make the catalog, and its journal files, appear wherever it points.
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(create_err(std::io::Error::other(
                "it is a symbolic link; the catalog must be a plain file: remove the link (lifeline catalog rebuild recreates the catalog)",
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match private::create_new_file(path, Owner::of(dir)) {
                Ok(_) => {}
                // Another process created it first.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(create_err(e)),
            }
        }
        Err(e) => return Err(create_err(e)),
    }
    let mut journal = path.as_os_str().to_owned();
    journal.push("-wal");
    let mut shared = path.as_os_str().to_owned();
    shared.push("-shm");
    for file in [path, Path::new(&journal), Path::new(&shared)] {
        // Best effort: a reader that may not change the mode still reads.
        let _ = private::tighten_file(file);
    }
    Ok(())
}

/// Switching to WAL journal mode takes an exclusive lock that the busy handler does not wait
/// for, so concurrent first opens retry briefly.
fn set_wal_journal(conn: &Connection) -> Result<(), rusqlite::Error> {
    let current: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if current.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        let mode: Result<String, _> =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0));
        match mode {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 200 && is_busy(&e) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5 + attempt));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Check the version and migrate in one write transaction, so that many processes opening a
/// new catalog at once apply each migration exactly once.
fn migrate(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version >= MIGRATIONS.len() as i64 {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in (1i64..).zip(MIGRATIONS.iter()) {
        if i <= version {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i)?;
    }
    tx.commit()
}

fn insert_wal(conn: &Connection, wal: &WalRecord) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT OR REPLACE INTO wal_files (system_identifier, name, kind, timeline, segment_number,
             size_bytes, stored_bytes, checksum, archived_at_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            wal.system_identifier.to_string(),
            wal.name,
            wal.kind,
            wal.timeline,
            wal.segment_number.map(to_i64),
            to_i64(wal.size_bytes),
            to_i64(wal.stored_bytes),
            wal.checksum,
            wal.archived_at_us
        ],
    )
    .doing("recording a WAL file")?;
    Ok(())
}

fn insert_backup(conn: &Connection, b: &BackupRecord) -> Result<(), CatalogError> {
    conn.execute(
        "INSERT OR REPLACE INTO backups (backup_id, service, kind, system_identifier, timeline,
             start_lsn, stop_lsn, start_wal, stop_wal, started_at_us, finished_at_us, size_bytes,
             new_bytes, file_count, state, retention, restorability, server_version, source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19)",
        params![
            b.backup_id,
            b.service.as_str(),
            b.kind.as_str(),
            b.system_identifier.to_string(),
            b.timeline,
            to_i64(b.start_lsn),
            to_i64(b.stop_lsn),
            b.start_wal,
            b.stop_wal,
            b.started_at_us,
            b.finished_at_us,
            to_i64(b.size_bytes),
            to_i64(b.new_bytes),
            to_i64(b.file_count),
            "complete",
            b.retention,
            b.restorability.as_str(),
            b.server_version,
            b.source.as_str()
        ],
    )
    .doing("recording a backup")?;
    Ok(())
}

fn wal_from_row(r: &rusqlite::Row<'_>) -> Result<WalRecord, rusqlite::Error> {
    Ok(WalRecord {
        system_identifier: parse_sysid(r.get(0)?)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        timeline: r.get(3)?,
        segment_number: r.get::<_, Option<i64>>(4)?.map(to_u64),
        size_bytes: to_u64(r.get(5)?),
        stored_bytes: to_u64(r.get(6)?),
        checksum: r.get(7)?,
        archived_at_us: r.get(8)?,
    })
}

/// A column holding one of the domain's words; another word is a damaged catalog.
fn parse_column<T: std::str::FromStr<Err = String>>(
    r: &rusqlite::Row<'_>,
    column: usize,
) -> Result<T, rusqlite::Error> {
    let text: String = r.get(column)?;
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, e.into())
    })
}

fn backup_from_row(r: &rusqlite::Row<'_>) -> Result<BackupRecord, rusqlite::Error> {
    Ok(BackupRecord {
        backup_id: r.get(0)?,
        service: parse_column(r, 1)?,
        kind: parse_column(r, 2)?,
        system_identifier: parse_sysid(r.get(3)?)?,
        timeline: r.get(4)?,
        start_lsn: to_u64(r.get(5)?),
        stop_lsn: to_u64(r.get(6)?),
        start_wal: r.get(7)?,
        stop_wal: r.get(8)?,
        started_at_us: r.get(9)?,
        finished_at_us: r.get(10)?,
        size_bytes: to_u64(r.get(11)?),
        new_bytes: to_u64(r.get(12)?),
        file_count: to_u64(r.get(13)?),
        retention: r.get(14)?,
        restorability: parse_column(r, 15)?,
        server_version: r.get(16)?,
        source: parse_column(r, 17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(name: &str, at: i64) -> WalRecord {
        WalRecord {
            system_identifier: u64::MAX - 1,
            name: name.into(),
            kind: "segment".into(),
            timeline: 1,
            segment_number: Some(1),
            size_bytes: 16 << 20,
            stored_bytes: 1000,
            checksum: "x".into(),
            archived_at_us: at,
        }
    }

    #[test]
    fn a_catalog_from_before_versions_were_listed_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(MIGRATIONS[0]).expect("first schema");
            conn.pragma_update(None, "user_version", 1)
                .expect("version");
            conn.execute(
                "INSERT INTO backups VALUES ('old', 'postgresql', 'base', '1', 1, 0, 1, '', '',
                 0, 10, 0, 0, 0, 'complete', '7_days', 'UNVERIFIED')",
                [],
            )
            .expect("an old row");
        }
        let cat = Catalog::open(&path).expect("migrates");
        let rows = cat.backups(None).expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].server_version, "");
        assert_eq!(rows[0].source, storage::BackupSource::Primary);
        let mut b = rows[0].clone();
        b.backup_id = "new".into();
        b.finished_at_us = 20;
        b.server_version = "16.2".into();
        b.source = storage::BackupSource::Standby;
        let mut cat = cat;
        cat.upsert_backup(&b).expect("insert");
        let again = Catalog::open(&path).expect("reopens");
        let new = again.backups(None).expect("list");
        assert_eq!(
            (new[1].server_version.as_str(), new[1].source),
            ("16.2", storage::BackupSource::Standby)
        );
    }

    #[test]
    fn concurrent_writers_all_land() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut cat = Catalog::open(&path).expect("open");
                    for i in 0..25 {
                        cat.record_wal(&wal(&format!("{t:08X}{i:016X}"), i))
                            .expect("record");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("writer thread");
        }
        let cat = Catalog::open(&path).expect("open");
        assert_eq!(cat.wal_files(u64::MAX - 1).expect("list").len(), 200);
    }

    #[test]
    fn the_catalog_is_private_and_its_directory_is_never_created() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        let mut cat = Catalog::open(&path).expect("open");
        cat.record_wal(&wal("000000010000000000000001", 1))
            .expect("record");
        for entry in std::fs::read_dir(dir.path()).expect("list") {
            let entry = entry.expect("entry");
            let mode = entry.metadata().expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?}", entry.file_name());
        }
        let missing = dir.path().join("unmounted");
        let err = Catalog::open(missing.join("catalog.db")).expect_err("opened");
        assert!(matches!(err, CatalogError::MissingDir { .. }), "{err}");
        assert!(!missing.exists(), "the catalog's directory was created");
    }

    #[test]
    fn backups_are_ordered_by_time_not_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cat = Catalog::open(dir.path().join("c.db")).expect("open");
        let mut b = BackupRecord {
            backup_id: "z_first".into(),
            service: Service::Postgresql,
            kind: BackupKind::Base,
            system_identifier: 1,
            timeline: 1,
            start_lsn: 0,
            stop_lsn: 1,
            start_wal: String::new(),
            stop_wal: String::new(),
            started_at_us: 0,
            finished_at_us: 10,
            size_bytes: 0,
            new_bytes: 0,
            file_count: 0,
            retention: "7_days".into(),
            restorability: Restorability::Unverified,
            server_version: "15.4".into(),
            source: storage::BackupSource::Standby,
        };
        cat.upsert_backup(&b).expect("insert");
        b.backup_id = "a_second".into();
        b.finished_at_us = 20;
        cat.upsert_backup(&b).expect("insert");
        let ids: Vec<_> = cat
            .backups(Some(Service::Postgresql))
            .expect("list")
            .into_iter()
            .map(|b| b.backup_id)
            .collect();
        assert_eq!(ids, vec!["z_first", "a_second"]);
        assert!(cat.backup("a_second").expect("get").is_some());
        let newest = |kind, sysid| {
            cat.newest_backup(kind, sysid)
                .expect("query")
                .map(|b| b.backup_id)
        };
        assert_eq!(newest(BackupKind::Base, None).as_deref(), Some("a_second"));
        assert_eq!(
            newest(BackupKind::Base, Some(1)).as_deref(),
            Some("a_second")
        );
        assert_eq!(newest(BackupKind::Base, Some(2)), None);
        assert_eq!(newest(BackupKind::Dump, None), None);
    }
}
