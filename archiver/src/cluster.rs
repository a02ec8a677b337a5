//! Binding a repository to one cluster: the first push or backup claims it (create-only put of
//! `cluster.json`), everything after must come from the same system identifier.

use storage::manifest::ClusterIdentity;
use storage::{Durability, PutMode, Storage, StorageError, layout};

use crate::ArchiveError;

/// Claim the repository for `system_identifier`, or check that it already belongs to it.
pub(crate) async fn bind(
    storage: &dyn Storage,
    system_identifier: u64,
    segment_size: u64,
    what: &str,
) -> Result<ClusterIdentity, ArchiveError> {
    let identity = match ClusterIdentity::load(storage).await? {
        Some(identity) => identity,
        None => {
            let fresh = ClusterIdentity {
                system_identifier: system_identifier.to_string(),
                segment_size,
                created_at: jiff::Timestamp::now(),
            };
            let bytes = serde_json::to_vec_pretty(&fresh).expect("identity serializes");
            match storage
                .put_bytes(
                    layout::CLUSTER_KEY,
                    bytes,
                    PutMode::Create,
                    Durability::Immediate,
                )
                .await
            {
                Ok(_) => fresh,
                // Another process claimed it first: whatever it wrote is the truth.
                Err(StorageError::AlreadyExists { .. }) => {
                    ClusterIdentity::load(storage).await?.ok_or_else(|| {
                        ArchiveError::Precondition("cluster.json vanished while being read".into())
                    })?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    belongs(&identity, system_identifier, what)?;
    Ok(identity)
}

/// Whether the repository may take `system_identifier`'s files, read only: `Ok(None)` when no
/// cluster has claimed it yet.
pub(crate) async fn check(
    storage: &dyn Storage,
    system_identifier: u64,
    what: &str,
) -> Result<Option<ClusterIdentity>, ArchiveError> {
    let Some(identity) = ClusterIdentity::load(storage).await? else {
        return Ok(None);
    };
    belongs(&identity, system_identifier, what)?;
    Ok(Some(identity))
}

fn belongs(
    identity: &ClusterIdentity,
    system_identifier: u64,
    what: &str,
) -> Result<(), ArchiveError> {
    let expected = identity.system_identifier().ok_or_else(|| {
        ArchiveError::Storage(StorageError::Corrupt {
            key: layout::CLUSTER_KEY.into(),
            reason: "system_identifier is not a number".into(),
        })
    })?;
    if expected != system_identifier {
        return Err(ArchiveError::ForeignCluster {
            what: what.to_string(),
            expected,
            found: system_identifier,
        });
    }
    Ok(())
}
