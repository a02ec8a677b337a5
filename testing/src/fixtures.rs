//! Repository contents built by hand, for tests that need a backup without taking one.

use storage::manifest::ChunkRef;
use storage::pack::PackBuilder;
use storage::{Compression, Durability, PutMode, Storage, layout, object};

/// Store `chunks` (plaintext) as one pack in `storage`, durably, and return their references,
/// in order, as a manifest would name them.
pub async fn store_pack<C: AsRef<[u8]>>(storage: &dyn Storage, chunks: &[C]) -> Vec<ChunkRef> {
    let mut builder = PackBuilder::new();
    let mut pending = Vec::new();
    for data in chunks {
        let data = data.as_ref();
        let hash = object::checksum(data).to_hex().to_string();
        let (_, framed) = object::encode(data, Compression::default()).expect("encode a chunk");
        let offset = builder.add(hash.clone(), &framed);
        pending.push((hash, data.len() as u64, offset, framed.len() as u64));
    }
    let pack = builder.seal().expect("seal the pack");
    storage
        .put_bytes(
            &layout::pack_key(&pack.id),
            pack.bytes,
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .expect("store the pack");
    pending
        .into_iter()
        .map(|(hash, len, offset, stored)| ChunkRef {
            hash,
            len,
            pack: pack.id.clone(),
            offset,
            stored,
        })
        .collect()
}
