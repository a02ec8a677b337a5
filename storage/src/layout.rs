//! Where each object lives in the repository. Every key is built here and nowhere else.
//!
//! ```text
//! cluster.json                                 the cluster this repository archives (create-only)
//! keys.json                                    key slots of an encrypted repository (clear)
//! wal/<sysid>/<TTTTTTTT>/<wal file name>       one framed object per WAL, history or backup file
//! packs/<first 2 hex>/<blake3 hex>             many framed chunks in one object (see `pack`)
//! backups/<backup id>/manifest                 the framed JSON manifest; written last
//! backups/<backup id>/stream-manifest          instead of `manifest` for stream backups
//!                                              (Redis RDB/AOF, dumps): see `StreamManifest`
//! backups/<backup id>/<backup id>.metadata     plain JSON summary for people and older tools
//! leases/<backup id>/<holder>                  a restore is using that backup (prune keeps it)
//! ```
//!
//! A backup exists once its manifest exists: the manifest is written only after every pack it
//! names is durable, so a crash mid-backup leaves unreferenced packs, never a broken backup.

use crate::wal::WalFileName;

pub const CLUSTER_KEY: &str = "cluster.json";
/// An encrypted repository's key slots: the one object that is never sealed.
pub const KEYS_KEY: &str = "keys.json";
pub const WAL_PREFIX: &str = "wal/";
pub const BACKUPS_PREFIX: &str = "backups/";
pub const PACKS_PREFIX: &str = "packs/";
pub const MANIFEST_NAME: &str = "manifest";

pub fn wal_prefix(system_identifier: u64) -> String {
    format!("{WAL_PREFIX}{system_identifier}/")
}

pub fn wal_key(system_identifier: u64, name: &WalFileName) -> String {
    format!("{WAL_PREFIX}{system_identifier}/{}/{name}", name.timeline())
}

/// Recover the cluster and file name from a WAL key (for catalog rebuild).
pub fn parse_wal_key(key: &str) -> Option<(u64, WalFileName)> {
    let rest = key.strip_prefix(WAL_PREFIX)?;
    let mut parts = rest.split('/');
    let sysid = parts.next()?.parse().ok()?;
    let _timeline = parts.next()?;
    let name = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((sysid, name))
}

pub fn pack_key(pack_id: &crate::PackId) -> String {
    let hex = pack_id.to_hex();
    format!("{PACKS_PREFIX}{}/{hex}", &hex[..2])
}

/// The pack a key under `packs/` names; none for anything else found there (not lifeline's).
pub fn parse_pack_key(key: &str) -> Option<crate::PackId> {
    key.strip_prefix(PACKS_PREFIX)?
        .rsplit('/')
        .next()?
        .parse()
        .ok()
}

pub fn manifest_key(backup_id: &str) -> String {
    format!("{BACKUPS_PREFIX}{backup_id}/{MANIFEST_NAME}")
}

pub const STREAM_MANIFEST_NAME: &str = "stream-manifest";
/// Where `lifeline check` writes (and at once removes) its probe.
pub const CHECK_PREFIX: &str = "check/";
pub const LEASES_PREFIX: &str = "leases/";
/// Held by the prune that runs: one at a time, whichever host it runs on.
pub const PRUNE_LOCK_KEY: &str = "prune/lock";
/// Packs a prune found unreferenced and when: the first phase of the two-phase sweep.
pub const PRUNE_PENDING_KEY: &str = "prune/pending-packs.json";

/// The lease a restore takes on `backup_id`; `holder` names the host and process.
pub fn lease_key(backup_id: &str, holder: &str) -> String {
    format!("{LEASES_PREFIX}{backup_id}/{holder}")
}

/// The backup id a lease key protects.
pub fn parse_lease_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(LEASES_PREFIX)?;
    let (id, holder) = rest.split_once('/')?;
    (!holder.is_empty() && !holder.contains('/')).then_some(id)
}

pub fn stream_manifest_key(backup_id: &str) -> String {
    format!("{BACKUPS_PREFIX}{backup_id}/{STREAM_MANIFEST_NAME}")
}

pub fn metadata_key(backup_id: &str) -> String {
    format!("{BACKUPS_PREFIX}{backup_id}/{backup_id}.metadata")
}

/// The backup id of a manifest key, if it is one.
pub fn parse_manifest_key(key: &str) -> Option<&str> {
    backup_id_of(key, MANIFEST_NAME)
}

/// The backup id of a stream manifest key, if it is one.
pub fn parse_stream_manifest_key(key: &str) -> Option<&str> {
    backup_id_of(key, STREAM_MANIFEST_NAME)
}

fn backup_id_of<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    key.strip_prefix(BACKUPS_PREFIX)?
        .strip_suffix(name)?
        .strip_suffix('/')
        .filter(|id| !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let name: WalFileName = "000000020000000000000003".parse().expect("name");
        let key = wal_key(7, &name);
        assert_eq!(key, "wal/7/00000002/000000020000000000000003");
        assert_eq!(parse_wal_key(&key), Some((7, name)));
        assert_eq!(
            parse_manifest_key(&manifest_key("backup_20251227_010000")),
            Some("backup_20251227_010000")
        );
        assert_eq!(parse_manifest_key("backups/x/y/manifest"), None);
        assert_eq!(parse_manifest_key("backups/x/stream-manifest"), None);
        assert_eq!(
            parse_stream_manifest_key(&stream_manifest_key("backup_1")),
            Some("backup_1")
        );
        let id = "ab".repeat(32);
        let key = pack_key(&id.parse().expect("hex"));
        assert_eq!(key, format!("packs/ab/{id}"));
        assert_eq!(parse_pack_key(&key).map(|p| p.to_hex()), Some(id));
        assert_eq!(parse_pack_key("packs/ab/.tmp.abcdef.99.3"), None);
    }
}
