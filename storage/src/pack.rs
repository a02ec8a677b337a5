//! Pack objects: many chunks in one repository object, so that a backup of thousands of
//! chunks writes a few dozen objects (cheap on a filesystem, and on S3 where every request
//! costs).
//!
//! ```text
//! [chunk object]…      each a complete framed object (header + payload), see `object`
//! [index object]       a framed object holding the JSON list of (hash, offset, len)
//! u64 LE               length of the index object
//! "LLPK"               magic
//! ```
//!
//! Manifests record each chunk's pack, offset and stored length, so a restore reads exactly
//! the bytes it needs; the trailing index makes a pack readable on its own (verification,
//! pruning). A pack is named by the blake3 of its bytes.

use serde::{Deserialize, Serialize};

use crate::{ChunkHash, ChunkIds, Compression, PackId, StorageError, object};

const MAGIC: &[u8; 4] = b"LLPK";
const TRAILER_LEN: usize = 12;
/// Seal a pack once it holds this many bytes.
pub const DEFAULT_PACK_TARGET: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    pub hash: ChunkHash,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Default)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack, ready to store under `layout::pack_key(&id)`.
#[derive(Debug)]
pub struct SealedPack {
    pub id: PackId,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new() -> Self {
        PackBuilder::default()
    }

    /// A builder whose buffer holds `bytes` without growing: a pack filled to
    /// [`DEFAULT_PACK_TARGET`] and sealed in place is never copied to a larger buffer (growing
    /// by doubling would copy it and reserve twice its size).
    pub fn with_capacity(bytes: usize) -> Self {
        PackBuilder {
            bytes: Vec::with_capacity(bytes),
            entries: Vec::new(),
        }
    }

    /// Append one framed chunk; returns its offset in the pack.
    pub fn add(&mut self, hash: ChunkHash, framed: &[u8]) -> u64 {
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(framed);
        self.entries.push(PackEntry {
            hash,
            offset,
            len: framed.len() as u64,
        });
        offset
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Finish the pack; `ids` names it (keyed in an encrypted repository).
    pub fn seal(mut self, ids: &ChunkIds) -> Result<SealedPack, StorageError> {
        let index = serde_json::to_vec(&self.entries).expect("pack index serializes");
        let (_, framed) = object::encode(&index, Compression::default())?;
        self.bytes.extend_from_slice(&framed);
        self.bytes
            .extend_from_slice(&(framed.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(MAGIC);
        let id = PackId::from(ids.of(&self.bytes));
        Ok(SealedPack {
            id,
            bytes: self.bytes,
            entries: self.entries,
        })
    }
}

/// Decode the framed chunk `id` (of `len` bytes) read from the pack `key`, and prove it is the
/// chunk a manifest meant: the frame's checksum verified the bytes, its id names them.
pub fn open_chunk(
    key: &str,
    framed: &[u8],
    ids: &ChunkIds,
    id: &ChunkHash,
    len: u64,
) -> Result<Vec<u8>, StorageError> {
    let name = format!("chunk {id} in {key}");
    let (header, plain) = object::decode_with_header(&name, framed)?;
    if plain.len() as u64 != len || ChunkHash::from(ids.of_checksum(header.checksum)) != *id {
        return Err(StorageError::Corrupt {
            key: name,
            reason: "content does not match the chunk the manifest names".into(),
        });
    }
    Ok(plain)
}

/// Read the index at the end of a whole pack.
pub fn read_index(key: &str, pack: &[u8]) -> Result<Vec<PackEntry>, StorageError> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if pack.len() < TRAILER_LEN || &pack[pack.len() - 4..] != MAGIC {
        return Err(corrupt(
            "no pack trailer: the pack is truncated or not a pack",
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&pack[pack.len() - TRAILER_LEN..pack.len() - 4]);
    let index_len = u64::from_le_bytes(len);
    let body_end = (pack.len() - TRAILER_LEN) as u64;
    if index_len > body_end {
        return Err(corrupt("pack index length is out of range"));
    }
    let start = (body_end - index_len) as usize;
    let index = object::decode(key, &pack[start..body_end as usize])?;
    let entries: Vec<PackEntry> = serde_json::from_slice(&index)
        .map_err(|e| corrupt(&format!("pack index does not parse: {e}")))?;
    if entries
        .iter()
        .any(|e| e.offset.saturating_add(e.len) > start as u64)
    {
        return Err(corrupt("pack index points past the chunks"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2_000)) {
            let mut with_trailer = bytes.clone();
            with_trailer.extend_from_slice(&(bytes.len() as u64 / 2).to_le_bytes());
            with_trailer.extend_from_slice(MAGIC);
            let _ = read_index("p", &bytes);
            let _ = read_index("p", &with_trailer);
        }
    }

    #[test]
    fn sealed_packs_index_their_chunks() {
        let mut builder = PackBuilder::new();
        let mut chunks = Vec::new();
        for i in 0..5u8 {
            let plain = vec![i; 1000 * (i as usize + 1)];
            let (header, framed) = object::encode(&plain, Compression::default()).expect("encode");
            let offset = builder.add(header.checksum.into(), &framed);
            chunks.push((plain, offset, framed.len()));
        }
        let sealed = builder.seal(&ChunkIds::plain()).expect("seal");
        assert_eq!(sealed.id, PackId::from(object::checksum(&sealed.bytes)));
        let index = read_index("p", &sealed.bytes).expect("index");
        assert_eq!(index, sealed.entries);
        for (plain, offset, len) in chunks {
            let slice = &sealed.bytes[offset as usize..offset as usize + len];
            assert_eq!(object::decode("c", slice).expect("decode"), plain);
        }
        assert!(read_index("p", &sealed.bytes[..sealed.bytes.len() - 1]).is_err());
        assert!(read_index("p", b"LLPK").is_err());
    }
}
