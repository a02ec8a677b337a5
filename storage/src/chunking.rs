//! How data is cut into chunks before it is stored, so that unchanged data is stored once.
//!
//! - Relation files (tables, indexes) change in place, page by page: they are cut into fixed,
//!   page-aligned blocks, so an update rewrites only the blocks whose pages changed.
//! - Streams (the pack of small files, dumps, RDB, AOF) shift when bytes are inserted: they are
//!   cut by content (FastCDC), so an insertion changes only the chunks around it.
//!
//! A chunk is stored under the blake3 of its plaintext; the same bytes always get the same key.

use std::io::Read;

/// PostgreSQL's page size: relation blocks must be a multiple of it.
pub const PAGE_SIZE: usize = 8192;
/// Default block size for relation files: 256 KiB balances dedup granularity against the
/// number of objects (a 1.35 GiB cluster becomes about 5,500 chunks).
pub const DEFAULT_BLOCK_SIZE: usize = 256 << 10;
/// Content-defined chunk sizes for streams.
pub const CDC_MIN: u32 = 64 << 10;
pub const CDC_AVG: u32 = 256 << 10;
pub const CDC_MAX: u32 = 1 << 20;

/// Check a configured block size: a positive multiple of the page size, at most 16 MiB.
pub fn validate_block_size(size: usize) -> Result<usize, String> {
    if size == 0 || !size.is_multiple_of(PAGE_SIZE) || size > 16 << 20 {
        return Err(format!(
            "block size {size} is not a multiple of {PAGE_SIZE} between {PAGE_SIZE} and 16 MiB"
        ));
    }
    Ok(size)
}

/// Cut a stream into content-defined chunks; each item is one chunk's bytes.
pub fn content_defined_chunks<R: Read>(
    reader: R,
) -> impl Iterator<Item = Result<Vec<u8>, std::io::Error>> {
    fastcdc::v2020::StreamCDC::new(reader, CDC_MIN, CDC_AVG, CDC_MAX).map(|chunk| {
        chunk.map(|c| c.data).map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

/// Read one fixed block (or the short tail of a file); an empty vector means end of file.
pub fn read_block<R: Read>(reader: &mut R, block_size: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut block = Vec::with_capacity(block_size);
    reader.take(block_size as u64).read_to_end(&mut block)?;
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn chunk_hashes(data: &[u8]) -> Vec<blake3::Hash> {
        content_defined_chunks(data)
            .map(|c| blake3::hash(&c.expect("chunk")))
            .collect()
    }

    #[test]
    fn chunks_reassemble_and_respect_bounds() {
        let data = pseudo_random(5 << 20, 42);
        let chunks: Vec<Vec<u8>> = content_defined_chunks(&data[..])
            .map(|c| c.expect("chunk"))
            .collect();
        assert_eq!(chunks.concat(), data);
        for chunk in &chunks[..chunks.len() - 1] {
            assert!(chunk.len() >= CDC_MIN as usize && chunk.len() <= CDC_MAX as usize);
        }
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(8 << 20, 7);
        let mut shifted = data[..3 << 20].to_vec();
        shifted.extend_from_slice(b"a few inserted bytes");
        shifted.extend_from_slice(&data[3 << 20..]);
        let before = chunk_hashes(&data);
        let after = chunk_hashes(&shifted);
        let shared = after.iter().filter(|h| before.contains(h)).count();
        assert!(
            shared + 3 >= before.len(),
            "only {shared} of {} chunks shared",
            before.len()
        );
    }

    #[test]
    fn fixed_blocks_cover_the_file() {
        let data = pseudo_random(3 * PAGE_SIZE + 100, 1);
        let mut reader = &data[..];
        let mut blocks = Vec::new();
        loop {
            let block = read_block(&mut reader, 2 * PAGE_SIZE).expect("read");
            if block.is_empty() {
                break;
            }
            blocks.push(block);
        }
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks.concat(), data);
        assert!(validate_block_size(1000).is_err());
        assert!(validate_block_size(0).is_err());
        assert_eq!(
            validate_block_size(DEFAULT_BLOCK_SIZE),
            Ok(DEFAULT_BLOCK_SIZE)
        );
    }
}
