//! How a base-backup manifest is written as JSON: from its own block lists, or from a
//! [`BlockSource`] that hands them over one file at a time, so that a backup of millions of
//! blocks never holds them all (they wait in a file of its own until the manifest is written).

use std::cell::RefCell;

use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::manifest::{BackupManifest, ChunkRef, FileEntry, Tablespace};

/// Where a manifest being written finds the block lists it does not hold.
pub trait BlockSource: Send {
    /// Into `blocks` (empty when called), the blocks of file number `index` of the manifest's
    /// `files`, in order. A reason ends the write.
    fn file_blocks(&mut self, index: usize, blocks: &mut Vec<ChunkRef>) -> Result<(), String>;

    /// Into `chunks` (empty when called), the bundle's chunks, in order.
    fn bundle(&mut self, chunks: &mut Vec<ChunkRef>) -> Result<(), String>;

    /// How many files it has lists for: the manifest's files, no more and no fewer.
    fn file_count(&self) -> usize;
}

/// Store `manifest` as [`crate::manifest::put_manifest`] does, its block lists (empty in
/// `manifest`) taken from `source` as they are written, and the object framed into an unnamed
/// file in `dir` rather than memory, then stored from it: neither the lists nor the object are
/// held whole. Returns the blake3 of the JSON that `.metadata` records.
pub async fn put_manifest_with_lists(
    storage: &dyn crate::Storage,
    key: &str,
    manifest: BackupManifest,
    source: Box<dyn BlockSource>,
    dir: &std::path::Path,
    mode: crate::PutMode,
) -> Result<blake3::Hash, crate::StorageError> {
    if source.file_count() != manifest.files.len() {
        return Err(crate::StorageError::Corrupt {
            key: key.to_string(),
            reason: format!(
                "not stored: it names {} files but has block lists for {}",
                manifest.files.len(),
                source.file_count()
            ),
        });
    }
    let dir = dir.to_path_buf();
    let (header, framed) = tokio::task::spawn_blocking(move || {
        let with_lists = WithLists {
            manifest: &manifest,
            source: RefCell::new(source),
        };
        crate::object::encode_json_to_file(&with_lists, crate::Compression::default(), &dir)
    })
    .await
    .map_err(|e| crate::StorageError::Corrupt {
        key: key.to_string(),
        reason: format!("the manifest's encoding stopped: {e}"),
    })??;
    let payload: crate::ObjectReader = Box::new(tokio::fs::File::from_std(framed));
    storage
        .put_stream(key, payload, mode, crate::Durability::Immediate)
        .await?;
    Ok(header.checksum)
}

struct WithLists<'a> {
    manifest: &'a BackupManifest,
    source: RefCell<Box<dyn BlockSource>>,
}

impl Serialize for WithLists<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        View::of(self.manifest, Some(&self.source)).serialize(serializer)
    }
}

impl Serialize for BackupManifest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        View::of(self, None).serialize(serializer)
    }
}

type Source<'a> = Option<&'a RefCell<Box<dyn BlockSource>>>;

/// The one place a base-backup manifest's JSON is laid out: its fields in order, those
/// `BackupManifest` reads as optional left out when empty.
#[derive(Serialize)]
struct View<'a> {
    format: &'a u32,
    backup_id: &'a str,
    service: &'a crate::Service,
    kind: &'a crate::BackupKind,
    system_identifier: &'a u64,
    server_version: &'a str,
    major_version: &'a u32,
    catalog_version: &'a u64,
    source: &'a crate::BackupSource,
    database: &'a str,
    timeline: &'a crate::wal::TimelineId,
    start_lsn: &'a crate::wal::Lsn,
    stop_lsn: &'a crate::wal::Lsn,
    start_wal: &'a str,
    stop_wal: &'a str,
    segment_size: &'a u64,
    started_at: &'a jiff::Timestamp,
    finished_at: &'a jiff::Timestamp,
    block_size: &'a u64,
    files: Files<'a>,
    bundle: Bundle<'a>,
    backup_label: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tablespace_map: Option<&'a String>,
    #[serde(skip_serializing_if = "no_tablespaces")]
    tablespaces: &'a [Tablespace],
    row_counts: &'a std::collections::BTreeMap<String, i64>,
    #[serde(skip_serializing_if = "no_estimates")]
    row_estimates: &'a std::collections::BTreeMap<String, i64>,
    size_bytes: &'a u64,
    new_bytes: &'a u64,
}

fn no_tablespaces(tablespaces: &&[Tablespace]) -> bool {
    tablespaces.is_empty()
}

fn no_estimates(estimates: &&std::collections::BTreeMap<String, i64>) -> bool {
    estimates.is_empty()
}

impl<'a> View<'a> {
    fn of(m: &'a BackupManifest, source: Source<'a>) -> View<'a> {
        View {
            format: &m.format,
            backup_id: &m.backup_id,
            service: &m.service,
            kind: &m.kind,
            system_identifier: &m.system_identifier,
            server_version: &m.server_version,
            major_version: &m.major_version,
            catalog_version: &m.catalog_version,
            source: &m.source,
            database: &m.database,
            timeline: &m.timeline,
            start_lsn: &m.start_lsn,
            stop_lsn: &m.stop_lsn,
            start_wal: &m.start_wal,
            stop_wal: &m.stop_wal,
            segment_size: &m.segment_size,
            started_at: &m.started_at,
            finished_at: &m.finished_at,
            block_size: &m.block_size,
            files: Files {
                files: &m.files,
                source,
            },
            bundle: Bundle {
                bundle: &m.bundle,
                source,
            },
            backup_label: &m.backup_label,
            tablespace_map: m.tablespace_map.as_ref(),
            tablespaces: &m.tablespaces,
            row_counts: &m.row_counts,
            row_estimates: &m.row_estimates,
            size_bytes: &m.size_bytes,
            new_bytes: &m.new_bytes,
        }
    }
}

struct Files<'a> {
    files: &'a [FileEntry],
    source: Source<'a>,
}

impl Serialize for Files<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(source) = self.source else {
            return serializer.collect_seq(self.files);
        };
        let mut seq = serializer.serialize_seq(Some(self.files.len()))?;
        for (index, file) in self.files.iter().enumerate() {
            // One file's list at a time: a relation segment is at most 1 GiB of blocks.
            let mut entry = file.clone();
            entry.blocks.clear();
            source
                .borrow_mut()
                .file_blocks(index, &mut entry.blocks)
                .map_err(S::Error::custom)?;
            seq.serialize_element(&entry)?;
        }
        seq.end()
    }
}

struct Bundle<'a> {
    bundle: &'a [ChunkRef],
    source: Source<'a>,
}

impl Serialize for Bundle<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Some(source) = self.source else {
            return serializer.collect_seq(self.bundle);
        };
        let mut chunks = Vec::new();
        source
            .borrow_mut()
            .bundle(&mut chunks)
            .map_err(S::Error::custom)?;
        serializer.collect_seq(&chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StorageExt;
    use crate::manifest::put_manifest;

    /// The sample with every field a reader takes as optional set to something not its default.
    fn full_sample() -> BackupManifest {
        let mut m = crate::manifest::tests::sample();
        m.source = crate::BackupSource::Standby;
        m.tablespaces = vec![Tablespace {
            oid: 16385,
            name: "a b".into(),
            location: "/mnt/a b".into(),
        }];
        m
    }

    /// Hands out the lists of the manifest it was made from, as a spool would.
    struct Lists {
        files: Vec<Vec<ChunkRef>>,
        bundle: Vec<ChunkRef>,
        fail_at: Option<usize>,
    }

    impl Lists {
        fn taken_from(m: &mut BackupManifest) -> Lists {
            Lists {
                files: m
                    .files
                    .iter_mut()
                    .map(|f| std::mem::take(&mut f.blocks))
                    .collect(),
                bundle: std::mem::take(&mut m.bundle),
                fail_at: None,
            }
        }
    }

    impl BlockSource for Lists {
        fn file_blocks(&mut self, index: usize, blocks: &mut Vec<ChunkRef>) -> Result<(), String> {
            if self.fail_at == Some(index) {
                return Err(format!("file {index}: the spool could not be read"));
            }
            blocks.extend_from_slice(self.files.get(index).ok_or("no such file")?);
            Ok(())
        }

        fn bundle(&mut self, chunks: &mut Vec<ChunkRef>) -> Result<(), String> {
            chunks.extend_from_slice(&self.bundle);
            Ok(())
        }

        fn file_count(&self) -> usize {
            self.files.len()
        }
    }

    #[test]
    fn a_manifest_reads_back_as_written_with_its_optional_fields_set_or_left_out() {
        let m = full_sample();
        let json = m.to_json();
        assert_eq!(BackupManifest::from_json("k", &json).expect("parses"), m);

        let mut bare = m.clone();
        bare.tablespace_map = None;
        bare.tablespaces.clear();
        bare.row_estimates.clear();
        let json = String::from_utf8(bare.to_json()).expect("UTF-8");
        for left_out in ["tablespace_map", "tablespaces", "row_estimates"] {
            assert!(!json.contains(left_out), "{left_out} written empty: {json}");
        }
        assert_eq!(
            BackupManifest::from_json("k", json.as_bytes()).expect("parses"),
            bare
        );
    }

    #[tokio::test]
    async fn lists_from_a_source_store_the_very_manifest_that_holding_them_stores() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::LocalStorage::open(dir.path()).expect("open");
        let m = full_sample();
        let held = put_manifest(&store, "held", &m, crate::PutMode::Create)
            .await
            .expect("stored");
        let mut stripped = m.clone();
        let lists = Lists::taken_from(&mut stripped);
        assert!(stripped.files.iter().all(|f| f.blocks.is_empty()));
        let from_source = put_manifest_with_lists(
            &store,
            "from-source",
            stripped,
            Box::new(lists),
            dir.path(),
            crate::PutMode::Create,
        )
        .await
        .expect("stored");
        assert_eq!(held, from_source);
        assert_eq!(
            store.get_bytes("held").await.expect("read"),
            store.get_bytes("from-source").await.expect("read")
        );
    }

    #[tokio::test]
    async fn a_source_that_fails_stores_nothing_and_says_why() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::LocalStorage::open(dir.path()).expect("open");
        let mut m = full_sample();
        let mut lists = Lists::taken_from(&mut m);
        lists.fail_at = Some(2);
        let err = put_manifest_with_lists(
            &store,
            "m",
            m,
            Box::new(lists),
            dir.path(),
            crate::PutMode::Create,
        )
        .await
        .expect_err("refused");
        let why = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            err.to_string().contains(&dir.path().display().to_string())
                && why
                    .as_deref()
                    .is_some_and(|w| w.contains("file 2: the spool could not be read")),
            "{err}: {why:?}"
        );
        assert!(!store.exists("m").await.expect("exists"));
    }

    #[tokio::test]
    async fn lists_for_more_or_fewer_files_than_the_manifest_store_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::LocalStorage::open(dir.path()).expect("open");
        let mut m = full_sample();
        let lists = Lists::taken_from(&mut m);
        for files in [m.files.len() - 1, m.files.len() + 1] {
            let mut lists = Lists {
                files: lists.files.clone(),
                bundle: lists.bundle.clone(),
                fail_at: None,
            };
            lists.files.resize(files, Vec::new());
            let err = put_manifest_with_lists(
                &store,
                "m",
                m.clone(),
                Box::new(lists),
                dir.path(),
                crate::PutMode::Create,
            )
            .await
            .expect_err("refused");
            assert!(err.to_string().contains("block lists for"), "{err}");
            assert!(!store.exists("m").await.expect("exists"));
        }
    }
}
