//! The framed object format: every object in the repository describes itself.
//!
//! ```text
//! offset size  field
//!      0    4  magic "LLOB"
//!      4    1  format version (1)
//!      5    1  codec: 0 none, 1 zstd, 2 gzip
//!      6    2  reserved, zero
//!      8    8  plaintext length, little endian
//!     16   32  blake3 of the plaintext
//!     48    …  payload: the plaintext encoded with the codec
//! ```
//!
//! The checksum covers the plaintext, so a chunk's key (its blake3) and its header agree, and a
//! re-pushed WAL file can be compared with the archived one by reading 48 bytes. Decoding always
//! re-hashes: nothing read from the repository is used unverified.

use std::io::{Read, Write};

use crate::StorageError;
use crate::tuning::{ChunkTuning, Setting};

pub const HEADER_LEN: usize = 48;
const MAGIC: &[u8; 4] = b"LLOB";
const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    None,
    Zstd,
    Gzip,
}

impl Codec {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
            Codec::Gzip => 2,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Gzip),
            _ => None,
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Codec::None),
            "zstd" | "zst" => Ok(Codec::Zstd),
            "gzip" | "gz" => Ok(Codec::Gzip),
            other => Err(format!(
                "unknown compression {other:?}: use zstd, gzip or none"
            )),
        }
    }
}

/// How to encode new objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    /// zstd 1..=19, gzip 0..=9; ignored for `none`.
    pub level: i32,
    /// Threads compressing one large object (a WAL segment: `encode_file_in_parts`, or zstd's
    /// own workers in `encode_reader`); 0 compresses on the caller's thread.
    pub workers: u32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            codec: Codec::Zstd,
            level: 3,
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub codec: Codec,
    pub plain_len: u64,
    pub checksum: blake3::Hash,
}

impl ObjectHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = self.codec.to_byte();
        out[8..16].copy_from_slice(&self.plain_len.to_le_bytes());
        out[16..48].copy_from_slice(self.checksum.as_bytes());
        out
    }

    /// Parse the first bytes of an object; `key` names it in the error.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<Self, StorageError> {
        let corrupt = |reason: &str| StorageError::Corrupt {
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let Some(header) = bytes.get(..HEADER_LEN) else {
            return Err(corrupt("shorter than the object header"));
        };
        if &header[0..4] != MAGIC {
            return Err(corrupt("bad magic: not a lifeline object"));
        }
        if header[4] != VERSION {
            return Err(corrupt(&format!(
                "format version {} is not supported by this lifeline; upgrade lifeline",
                header[4]
            )));
        }
        let codec = Codec::from_byte(header[5]).ok_or_else(|| corrupt("unknown codec"))?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&header[8..16]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&header[16..48]);
        Ok(ObjectHeader {
            codec,
            plain_len: u64::from_le_bytes(len),
            checksum: blake3::Hash::from_bytes(hash),
        })
    }
}

/// Hash of the plaintext, the way object headers and chunk keys use it.
pub fn checksum(plain: &[u8]) -> blake3::Hash {
    blake3::hash(plain)
}

/// Frame `plain` into a complete object (header + encoded payload).
pub fn encode(
    plain: &[u8],
    compression: Compression,
) -> Result<(ObjectHeader, Vec<u8>), StorageError> {
    encode_with_checksum(plain, checksum(plain), compression)
}

/// As [`encode`], when the caller already hashed the plaintext.
pub fn encode_with_checksum(
    plain: &[u8],
    hash: blake3::Hash,
    compression: Compression,
) -> Result<(ObjectHeader, Vec<u8>), StorageError> {
    let encode_error = |e: std::io::Error| StorageError::Corrupt {
        key: "(new object)".into(),
        reason: format!("cannot encode: {e}"),
    };
    // The hot path (every backup chunk): one-shot zstd with this thread's reused context.
    // Everything else streams through the same code as a WAL segment.
    if compression.codec != Codec::Zstd || compression.workers > 0 {
        return encode_reader(plain, plain.len() as u64, compression).map_err(encode_error);
    }
    let header = ObjectHeader {
        codec: compression.codec,
        plain_len: plain.len() as u64,
        checksum: hash,
    };
    let payload =
        compress_zstd(plain, compression.level, Setting::Configured).map_err(encode_error)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&payload);
    Ok((header, out))
}

/// As [`encode_with_checksum`] for a backup's chunk: compressed with its file's current zstd
/// setting, or, for a sample, with each setting, keeping the smallest and making it the file's
/// choice ([`crate::tuning`]). Other codecs ignore the tuning.
pub fn encode_tuned(
    plain: &[u8],
    hash: blake3::Hash,
    compression: Compression,
    tuning: &ChunkTuning,
) -> Result<(ObjectHeader, Vec<u8>), StorageError> {
    if compression.codec != Codec::Zstd || compression.workers > 0 {
        return encode_with_checksum(plain, hash, compression);
    }
    let encode_error = |e: std::io::Error| StorageError::Corrupt {
        key: "(new chunk)".into(),
        reason: format!("cannot encode: {e}"),
    };
    let payload = if tuning.sample {
        let (setting, payload) =
            smallest(plain, compression.level, &Setting::ALL).map_err(encode_error)?;
        tuning.choice.set(setting);
        payload
    } else {
        compress_zstd(plain, compression.level, tuning.choice.current()).map_err(encode_error)?
    };
    let header = ObjectHeader {
        codec: compression.codec,
        plain_len: plain.len() as u64,
        checksum: hash,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&payload);
    Ok((header, out))
}

/// Where a streamed encode puts the framed object: memory, or a file for an object (a large
/// manifest) that is not to be held. The header's place is written first and filled last.
trait Framed: Write {
    /// Bytes written so far, the header's place included.
    fn written(&self) -> u64;

    /// Put `header` in its place at the start.
    fn put_header(&mut self, header: &[u8; HEADER_LEN]) -> std::io::Result<()>;
}

impl Framed for Vec<u8> {
    fn written(&self) -> u64 {
        self.len() as u64
    }

    fn put_header(&mut self, header: &[u8; HEADER_LEN]) -> std::io::Result<()> {
        match self.get_mut(..HEADER_LEN) {
            Some(place) => {
                place.copy_from_slice(header);
                Ok(())
            }
            None => Err(std::io::Error::other(
                "the header's place was never written",
            )),
        }
    }
}

/// A framed object in a file of its own, written through a buffer.
struct FramedFile {
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
}

impl FramedFile {
    fn new(file: std::fs::File) -> std::io::Result<FramedFile> {
        let mut framed = FramedFile {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            written: 0,
        };
        framed.write_all(&[0; HEADER_LEN])?;
        Ok(framed)
    }

    /// The file, flushed and rewound: the object from its first byte, ready to be stored.
    fn into_file(self) -> std::io::Result<std::fs::File> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        std::io::Seek::rewind(&mut file)?;
        Ok(file)
    }
}

impl Write for FramedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Framed for FramedFile {
    fn written(&self) -> u64 {
        self.written
    }

    fn put_header(&mut self, header: &[u8; HEADER_LEN]) -> std::io::Result<()> {
        self.out.flush()?;
        std::os::unix::fs::FileExt::write_all_at(self.out.get_ref(), header, 0)
    }
}

/// Where a streamed encode writes its payload.
enum Sink<O: Framed> {
    Plain(O),
    Zstd(zstd::stream::Encoder<'static, O>),
    Gzip(flate2::write::GzEncoder<O>),
}

impl<O: Framed> Sink<O> {
    fn new(out: O, compression: Compression) -> std::io::Result<Sink<O>> {
        Ok(match compression.codec {
            Codec::None => Sink::Plain(out),
            Codec::Zstd => {
                let mut encoder = zstd::stream::Encoder::new(out, compression.level)?;
                if compression.workers > 0 {
                    encoder.multithread(compression.workers)?;
                    // 1 MiB jobs keep both workers busy from the first MiB and touch the least
                    // fresh memory, which a short-lived process pays for page by page (measured
                    // when `wal push` used them: 20-25 % faster than 4 MiB jobs, output within
                    // 1 %).
                    encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(1 << 20))?;
                }
                Sink::Zstd(encoder)
            }
            Codec::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(compression.level.clamp(0, 9) as u32),
            )),
        })
    }

    fn write_all(&mut self, piece: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Plain(out) => out.write_all(piece),
            Sink::Zstd(encoder) => encoder.write_all(piece),
            Sink::Gzip(encoder) => encoder.write_all(piece),
        }
    }

    /// Payload bytes written out so far (the compressor holds back what it has not finished).
    fn stored(&self) -> u64 {
        let out = match self {
            Sink::Plain(out) => out,
            Sink::Zstd(encoder) => encoder.get_ref(),
            Sink::Gzip(encoder) => encoder.get_ref(),
        };
        out.written().saturating_sub(HEADER_LEN as u64)
    }

    fn finish(self) -> std::io::Result<O> {
        match self {
            Sink::Plain(out) => Ok(out),
            Sink::Zstd(encoder) => encoder.finish(),
            Sink::Gzip(encoder) => encoder.finish(),
        }
    }
}

/// Frame everything `reader` yields, hashing each piece while zstd's workers compress the
/// previous ones: reading, hashing and compressing overlap, and the plaintext is never held
/// whole. `size_hint` sizes the output buffer.
pub fn encode_reader<R: Read>(
    mut reader: R,
    size_hint: u64,
    compression: Compression,
) -> std::io::Result<(ObjectHeader, Vec<u8>)> {
    let mut writer = ObjectWriter::new((size_hint / 4) as usize, compression)?;
    let mut piece = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&piece[..n])?;
    }
    writer.finish()
}

/// Ranges smaller than this are not split further: one thread encodes them about as fast.
const MIN_PART: u64 = 1 << 20;
/// What a thread of `encode_file_in_parts` reads at a time: small enough to stay in its cache
/// from the read through the hash to the compressor.
const PIECE_LEN: usize = 256 << 10;

/// Encode the whole of `file` (`size` bytes: a WAL segment) as one object on up to
/// `compression.workers` threads, each reading, hashing and compressing its own range.
///
/// The ranges are subtrees of the file's BLAKE3 tree, so their chaining values merge into the
/// file's checksum, and each is one zstd frame: concatenated frames decode as one stream. With
/// zstd's own workers one thread read and hashed the whole file and copied it into their job
/// buffers while they compressed ("`wal push` in halves", benches/README.md). A file that is not
/// `size` bytes throughout is an error ([`is_changed_size`]), never an object.
pub fn encode_file_in_parts(
    file: &std::fs::File,
    size: u64,
    compression: Compression,
) -> std::io::Result<(ObjectHeader, Vec<u8>)> {
    let parts = prev_power_of_two(u64::from(compression.workers).min(size / MIN_PART));
    if compression.codec != Codec::Zstd || parts < 2 {
        let mut whole = file;
        std::io::Seek::seek(&mut whole, std::io::SeekFrom::Start(0))?;
        let (header, out) = encode_reader(whole, size, compression)?;
        if header.plain_len != size {
            return Err(changed_size());
        }
        return Ok((header, out));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + estimated_frames_len(size));
    out.resize(HEADER_LEN, 0);
    let part = Part {
        file,
        level: compression.level,
    };
    let (left, right) = part.encode_halves(0, size, parts, &mut out)?;
    check_no_more(file, size)?;
    let header = ObjectHeader {
        codec: Codec::Zstd,
        plain_len: size,
        checksum: blake3::hazmat::merge_subtrees_root(&left, &right, blake3::hazmat::Mode::Hash),
    };
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok((header, out))
}

/// What to reserve for the frames of `len` bytes: a segment compresses 4 to 30 times, and a Vec
/// that must grow past it is remapped, not copied.
fn estimated_frames_len(len: u64) -> usize {
    usize::try_from(len / 4).unwrap_or(usize::MAX)
}

fn prev_power_of_two(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 << n.ilog2() }
}

type ChainingValue = blake3::hazmat::ChainingValue;

/// What every range of a file encoded in parts shares.
#[derive(Clone, Copy)]
struct Part<'a> {
    file: &'a std::fs::File,
    level: i32,
}

impl Part<'_> {
    /// The two child subtrees of the range `offset..offset + len`, on two threads (each split
    /// further while `parts` allows), their frames appended to `out` in order.
    fn encode_halves(
        self,
        offset: u64,
        len: u64,
        parts: u64,
        out: &mut Vec<u8>,
    ) -> std::io::Result<(ChainingValue, ChainingValue)> {
        let left_len = blake3::hazmat::left_subtree_len(len);
        let right_len = len - left_len;
        let encode_right = move || {
            let mut frames = Vec::with_capacity(estimated_frames_len(right_len));
            self.encode_subtree(offset + left_len, right_len, parts / 2, &mut frames)
                .map(|cv| (cv, frames))
        };
        let (left, right) = std::thread::scope(|scope| {
            // Without a thread (a process limit), the right half waits for the left one.
            let spawned = std::thread::Builder::new().spawn_scoped(scope, encode_right);
            let left = self.encode_subtree(offset, left_len, parts / 2, out);
            let right = match spawned {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(std::io::Error::other("a compression thread panicked"))
                }),
                Err(_) => encode_right(),
            };
            (left, right)
        });
        let (right, frames) = right?;
        out.extend_from_slice(&frames);
        Ok((left?, right))
    }

    fn encode_subtree(
        self,
        offset: u64,
        len: u64,
        parts: u64,
        out: &mut Vec<u8>,
    ) -> std::io::Result<ChainingValue> {
        if parts < 2 || len <= MIN_PART {
            return self.encode_leaf(offset, len, out);
        }
        let (left, right) = self.encode_halves(offset, len, parts, out)?;
        Ok(blake3::hazmat::merge_subtrees_non_root(
            &left,
            &right,
            blake3::hazmat::Mode::Hash,
        ))
    }

    /// One range read piece by piece, each piece hashed (as part of the range's subtree) and
    /// compressed while it is in cache; the range is one zstd frame appended to `out`, with the
    /// setting that stores its first piece smallest ([`Setting::FOR_WAL`]).
    fn encode_leaf(
        self,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> std::io::Result<ChainingValue> {
        use blake3::hazmat::HasherExt;
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(offset);
        let mut piece = vec![0u8; PIECE_LEN];
        let mut n = self.read_piece(&mut piece, offset, len)?;
        let setting = smallest_setting(&piece[..n], self.level, &Setting::FOR_WAL)?;
        let mut encoder = stream_encoder(out, self.level, setting)?;
        encoder.set_pledged_src_size(Some(len))?;
        let mut done = 0;
        loop {
            hasher.update(&piece[..n]);
            encoder.write_all(&piece[..n])?;
            done += n as u64;
            if done >= len {
                break;
            }
            n = self.read_piece(&mut piece, offset + done, len - done)?;
        }
        encoder.finish()?;
        Ok(hasher.finalize_non_root())
    }

    /// Read the next piece at `offset` of a range with `left` bytes still to read; returns its
    /// length. Short means the file shrank since its size was taken.
    fn read_piece(self, piece: &mut [u8], offset: u64, left: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = usize::try_from(left).map_or(piece.len(), |left| left.min(piece.len()));
        self.file
            .read_exact_at(&mut piece[..n], offset)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => changed_size(),
                _ => e,
            })?;
        Ok(n)
    }
}

fn check_no_more(file: &std::fs::File, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    match file.read_at(&mut [0u8; 1], size)? {
        0 => Ok(()),
        _ => Err(changed_size()),
    }
}

/// The error `encode_file_in_parts` returns for a file that grew or shrank while it was read.
#[derive(Debug, thiserror::Error)]
#[error("the file changed size while it was read")]
struct ChangedSize;

fn changed_size() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, ChangedSize)
}

/// Whether `encode_file_in_parts` failed because the file changed size while it was read.
pub fn is_changed_size(error: &std::io::Error) -> bool {
    error.get_ref().is_some_and(|e| e.is::<ChangedSize>())
}

/// Frames what is written to it: hashed and encoded piece by piece, the plaintext never held
/// whole; the header goes in front once the last piece is in.
struct ObjectWriter<O: Framed = Vec<u8>> {
    sink: Sink<O>,
    hasher: blake3::Hasher,
    plain_len: u64,
    codec: Codec,
    /// The bound a reader of JSON holds the object to, and whether it was passed.
    bound: Option<JsonBound>,
    beyond_bound: bool,
}

impl ObjectWriter {
    fn new(size_hint: usize, compression: Compression) -> std::io::Result<ObjectWriter> {
        let mut out = Vec::with_capacity(HEADER_LEN + size_hint);
        out.resize(HEADER_LEN, 0);
        ObjectWriter::into(out, compression)
    }
}

impl<O: Framed> ObjectWriter<O> {
    /// A writer into `out`, whose first `HEADER_LEN` bytes are the header's place.
    fn into(out: O, compression: Compression) -> std::io::Result<ObjectWriter<O>> {
        Ok(ObjectWriter {
            sink: Sink::new(out, compression)?,
            hasher: blake3::Hasher::new(),
            plain_len: 0,
            codec: compression.codec,
            bound: None,
            beyond_bound: false,
        })
    }

    fn finish(self) -> std::io::Result<(ObjectHeader, O)> {
        let mut out = self.sink.finish()?;
        let header = ObjectHeader {
            codec: self.codec,
            plain_len: self.plain_len,
            checksum: self.hasher.finalize(),
        };
        out.put_header(&header.to_bytes())?;
        Ok((header, out))
    }
}

impl<O: Framed> Write for ObjectWriter<O> {
    fn write(&mut self, piece: &[u8]) -> std::io::Result<usize> {
        // A reader has decoded none of `piece` before it has read every byte stored before it:
        // judged with those bytes alone, the piece's end is where a reader is held tightest.
        let stored_before = self.sink.stored();
        self.sink.write_all(piece)?;
        self.hasher.update(piece);
        self.plain_len += piece.len() as u64;
        if let Some(bound) = self.bound
            && self.plain_len > bound.max_len(stored_before)
        {
            self.beyond_bound = true;
        }
        Ok(piece.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Frame `value` as JSON while it is serialized: a manifest of millions of chunks is never
/// held as text, only compressed.
pub fn encode_json<T: serde::Serialize>(
    value: &T,
    compression: Compression,
) -> Result<(ObjectHeader, Vec<u8>), StorageError> {
    encode_json_within(value, compression, JSON_BOUND, |c| {
        ObjectWriter::new(64 << 10, c)
    })
    .map_err(|e| StorageError::Corrupt {
        key: "(new object)".into(),
        reason: format!("cannot encode: {e}"),
    })
}

/// As [`encode_json`], into an unnamed file in `dir` rather than memory: the object is returned
/// as that file, rewound, to be stored as a stream. A full disk is named as this machine's, not the
/// repository's.
pub fn encode_json_to_file<T: serde::Serialize>(
    value: &T,
    compression: Compression,
    dir: &std::path::Path,
) -> Result<(ObjectHeader, std::fs::File), StorageError> {
    let scratch = |source: std::io::Error| StorageError::Scratch {
        path: dir.to_path_buf(),
        source,
    };
    let (header, framed) = encode_json_within(value, compression, JSON_BOUND, |c| {
        ObjectWriter::into(FramedFile::new(tempfile::tempfile_in(dir)?)?, c)
    })
    .map_err(scratch)?;
    Ok((header, framed.into_file().map_err(scratch)?))
}

/// As [`encode_json`], for readers that hold the object to `bound`: JSON that compresses past
/// it (a manifest of TiBs of identical blocks) is stored plain, which any reader accepts,
/// rather than as an object every restore of it would refuse. `writer` makes the writer of
/// each attempt, for the compression given; the first attempt's is dropped before the second's
/// is made.
fn encode_json_within<T: serde::Serialize, O: Framed>(
    value: &T,
    compression: Compression,
    bound: JsonBound,
    writer: impl Fn(Compression) -> std::io::Result<ObjectWriter<O>>,
) -> std::io::Result<(ObjectHeader, O)> {
    let (header, framed, beyond_bound) = encode_json_once(value, writer(compression)?, bound)?;
    if !beyond_bound || compression.codec == Codec::None {
        return Ok((header, framed));
    }
    drop(framed);
    let plain = Compression {
        codec: Codec::None,
        ..compression
    };
    let (header, framed, _) = encode_json_once(value, writer(plain)?, bound)?;
    Ok((header, framed))
}

/// `value` framed as JSON by `writer`, and whether a reader holding it to `bound` would
/// refuse it.
fn encode_json_once<T: serde::Serialize, O: Framed>(
    value: &T,
    mut writer: ObjectWriter<O>,
    bound: JsonBound,
) -> std::io::Result<(ObjectHeader, O, bool)> {
    writer.bound = Some(bound);
    let mut buffered = std::io::BufWriter::with_capacity(64 << 10, writer);
    serde_json::to_writer(&mut buffered, value)?;
    let writer = buffered.into_inner().map_err(|e| e.into_error())?;
    let beyond_bound = writer.beyond_bound;
    let (header, framed) = writer.finish()?;
    Ok((header, framed, beyond_bound))
}

/// How much plaintext a JSON object (a manifest) may decode to for the bytes stored: up to
/// `floor` (1 GiB, the limit of every other object), and past it up to `ratio` times the stored
/// bytes. A manifest compresses about 4.4 times (its hashes do not compress at all), so a small
/// forged one cannot claim gigabytes of a single string for the parser to hold; the rare
/// genuine one that would compress further is stored plain ([`encode_json`]).
#[derive(Debug, Clone, Copy)]
struct JsonBound {
    floor: u64,
    ratio: u64,
}

const JSON_BOUND: JsonBound = JsonBound {
    floor: MAX_PLAIN_LEN,
    ratio: 64,
};

impl JsonBound {
    fn max_len(self, stored: u64) -> u64 {
        self.floor.max(stored.saturating_mul(self.ratio))
    }
}

fn max_json_len(payload_len: u64) -> u64 {
    JSON_BOUND.max_len(payload_len)
}

/// Parse the JSON an object holds while it is decoded, the plaintext never held whole, and
/// return it only once the whole plaintext has been read and verified against the header.
/// `key` names it in errors, `what` the JSON a parse error is about ("manifest").
pub fn decode_json<T: serde::de::DeserializeOwned>(
    key: &str,
    what: &str,
    object: &[u8],
) -> Result<T, StorageError> {
    let payload_len = object.len().saturating_sub(HEADER_LEN) as u64;
    plausible_header(key, object, max_json_len(payload_len))?;
    decode_json_from(key, what, object)
}

/// As [`decode_json`], reading the object from `object`: neither its stored bytes nor its
/// plaintext are held whole. Its length is not known beforehand, so the bound a header's
/// claim meets at once in [`decode_json`] is kept as it is read: past 1 GiB, no more plaintext
/// than 64 times the bytes read so far.
pub fn decode_json_from<T: serde::de::DeserializeOwned>(
    key: &str,
    what: &str,
    object: impl Read,
) -> Result<T, StorageError> {
    decode_json_within(key, what, object, JSON_BOUND)
}

/// As [`decode_json_from`], the JSON read through `seed` (a parse that hands each part of the
/// document to its caller as it goes rather than building all of it); returns the blake3 of
/// the JSON too, by which two reads of one object are known to have read the same document.
/// The seed sees the plaintext before it is verified: whatever it keeps of a failed read is
/// its caller's to discard.
pub fn decode_json_seeded<T, S>(
    key: &str,
    what: &str,
    object: impl Read,
    seed: S,
) -> Result<(T, blake3::Hash), StorageError>
where
    S: for<'de> serde::de::DeserializeSeed<'de, Value = T>,
{
    decode_json_parsed(key, what, object, JSON_BOUND, |json| {
        let mut de = serde_json::Deserializer::from_reader(json);
        let value = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    })
}

fn decode_json_within<T: serde::de::DeserializeOwned>(
    key: &str,
    what: &str,
    object: impl Read,
    bound: JsonBound,
) -> Result<T, StorageError> {
    let parse = |json: &mut dyn Read| serde_json::from_reader::<_, T>(json);
    decode_json_parsed(key, what, object, bound, parse).map(|(value, _)| value)
}

fn decode_json_parsed<T>(
    key: &str,
    what: &str,
    object: impl Read,
    bound: JsonBound,
    parse: impl FnOnce(&mut dyn Read) -> serde_json::Result<T>,
) -> Result<(T, blake3::Hash), StorageError> {
    let corrupt = |reason: String| corrupt(key, reason);
    let stored = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let mut object = Counted {
        inner: object,
        count: stored.clone(),
    };
    let mut head = Vec::with_capacity(HEADER_LEN);
    (&mut object)
        .take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| corrupt(format!("header does not read: {e}")))?;
    let header = ObjectHeader::parse(key, &head)?;
    let payload = object;
    let decoder: Box<dyn Read + '_> = match header.codec {
        Codec::None => Box::new(payload),
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::new(payload)
                .map_err(|e| corrupt(format!("payload does not decode: {e}")))?,
        ),
        Codec::Gzip => Box::new(flate2::read::GzDecoder::new(payload)),
    };
    // One byte more than claimed is enough to know the header lies.
    let mut reader = Verifying {
        inner: decoder.take(header.plain_len.saturating_add(1)),
        hasher: blake3::Hasher::new(),
        len: 0,
        stored,
        bound,
        failed: None,
    };
    let parsed = parse(&mut std::io::BufReader::with_capacity(
        64 << 10,
        &mut reader,
    ));
    // Whatever the parse made of it, the bytes are judged first: a damaged object is reported
    // as damaged, not as a parse error, and a parse is used only once the bytes are proven.
    let rest = std::io::copy(&mut reader, &mut std::io::sink());
    if let Some(e) = reader.failed.or(rest.err().map(|e| e.to_string())) {
        return Err(corrupt(format!("payload does not decode: {e}")));
    }
    if reader.len != header.plain_len {
        return Err(corrupt(format!(
            "decoded {} bytes, header says {}",
            reader.len, header.plain_len
        )));
    }
    if reader.hasher.finalize() != header.checksum {
        return Err(corrupt("blake3 checksum mismatch".into()));
    }
    let parsed = parsed.map_err(|e| corrupt(format!("{what} does not parse: {e}")))?;
    Ok((parsed, header.checksum))
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    count: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Counts and hashes the plaintext as the parser reads it, and stops it where it grows
/// implausibly past what was `stored`.
struct Verifying<R> {
    inner: R,
    hasher: blake3::Hasher,
    len: u64,
    stored: std::rc::Rc<std::cell::Cell<u64>>,
    bound: JsonBound,
    /// The first error decoding met, whoever was reading.
    failed: Option<String>,
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|e| {
            self.failed.get_or_insert_with(|| e.to_string());
        })?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        if self.len > self.bound.max_len(self.stored.get()) {
            let why = format!(
                "implausible length: {} bytes of plaintext from {} stored",
                self.len,
                self.stored.get()
            );
            self.failed.get_or_insert_with(|| why.clone());
            return Err(std::io::Error::other(why));
        }
        Ok(n)
    }
}

/// Length and blake3 of everything `reader` yields, read in 1 MiB pieces.
pub fn checksum_reader<R: Read>(mut reader: R) -> std::io::Result<(u64, blake3::Hash)> {
    let mut hasher = blake3::Hasher::new();
    let mut piece = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        match reader.read(&mut piece) {
            Ok(0) => return Ok((len, hasher.finalize())),
            Ok(n) => {
                hasher.update(&piece[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

thread_local! {
    // A zstd context holds megabytes of tables: allocating one per chunk costs more than the
    // compression itself, so each thread keeps one per setting.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, Setting, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The zstd level a setting starts from and the minimum match length it sets, if any.
fn zstd_parameters(level: i32, setting: Setting) -> (i32, Option<u32>) {
    match setting {
        Setting::Configured => (level, None),
        Setting::FastShortMatches => (1, Some(4)),
        Setting::Fast => (1, None),
    }
}

fn new_compressor(
    level: i32,
    setting: Setting,
) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let (level, min_match) = zstd_parameters(level, setting);
    let mut compressor = zstd::bulk::Compressor::new(level)?;
    if let Some(min_match) = min_match {
        compressor.set_parameter(zstd::zstd_safe::CParameter::MinMatch(min_match))?;
    }
    compressor.include_contentsize(true)?;
    Ok(compressor)
}

fn stream_encoder<W: Write>(
    out: W,
    level: i32,
    setting: Setting,
) -> std::io::Result<zstd::stream::Encoder<'static, W>> {
    let (level, min_match) = zstd_parameters(level, setting);
    let mut encoder = zstd::stream::Encoder::new(out, level)?;
    if let Some(min_match) = min_match {
        encoder.set_parameter(zstd::zstd_safe::CParameter::MinMatch(min_match))?;
    }
    Ok(encoder)
}

/// `plain` compressed with each of `settings` (the first wins ties): the smallest and its
/// setting.
fn smallest(plain: &[u8], level: i32, settings: &[Setting]) -> std::io::Result<(Setting, Vec<u8>)> {
    let mut best: Option<(Setting, Vec<u8>)> = None;
    for &setting in settings {
        let payload = compress_zstd(plain, level, setting)?;
        if best.as_ref().is_none_or(|(_, b)| payload.len() < b.len()) {
            best = Some((setting, payload));
        }
    }
    best.ok_or_else(|| std::io::Error::other("no zstd setting to compress with"))
}

/// Which of `settings` (the first wins ties) stores `sample`, the start of a longer stream, in
/// the fewest bytes. Streamed with no size given, as zstd then picks the parameters of a long
/// input, the stream's own: told 256 KiB, it picks those of a short one, which rank differently.
fn smallest_setting(sample: &[u8], level: i32, settings: &[Setting]) -> std::io::Result<Setting> {
    let mut best: Option<(Setting, usize)> = None;
    for &setting in settings {
        let mut encoder = stream_encoder(Vec::with_capacity(sample.len()), level, setting)?;
        encoder.write_all(sample)?;
        let len = encoder.finish()?.len();
        if best.is_none_or(|(_, b)| len < b) {
            best = Some((setting, len));
        }
    }
    best.map(|(setting, _)| setting)
        .ok_or_else(|| std::io::Error::other("no zstd setting to compress with"))
}

fn compress_zstd(plain: &[u8], level: i32, setting: Setting) -> std::io::Result<Vec<u8>> {
    COMPRESSORS.with(|cell| {
        let mut compressors = cell.borrow_mut();
        let found = compressors
            .iter()
            .position(|(l, s, _)| *l == level && *s == setting);
        let at = match found {
            Some(at) => at,
            None => {
                // A thread serves one repository's level: a new level replaces the old contexts.
                compressors.retain(|(l, _, _)| *l == level);
                compressors.push((level, setting, new_compressor(level, setting)?));
                compressors.len() - 1
            }
        };
        compressors[at].2.compress(plain)
    })
}

fn decompress_zstd(payload: &[u8], plain_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        let decompressor = slot.as_mut().expect("just set");
        decompressor.decompress(payload, plain_len)
    })
}

/// Largest plaintext a single object may claim (WAL segments go up to 1 GiB).
const MAX_PLAIN_LEN: u64 = 1 << 30;

fn corrupt(key: &str, reason: String) -> StorageError {
    StorageError::Corrupt {
        key: key.to_string(),
        reason,
    }
}

/// The header of `object`, which claims at most `max_len` bytes of plaintext.
fn plausible_header(key: &str, object: &[u8], max_len: u64) -> Result<ObjectHeader, StorageError> {
    let header = ObjectHeader::parse(key, object)?;
    if header.plain_len > max_len {
        return Err(corrupt(
            key,
            format!("header claims an implausible length {}", header.plain_len),
        ));
    }
    Ok(header)
}

/// Decode a whole object and verify it against its header. `key` names it in errors.
pub fn decode(key: &str, object: &[u8]) -> Result<Vec<u8>, StorageError> {
    decode_with_header(key, object).map(|(_, plain)| plain)
}

/// As [`decode`], with the header the plaintext was verified against.
pub fn decode_with_header(
    key: &str,
    object: &[u8],
) -> Result<(ObjectHeader, Vec<u8>), StorageError> {
    let header = plausible_header(key, object, MAX_PLAIN_LEN)?;
    let payload = &object[HEADER_LEN..];
    let corrupt = |reason: String| corrupt(key, reason);
    let limit = header.plain_len as usize;
    let plain = match header.codec {
        Codec::None => Ok(payload.to_vec()),
        // bulk decompression refuses output larger than `limit`, so a lying header cannot
        // make it allocate or write more.
        Codec::Zstd => decompress_zstd(payload, limit),
        Codec::Gzip => {
            let mut plain = Vec::with_capacity(limit.min(64 << 20));
            flate2::read::GzDecoder::new(payload)
                .take(header.plain_len.saturating_add(1))
                .read_to_end(&mut plain)
                .map(|_| plain)
        }
    };
    let plain = plain.map_err(|e| corrupt(format!("payload does not decode: {e}")))?;
    if plain.len() as u64 != header.plain_len {
        return Err(corrupt(format!(
            "decoded {} bytes, header says {}",
            plain.len(),
            header.plain_len
        )));
    }
    if checksum(&plain) != header.checksum {
        return Err(corrupt("blake3 checksum mismatch".into()));
    }
    Ok((header, plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_compressions() -> Vec<Compression> {
        vec![
            Compression {
                codec: Codec::None,
                level: 0,
                workers: 0,
            },
            Compression {
                codec: Codec::Zstd,
                level: 3,
                workers: 0,
            },
            Compression {
                codec: Codec::Zstd,
                level: 1,
                workers: 2,
            },
            Compression {
                codec: Codec::Gzip,
                level: 6,
                workers: 0,
            },
        ]
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
            for c in all_compressions() {
                let (header, object) = encode(&data, c).expect("encode");
                prop_assert_eq!(header.plain_len, data.len() as u64);
                prop_assert_eq!(ObjectHeader::parse("k", &object).expect("parse"), header);
                prop_assert_eq!(decode("k", &object).expect("decode"), data.clone());
            }
        }

        #[test]
        fn a_flipped_bit_never_yields_wrong_data(
            data in proptest::collection::vec(any::<u8>(), 1..5_000),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            for c in all_compressions() {
                let (_, mut object) = encode(&data, c).expect("encode");
                let i = pos.index(object.len());
                object[i] ^= 1 << bit;
                // Some bits carry no meaning (reserved header bytes, a gzip timestamp): those
                // may decode, but only ever to the original plaintext.
                if let Ok(plain) = decode("k", &object) {
                    prop_assert_eq!(plain, data.clone());
                }
            }
        }
    }

    #[test]
    fn streamed_encoding_matches_the_slice_encoding() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        for c in all_compressions() {
            let (header, framed) = encode_reader(&data[..], data.len() as u64, c).expect("encode");
            assert_eq!(header.checksum, checksum(&data));
            assert_eq!(decode("k", &framed).expect("decode"), data);
        }
    }

    fn zstd_frames(mut payload: &[u8]) -> usize {
        let mut frames = 0;
        while !payload.is_empty() {
            let len = zstd::zstd_safe::find_frame_compressed_size(payload).expect("a frame");
            payload = &payload[len..];
            frames += 1;
        }
        frames
    }

    #[test]
    fn a_file_encoded_in_parts_is_the_same_object_as_one_encoded_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A segment's size, sizes whose BLAKE3 subtrees are uneven, and one too small to split.
        for size in [16 << 20, (5 << 20) + 12_345, (2 << 20) + 1, 700_000] {
            let data: Vec<u8> = (0..size as u32)
                .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
                .collect();
            let path = dir.path().join("segment");
            std::fs::write(&path, &data).expect("write");
            let file = std::fs::File::open(&path).expect("open");
            for workers in [0, 2, 3, 4, 8] {
                let c = Compression {
                    codec: Codec::Zstd,
                    level: 3,
                    workers,
                };
                let (header, framed) = encode_file_in_parts(&file, size, c).expect("encode");
                assert_eq!(header.checksum, checksum(&data), "{size} bytes, {workers}");
                assert_eq!(header.plain_len, size);
                assert_eq!(ObjectHeader::parse("k", &framed).expect("parse"), header);
                assert_eq!(decode("k", &framed).expect("decode"), data);
                // Readers that stream (the manifest's) see the frames as one stream too.
                let mut streamed = Vec::new();
                zstd::stream::read::Decoder::with_buffer(&framed[HEADER_LEN..])
                    .expect("decoder")
                    .read_to_end(&mut streamed)
                    .expect("stream");
                assert_eq!(streamed, data, "{size} bytes, {workers} workers, streamed");
                // Split (one frame per part) exactly when there are threads and 2 MiB to share.
                let split = workers >= 2 && size >= 2 * MIN_PART;
                assert_eq!(
                    zstd_frames(&framed[HEADER_LEN..]) > 1,
                    split,
                    "{size}, {workers}"
                );
            }
        }
    }

    fn stream_len(data: &[u8], setting: Setting) -> usize {
        let mut encoder = stream_encoder(Vec::new(), 3, setting).expect("encoder");
        encoder
            .set_pledged_src_size(Some(data.len() as u64))
            .expect("size");
        encoder.write_all(data).expect("write");
        encoder.finish().expect("finish").len()
    }

    #[test]
    fn each_part_of_a_segment_takes_the_smaller_wal_setting() {
        // One half of 4-byte words drawn from 4096 (only 4-byte matches: fast with 4-byte
        // matches wins by a quarter), one half of long repeats (level 3 wins by a quarter).
        let mut state: u64 = 1;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u32
        };
        let words: Vec<u32> = (0..4096).map(|_| next()).collect();
        let half = 2 << 20;
        let short_matches: Vec<u8> = (0..half / 4)
            .flat_map(|_| words[(next() % 4096) as usize].to_le_bytes())
            .collect();
        let long_repeats: Vec<u8> = (0..half as u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let [configured, short] = Setting::FOR_WAL;
        let data = [short_matches.as_slice(), long_repeats.as_slice()].concat();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        std::fs::write(&path, &data).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let c = Compression {
            codec: Codec::Zstd,
            level: 3,
            workers: 2,
        };
        let (_, framed) = encode_file_in_parts(&file, data.len() as u64, c).expect("encode");
        assert_eq!(decode("k", &framed).expect("decode"), data);
        let first =
            zstd::zstd_safe::find_frame_compressed_size(&framed[HEADER_LEN..]).expect("a frame");
        let second = framed.len() - HEADER_LEN - first;
        let (short_fast, short_level) = (
            stream_len(&short_matches, short),
            stream_len(&short_matches, configured),
        );
        let (long_fast, long_level) = (
            stream_len(&long_repeats, short),
            stream_len(&long_repeats, configured),
        );
        assert!(short_fast < short_level && long_level < long_fast);
        assert_eq!((first, second), (short_fast, long_level));
    }

    #[test]
    fn a_file_longer_than_announced_is_refused_when_encoded_in_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        std::fs::write(&path, vec![7u8; (4 << 20) + 1]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let c = Compression {
            codec: Codec::Zstd,
            level: 3,
            workers: 2,
        };
        // In parts, and whole (one thread) as a file too small to split is.
        for workers in [2, 0] {
            let c = Compression { workers, ..c };
            let err = encode_file_in_parts(&file, 4 << 20, c).expect_err("grew");
            assert!(is_changed_size(&err), "{err}");
            let err = encode_file_in_parts(&file, 5 << 20, c).expect_err("shrank");
            assert!(is_changed_size(&err), "{err}");
        }
        let other = std::io::Error::other("disk on fire");
        assert!(!is_changed_size(&other));
    }

    /// A reader that hands over at most 7 bytes a read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn json_is_framed_and_read_back_without_its_text_held_whole() {
        let value: Vec<(String, u64)> = (0..20_000u64).map(|i| (format!("file {i}"), i)).collect();
        for c in all_compressions() {
            let (header, framed) = encode_json(&value, c).expect("encode");
            let text = serde_json::to_vec(&value).expect("json");
            assert_eq!(header.plain_len, text.len() as u64);
            assert_eq!(header.checksum, checksum(&text));
            assert_eq!(decode("k", &framed).expect("decode"), text);
            let back: Vec<(String, u64)> = decode_json("k", "test", &framed).expect("decode_json");
            assert_eq!(back, value);
            // Read as a stream hands it over: a few bytes at a time, the header's split too.
            let trickle = Trickle(&framed[..]);
            let back: Vec<(String, u64)> =
                decode_json_from("k", "test", trickle).expect("from a reader");
            assert_eq!(back, value);
            let cut = Trickle(&framed[..framed.len() - 1]);
            let err =
                decode_json_from::<Vec<(String, u64)>>("k", "test", cut).expect_err("cut short");
            assert!(!err.to_string().contains("does not parse"), "{err}");
            // Any flipped bit is refused or changes nothing; a damaged payload is reported as
            // damaged, not as a parse error.
            for at in [
                HEADER_LEN,
                HEADER_LEN + 100,
                framed.len() / 2,
                framed.len() - 1,
            ] {
                let mut damaged = framed.clone();
                damaged[at] ^= 0x10;
                match decode_json::<Vec<(String, u64)>>("k", "test", &damaged) {
                    Ok(back) => assert_eq!(back, value),
                    Err(e) => assert!(!e.to_string().contains("does not parse"), "{e}"),
                }
            }
            for len in [0, HEADER_LEN, framed.len() - 1] {
                assert!(decode_json::<Vec<(String, u64)>>("k", "test", &framed[..len]).is_err());
            }
        }
        // Text that is whole and verified but not the JSON asked for is a parse error.
        let (_, framed) = encode(b"not json", Compression::default()).expect("encode");
        let err = decode_json::<Vec<u64>>("k", "test", &framed).expect_err("not json");
        assert!(err.to_string().contains("does not parse"), "{err}");
        // A header claiming less (or more) than the payload holds is refused.
        let (mut header, framed) = encode(b"[1,2,3]", Compression::default()).expect("encode");
        for claimed in [6, 8] {
            header.plain_len = claimed;
            let mut lying = framed.clone();
            lying[..HEADER_LEN].copy_from_slice(&header.to_bytes());
            let err = decode_json::<Vec<u64>>("k", "test", &lying).expect_err("lying length");
            assert!(err.to_string().contains("header says"), "{err}");
        }
        // Past 1 GiB, only as much as the payload could hold: a small object cannot make the
        // parser hold gigabytes.
        header.plain_len = 2 << 30;
        let mut bomb = framed.clone();
        bomb[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        let err = decode_json::<Vec<u64>>("k", "test", &bomb).expect_err("implausible");
        assert!(err.to_string().contains("implausible length"), "{err}");
        assert_eq!(max_json_len(100 << 20), 6400 << 20);
        // Read as a stream, a claim of the largest length is refused, not an overflow.
        header.plain_len = u64::MAX;
        bomb[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        let err = decode_json_from::<Vec<u64>>("k", "test", &bomb[..]).expect_err("u64::MAX");
        assert!(err.to_string().contains("header says"), "{err}");
    }

    /// Read as a stream, whose length is not known beforehand, a bomb is stopped as it grows:
    /// a zstd frame of run-length blocks that decodes to 1 GiB and 128 KiB of zeros from 32 KiB.
    #[test]
    fn a_streamed_object_cannot_decode_to_more_than_it_could_hold() {
        const BLOCK: u32 = 128 << 10;
        let blocks = ((1u64 << 30) / u64::from(BLOCK) + 1) as usize;
        // Magic, a frame header with no content size and a 128 KiB window.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
        for n in 0..blocks {
            let last = u32::from(n + 1 == blocks);
            let header = last | (1 << 1) | (BLOCK << 3);
            frame.extend_from_slice(&header.to_le_bytes()[..3]);
            frame.push(0);
        }
        let header = ObjectHeader {
            codec: Codec::Zstd,
            plain_len: (blocks as u64) * u64::from(BLOCK),
            checksum: blake3::hash(b"whatever"),
        };
        let mut bomb = header.to_bytes().to_vec();
        bomb.extend_from_slice(&frame);
        let err = decode_json_from::<Vec<u64>>("k", "test", &bomb[..]).expect_err("a bomb");
        assert!(err.to_string().contains("implausible length"), "{err}");
    }

    /// A local directory that cannot take the file is named as such, not as a corrupt object.
    #[test]
    fn a_directory_that_cannot_take_the_file_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let gone = dir.path().join("it's 100% \\ gone");
        let err = encode_json_to_file(&vec![1u8; 10], Compression::default(), &gone)
            .expect_err("no such directory");
        assert!(
            matches!(&err, StorageError::Scratch { path, .. } if *path == gone),
            "{err:?}"
        );
        assert!(err.to_string().contains("temporary file in"), "{err}");
    }

    /// `value` encoded in memory and through a file (read back): the same object both ways.
    fn encoded_both_ways<T: serde::Serialize>(
        value: &T,
        c: Compression,
        bound: JsonBound,
    ) -> (ObjectHeader, Vec<u8>) {
        let (header, framed) =
            encode_json_within(value, c, bound, |c| ObjectWriter::new(0, c)).expect("encode");
        let (in_file, file) = encode_json_within(value, c, bound, |c| {
            ObjectWriter::into(FramedFile::new(tempfile::tempfile()?)?, c)
        })
        .expect("encode to a file");
        let mut file = file.into_file().expect("flushed");
        let mut read = Vec::new();
        file.read_to_end(&mut read).expect("read back");
        assert_eq!(
            (in_file, &read),
            (header, &framed),
            "the same object in a file"
        );
        (header, framed)
    }

    /// JSON that compresses past what a reader lets through (here past 1 MiB, 64 times the
    /// bytes stored; 1 GiB in use) is stored plain and read back; JSON like a manifest's stays
    /// compressed. An object encoded into a file is the one encoded in memory.
    #[test]
    fn json_compressed_past_the_readers_bound_is_stored_plain() {
        let bound = JsonBound {
            floor: 1 << 20,
            ratio: 64,
        };
        let zeros = vec!["0".repeat(1000); 8_000];
        let writer = ObjectWriter::new(0, Compression::default()).expect("writer");
        let (_, compressed, beyond) = encode_json_once(&zeros, writer, bound).expect("encode");
        assert!(beyond);
        let err = decode_json_within::<Vec<String>>("k", "test", &compressed[..], bound)
            .expect_err("held to the bound");
        assert!(err.to_string().contains("implausible length"), "{err}");
        for c in all_compressions() {
            let (header, framed) = encoded_both_ways(&zeros, c, bound);
            assert_eq!(header.codec, Codec::None);
            let back: Vec<String> =
                decode_json_within("k", "test", &framed[..], bound).expect("read back");
            assert_eq!(back, zeros);
        }
        let hashes: Vec<String> = (0..40_000u32)
            .map(|i| blake3::hash(&i.to_le_bytes()).to_hex().to_string())
            .collect();
        let (header, framed) = encoded_both_ways(&hashes, Compression::default(), bound);
        assert_eq!(header.codec, Codec::Zstd);
        let back: Vec<String> =
            decode_json_within("k", "test", &framed[..], bound).expect("read back");
        assert_eq!(back, hashes);
    }

    #[test]
    fn a_sampled_chunk_is_stored_with_the_smallest_setting_and_the_file_follows_it() {
        // Rows of a few integers and padding, as in pgbench's accounts, and plain text.
        let rows: Vec<u8> = (0..(256u32 << 10) / 16)
            .flat_map(|i| {
                let mut row = [b' '; 16];
                row[..4].copy_from_slice(&i.to_le_bytes());
                row[4..8].copy_from_slice(&(i / 100).to_le_bytes());
                row
            })
            .collect();
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}: the quick brown fox {} ", i * 7 % 13).into_bytes())
            .collect();
        let zstd = Compression::default();
        let mut winners = Vec::new();
        for data in [rows, text] {
            let sizes: Vec<usize> = Setting::ALL
                .iter()
                .map(|s| {
                    compress_zstd(&data, zstd.level, *s)
                        .expect("compress")
                        .len()
                })
                .collect();
            let smallest = *sizes.iter().min().expect("sizes");
            let winner = Setting::ALL[sizes.iter().position(|s| *s == smallest).expect("min")];
            let sample = ChunkTuning::configured();
            let sample = ChunkTuning {
                sample: true,
                ..sample
            };
            let (_, framed) = encode_tuned(&data, checksum(&data), zstd, &sample).expect("encode");
            assert_eq!(framed.len(), HEADER_LEN + smallest);
            assert_eq!(sample.choice.current(), winner);
            winners.push(winner);
            assert_eq!(decode("k", &framed).expect("decode"), data);
            let next = ChunkTuning {
                sample: false,
                ..sample
            };
            let (_, framed) = encode_tuned(&data, checksum(&data), zstd, &next).expect("encode");
            assert_eq!(framed.len(), HEADER_LEN + smallest, "the file's next chunk");
            assert_eq!(decode("k", &framed).expect("decode"), data);
        }
        // Measured: zstd's fastest setting wins on the rows, level 3 on the text.
        assert_eq!(winners, [Setting::Fast, Setting::Configured]);
        // Another codec ignores the tuning.
        let gzip = Compression {
            codec: Codec::Gzip,
            level: 6,
            workers: 0,
        };
        let tuning = ChunkTuning {
            sample: true,
            ..ChunkTuning::configured()
        };
        let (header, framed) = encode_tuned(b"abc", checksum(b"abc"), gzip, &tuning).expect("gz");
        assert_eq!(header.codec, Codec::Gzip);
        assert_eq!(decode("k", &framed).expect("decode"), b"abc");
        assert_eq!(tuning.choice.current(), Setting::Configured);
    }

    #[test]
    fn truncated_objects_are_refused() {
        let (_, object) = encode(&[7u8; 10_000], Compression::default()).expect("encode");
        for len in [0, 10, HEADER_LEN, object.len() - 1] {
            assert!(
                decode("k", &object[..len]).is_err(),
                "accepted a {len}-byte prefix"
            );
        }
    }
}
