//! The sealed object format and [`SealedStorage`], the layer that seals everything an encrypted
//! repository stores.
//!
//! Every object is sealed as a whole, after compression (the framed objects of [`crate::object`]
//! are already compressed): WAL, packs, manifests, `.metadata`, leases, the prune state and
//! `cluster.json`. Only `keys.json` stays clear; it holds nothing but wrapped keys and a MAC.
//!
//! ```text
//! offset size  field
//!      0    4  magic "LLOE"
//!      4    1  format version (1)
//!      5    1  log2 of the segment length (16: 64 KiB)
//!      6    2  reserved, zero
//!      8    4  key epoch, little endian
//!     12    4  reserved, zero
//!     16   16  nonce prefix, random per object
//!     32    …  segments: each up to 64 KiB of ciphertext and its 16-byte Poly1305 tag
//! ```
//!
//! Segment `i` is XChaCha20-Poly1305 under the epoch's data key with the nonce
//! `prefix ‖ i` and the associated data `header ‖ i ‖ last ‖ key`: a flipped bit anywhere, a
//! header moved onto another body, segments reordered, an object cut short (even on a segment
//! boundary: the new last segment was not sealed as the last) or copied under another name
//! fails to open. Segments let a restore read a chunk out of the middle of a pack without
//! reading the pack, and stream a dump without holding it.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

use crate::crypto::Keyring;
use crate::storage::{Durability, ObjectMeta, ObjectReader, PutMode, Storage};
use crate::{StorageError, layout};

pub const MAGIC: &[u8; 4] = b"LLOE";
pub const HEADER_LEN: usize = 32;
const VERSION: u8 = 1;
const SEGMENT_SHIFT: u8 = 16;
pub const SEGMENT_LEN: usize = 1 << SEGMENT_SHIFT;
const TAG_LEN: usize = 16;
const STORED_SEGMENT: usize = SEGMENT_LEN + TAG_LEN;
/// Segments sealed or opened per blocking task while streaming (1 MiB).
const SEGMENTS_PER_BATCH: usize = 16;

/// True when `bytes` start like a sealed object (used to tell an encrypted repository whose key
/// file is missing from a plain one).
pub fn looks_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// How chunk and pack ids are made: the blake3 of the content in a plain repository, keyed
/// BLAKE3 of that in an encrypted one, so that an id says nothing about the content to someone
/// without the key while equal chunks still share one id.
#[derive(Clone, Default)]
pub struct ChunkIds {
    key: Option<zeroize::Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for ChunkIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.key.is_some() {
            "ChunkIds(keyed)"
        } else {
            "ChunkIds(plain)"
        })
    }
}

impl ChunkIds {
    pub fn plain() -> ChunkIds {
        ChunkIds::default()
    }

    pub(crate) fn keyed(key: zeroize::Zeroizing<[u8; 32]>) -> ChunkIds {
        ChunkIds { key: Some(key) }
    }

    /// The id of content whose blake3 is `checksum`.
    pub fn of_checksum(&self, checksum: blake3::Hash) -> blake3::Hash {
        match &self.key {
            None => checksum,
            Some(key) => blake3::keyed_hash(key, checksum.as_bytes()),
        }
    }

    /// The id of `content`.
    pub fn of(&self, content: &[u8]) -> blake3::Hash {
        self.of_checksum(blake3::hash(content))
    }
}

fn refused(key: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Refused {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// One object's cipher: its header and the data key of its epoch.
struct ObjectCipher {
    header: [u8; HEADER_LEN],
    cipher: XChaCha20Poly1305,
}

impl ObjectCipher {
    fn new_object(keyring: &Keyring, key: &str) -> Result<ObjectCipher, StorageError> {
        let epoch = keyring.current_epoch();
        let mut prefix = [0u8; 16];
        getrandom::getrandom(&mut prefix)
            .map_err(|e| refused(key, format!("no random numbers to seal it: {e}")))?;
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(MAGIC);
        header[4] = VERSION;
        header[5] = SEGMENT_SHIFT;
        header[8..12].copy_from_slice(&epoch.to_le_bytes());
        header[16..32].copy_from_slice(&prefix);
        ObjectCipher::from_header(keyring, key, header)
    }

    fn parse(keyring: &Keyring, key: &str, bytes: &[u8]) -> Result<ObjectCipher, StorageError> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(refused(key, "shorter than a sealed object's header"));
        };
        if &h[0..4] != MAGIC {
            return Err(refused(
                key,
                "it is not sealed: it was written without the repository's key (by an older \
                 lifeline, or by someone who can write to the repository); nothing read from it \
                 is trusted",
            ));
        }
        if h[4] != VERSION || h[5] != SEGMENT_SHIFT {
            return Err(refused(
                key,
                format!(
                    "sealed format {} (segments 2^{}) is not supported by this lifeline; upgrade lifeline",
                    h[4], h[5]
                ),
            ));
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(h);
        ObjectCipher::from_header(keyring, key, header)
    }

    fn from_header(
        keyring: &Keyring,
        key: &str,
        header: [u8; HEADER_LEN],
    ) -> Result<ObjectCipher, StorageError> {
        let mut epoch = [0u8; 4];
        epoch.copy_from_slice(&header[8..12]);
        let epoch = u32::from_le_bytes(epoch);
        let data_key = keyring.data_key(epoch).ok_or_else(|| {
            refused(
                key,
                format!(
                    "sealed under key epoch {epoch}, which the repository's key file does not have"
                ),
            )
        })?;
        Ok(ObjectCipher {
            header,
            cipher: XChaCha20Poly1305::new(data_key.into()),
        })
    }

    fn nonce(&self, index: u64) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(&self.header[16..32]);
        nonce[16..].copy_from_slice(&index.to_le_bytes());
        nonce.into()
    }

    fn aad(&self, key: &str, index: u64, last: bool) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER_LEN + 9 + key.len());
        aad.extend_from_slice(&self.header);
        aad.extend_from_slice(&index.to_le_bytes());
        aad.push(u8::from(last));
        aad.extend_from_slice(key.as_bytes());
        aad
    }

    /// Encrypt segment `index` in place; its tag.
    fn seal_in_place(
        &self,
        key: &str,
        index: u64,
        last: bool,
        segment: &mut [u8],
    ) -> Result<Tag, StorageError> {
        self.cipher
            .encrypt_in_place_detached(&self.nonce(index), &self.aad(key, index, last), segment)
            .map_err(|_| refused(key, "sealing failed"))
    }

    /// Decrypt segment `index` in place, if `tag` authenticates it.
    fn open_in_place(
        &self,
        key: &str,
        index: u64,
        last: bool,
        segment: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), StorageError> {
        self.cipher
            .decrypt_in_place_detached(
                &self.nonce(index),
                &self.aad(key, index, last),
                segment,
                Tag::from_slice(tag),
            )
            .map_err(|_| {
                refused(
                    key,
                    "it fails authentication: it was altered or truncated, copied here from \
                     another name or repository, or sealed with another key",
                )
            })
    }

    /// Append segment `index` of `plain` (at most [`SEGMENT_LEN`] bytes), sealed, to `out`.
    fn seal_segment(
        &self,
        key: &str,
        index: u64,
        last: bool,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self.seal_in_place(key, index, last, &mut out[start..])?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Append segment `index`, opened, to `out`; `sealed` is its ciphertext and tag.
    fn open_segment(
        &self,
        key: &str,
        index: u64,
        last: bool,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut span = sealed.to_vec();
        let opened = open_span_in_place(self, key, index, &mut span, !last)?;
        out.extend_from_slice(&span[..opened]);
        Ok(())
    }
}

/// Open the segments `first..` held in `span` in place, moving the plaintext to its front;
/// returns its length. `continues`: the object goes on after these segments (so none of them
/// is its last).
fn open_span_in_place(
    cipher: &ObjectCipher,
    key: &str,
    first: u64,
    span: &mut [u8],
    continues: bool,
) -> Result<usize, StorageError> {
    // Even empty plaintext has one (empty, last) segment with its tag.
    let pieces = span.len().div_ceil(STORED_SEGMENT).max(1);
    let mut written = 0;
    for n in 0..pieces {
        let start = n * STORED_SEGMENT;
        let end = (start + STORED_SEGMENT).min(span.len());
        let Some(body_len) = end.checked_sub(start + TAG_LEN) else {
            return Err(refused(
                key,
                "truncated inside a segment's authentication tag",
            ));
        };
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&span[start + body_len..end]);
        let last = !continues && n + 1 == pieces;
        cipher.open_in_place(
            key,
            first + n as u64,
            last,
            &mut span[start..start + body_len],
            &tag,
        )?;
        span.copy_within(start..start + body_len, written);
        written += body_len;
    }
    Ok(written)
}

/// Seal `plain` as the object `key` in its own buffer, so that the object is never held
/// twice: each segment moves to its place (the last first) and is encrypted there.
pub fn seal_owned(
    keyring: &Keyring,
    key: &str,
    mut plain: Vec<u8>,
) -> Result<Vec<u8>, StorageError> {
    let cipher = ObjectCipher::new_object(keyring, key)?;
    let len = plain.len();
    let segments = len.div_ceil(SEGMENT_LEN).max(1);
    plain.resize(HEADER_LEN + len + segments * TAG_LEN, 0);
    for index in (0..segments).rev() {
        let from = index * SEGMENT_LEN;
        let n = SEGMENT_LEN.min(len - from.min(len));
        let to = HEADER_LEN + index * STORED_SEGMENT;
        plain.copy_within(from..from + n, to);
        let last = index + 1 == segments;
        let tag = cipher.seal_in_place(key, index as u64, last, &mut plain[to..to + n])?;
        plain[to + n..to + n + TAG_LEN].copy_from_slice(&tag);
    }
    plain[..HEADER_LEN].copy_from_slice(&cipher.header);
    Ok(plain)
}

/// Seal `plain` as the object `key`.
pub fn seal(keyring: &Keyring, key: &str, plain: &[u8]) -> Result<Vec<u8>, StorageError> {
    seal_owned(keyring, key, plain.to_vec())
}

/// Open the whole sealed object `key`.
pub fn open(keyring: &Keyring, key: &str, stored: &[u8]) -> Result<Vec<u8>, StorageError> {
    let cipher = ObjectCipher::parse(keyring, key, stored)?;
    let mut body = stored[HEADER_LEN..].to_vec();
    let len = open_span_in_place(&cipher, key, 0, &mut body, false)?;
    body.truncate(len);
    Ok(body)
}

/// The key epoch an object was sealed under, from its first bytes.
pub fn epoch_of(key: &str, stored: &[u8]) -> Result<u32, StorageError> {
    let Some(h) = stored.get(..HEADER_LEN).filter(|h| h.starts_with(MAGIC)) else {
        return Err(refused(key, "not a sealed object"));
    };
    let mut epoch = [0u8; 4];
    epoch.copy_from_slice(&h[8..12]);
    Ok(u32::from_le_bytes(epoch))
}

/// The length of the plaintext of a sealed object of `stored` bytes (0 for a size no sealed
/// object has: reading it fails).
pub fn plain_size(stored: u64) -> u64 {
    let Some(body) = stored.checked_sub(HEADER_LEN as u64) else {
        return 0;
    };
    let (full, rest) = (body / STORED_SEGMENT as u64, body % STORED_SEGMENT as u64);
    full * SEGMENT_LEN as u64 + rest.saturating_sub(TAG_LEN as u64)
}

/// The segments that hold plaintext `range`, and where they are stored; `None` for a range
/// no object can reach.
fn stored_span(range: &Range<u64>) -> Option<(u64, Range<u64>)> {
    let first = range.start / SEGMENT_LEN as u64;
    let last = range.end.saturating_sub(1).max(range.start) / SEGMENT_LEN as u64;
    let at = |segment: u64| {
        segment
            .checked_mul(STORED_SEGMENT as u64)?
            .checked_add(HEADER_LEN as u64)
    };
    Some((first, at(first)?..at(last.checked_add(1)?)?))
}

/// An encrypted repository: `inner` holds only sealed objects (and the clear `keys.json`).
pub struct SealedStorage {
    inner: Arc<dyn Storage>,
    keyring: Arc<Keyring>,
}

impl std::fmt::Debug for SealedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStorage")
            .field("inner", &self.inner)
            .field("epoch", &self.keyring.current_epoch())
            .finish()
    }
}

fn clear(key: &str) -> bool {
    key == layout::KEYS_KEY
}

impl SealedStorage {
    pub fn new(inner: Arc<dyn Storage>, keyring: Arc<Keyring>) -> SealedStorage {
        SealedStorage { inner, keyring }
    }

    /// The repository under the seal (key operations read and write `keys.json` there).
    pub fn inner(&self) -> &Arc<dyn Storage> {
        &self.inner
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Re-seal `key` under the current epoch if it is under an older one; true if it was.
    /// The new object replaces the old one whole, and is read back before this returns.
    pub async fn reseal(&self, key: &str) -> Result<bool, StorageError> {
        let head = self.inner.get_range(key, 0..HEADER_LEN as u64).await?;
        // Only the current epoch is skipped unopened; anything else is opened (and refused
        // if its header lies).
        if epoch_of(key, &head)? == self.keyring.current_epoch() {
            return Ok(false);
        }
        let stored = crate::StorageExt::get_bytes(&*self.inner, key).await?;
        let (keyring, owned_key) = (self.keyring.clone(), key.to_string());
        let resealed = tokio::task::spawn_blocking(move || {
            let plain = open(&keyring, &owned_key, &stored)?;
            let resealed = seal(&keyring, &owned_key, &plain)?;
            // Never replace a readable object with one that is not.
            if open(&keyring, &owned_key, &resealed)? != plain {
                return Err(refused(&owned_key, "re-sealing did not round-trip"));
            }
            Ok(resealed)
        })
        .await
        .map_err(|e| refused(key, format!("sealing task failed: {e}")))??;
        self.inner
            .put_bytes(key, resealed, PutMode::Overwrite, Durability::Immediate)
            .await?;
        Ok(true)
    }
}

async fn blocking<T: Send + 'static>(
    key: &str,
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| refused(key, format!("sealing task failed: {e}")))?
}

/// What a task sends once it has sent everything: an empty piece (no other piece is empty).
const END: &[u8] = &[];

/// Reads what a task sends, in order; an error sent is returned by the read. The stream ends
/// only where the task said [`END`]: a task that stopped without saying it (a panic) is an error
/// for the read, not an object cut short.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
    ended: bool,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<std::io::Result<Vec<u8>>>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Vec::new(),
            at: 0,
            ended: false,
        }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.at < self.current.len() {
                let n = buf.remaining().min(self.current.len() - self.at);
                let at = self.at;
                buf.put_slice(&self.current[at..at + n]);
                self.at += n;
                return Poll::Ready(Ok(()));
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the encryption task stopped before the end of the object",
                    )));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(piece))) if piece.is_empty() => self.ended = true,
                Poll::Ready(Some(Ok(piece))) => {
                    self.current = piece;
                    self.at = 0;
                }
            }
        }
    }
}

/// Read up to `len` bytes (fewer only at the end of `reader`).
async fn read_up_to(reader: &mut ObjectReader, len: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut out)
        .await?;
    Ok(out)
}

/// The error carried whole, for a reader that can give it back as the repository's own.
fn invalid_data(error: StorageError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error)
}

/// Seal or open one segment: [`ObjectCipher::seal_segment`] or [`ObjectCipher::open_segment`].
type SegmentOp =
    fn(&ObjectCipher, &str, u64, bool, &[u8], &mut Vec<u8>) -> Result<(), StorageError>;

/// Run `op` over `source` in pieces of `piece_len` bytes, a batch of pieces per blocking task,
/// sending each batch's output to `tx`. One byte of look-ahead tells the last piece.
async fn pump(
    cipher: Arc<ObjectCipher>,
    key: String,
    mut source: ObjectReader,
    piece_len: usize,
    op: SegmentOp,
    tx: &mpsc::Sender<std::io::Result<Vec<u8>>>,
) -> std::io::Result<()> {
    let batch_len = SEGMENTS_PER_BATCH * piece_len;
    let mut pending = read_up_to(&mut source, batch_len + 1).await?;
    let mut index = 0u64;
    loop {
        let last = pending.len() <= batch_len;
        let mut rest = if last {
            Vec::new()
        } else {
            pending.split_off(batch_len)
        };
        let (c, k) = (cipher.clone(), key.clone());
        let (out, pieces) = blocking(&key, move || {
            let pieces = pending.len().div_ceil(piece_len).max(1);
            let mut out = Vec::with_capacity(pending.len() + pieces * TAG_LEN);
            for n in 0..pieces {
                let piece = &pending
                    [(n * piece_len).min(pending.len())..((n + 1) * piece_len).min(pending.len())];
                op(
                    &c,
                    &k,
                    index + n as u64,
                    last && n + 1 == pieces,
                    piece,
                    &mut out,
                )?;
            }
            Ok((out, pieces as u64))
        })
        .await
        .map_err(invalid_data)?;
        index += pieces;
        // An empty piece is [`END`]: nothing is sent for a batch that made no bytes.
        let sent = out.is_empty() || tx.send(Ok(out)).await.is_ok();
        if !sent || last {
            return Ok(());
        }
        let more = read_up_to(&mut source, batch_len + 1 - rest.len()).await?;
        rest.extend_from_slice(&more);
        pending = rest;
    }
}

/// Seal what `source` yields as the object `key`, batch by batch, into `tx`.
async fn seal_stream(
    keyring: Arc<Keyring>,
    key: String,
    source: ObjectReader,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let result = async {
        let cipher = Arc::new(ObjectCipher::new_object(&keyring, &key).map_err(invalid_data)?);
        if tx.send(Ok(cipher.header.to_vec())).await.is_err() {
            return Ok(());
        }
        let op: SegmentOp = ObjectCipher::seal_segment;
        pump(cipher, key, source, SEGMENT_LEN, op, &tx).await
    }
    .await;
    let _ = tx.send(result.map(|()| END.to_vec())).await;
}

/// Open the sealed stream `stored` of the object `key`, batch by batch, into `tx`.
async fn open_stream(
    keyring: Arc<Keyring>,
    key: String,
    mut stored: ObjectReader,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let result = async {
        let header = read_up_to(&mut stored, HEADER_LEN).await?;
        let cipher = Arc::new(ObjectCipher::parse(&keyring, &key, &header).map_err(invalid_data)?);
        let op: SegmentOp = ObjectCipher::open_segment;
        pump(cipher, key, stored, STORED_SEGMENT, op, &tx).await
    }
    .await;
    let _ = tx.send(result.map(|()| END.to_vec())).await;
}

#[async_trait]
impl Storage for SealedStorage {
    async fn put_stream(
        &self,
        key: &str,
        payload: ObjectReader,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        if clear(key) {
            return self.inner.put_stream(key, payload, mode, durability).await;
        }
        crate::validate_key(key)?;
        let (tx, rx) = mpsc::channel(2);
        let sealer = tokio::spawn(seal_stream(
            self.keyring.clone(),
            key.to_string(),
            payload,
            tx,
        ));
        let stored = self
            .inner
            .put_stream(key, Box::new(ChannelReader::new(rx)), mode, durability)
            .await;
        sealer.abort();
        stored
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        if clear(key) {
            return self.inner.put_bytes(key, bytes, mode, durability).await;
        }
        let (keyring, owned_key) = (self.keyring.clone(), key.to_string());
        let sealed = blocking(key, move || seal_owned(&keyring, &owned_key, bytes)).await?;
        self.inner.put_bytes(key, sealed, mode, durability).await
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let stored = self.inner.get_stream(key).await?;
        if clear(key) {
            return Ok(stored);
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(open_stream(
            self.keyring.clone(),
            key.to_string(),
            stored,
            tx,
        ));
        Ok(Box::new(ChannelReader::new(rx)))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError> {
        if clear(key) {
            return self.inner.get_range(key, range).await;
        }
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let Some((first, span)) = stored_span(&range) else {
            return Ok(Vec::new());
        };
        let asked = span.end - span.start;
        // One byte past the span tells whether the object goes on after it.
        let beyond = span.end.saturating_add(1);
        let (header, mut body) = if first == 0 {
            let mut all = self.inner.get_range(key, 0..beyond).await?;
            // The body stays in the buffer it was read into (split_off would copy it).
            let header = all[..HEADER_LEN.min(all.len())].to_vec();
            all.drain(..header.len());
            (header, all)
        } else {
            tokio::try_join!(
                self.inner.get_range(key, 0..HEADER_LEN as u64),
                self.inner.get_range(key, span.start..beyond),
            )?
        };
        let continues = body.len() as u64 > asked;
        body.truncate(asked.min(body.len() as u64) as usize);
        if body.is_empty() && first > 0 {
            // Past the end of the object: nothing to read, as any backend answers.
            return Ok(Vec::new());
        }
        let (keyring, owned_key) = (self.keyring.clone(), key.to_string());
        let skip = (range.start - first * SEGMENT_LEN as u64) as usize;
        let take = (range.end - range.start) as usize;
        blocking(key, move || {
            let cipher = ObjectCipher::parse(&keyring, &owned_key, &header)?;
            let len = open_span_in_place(&cipher, &owned_key, first, &mut body, continues)?;
            // The plaintext is moved to the front of the buffer read: no second copy.
            body.truncate(len.min(skip.saturating_add(take)));
            body.drain(..skip.min(body.len()));
            Ok(body)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let mut meta = self.inner.head(key).await?;
        if !clear(key) {
            meta.size = plain_size(meta.size);
        }
        Ok(meta)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut listed = self.inner.list(prefix).await?;
        for meta in listed.iter_mut().filter(|m| !clear(&m.key)) {
            meta.size = plain_size(meta.size);
        }
        Ok(listed)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        self.inner.delete_many(keys).await
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.inner.sync().await
    }

    async fn sync_object(&self, key: &str) -> Result<(), StorageError> {
        self.inner.sync_object(key).await
    }

    fn describe(&self) -> String {
        format!("{} (encrypted)", self.inner.describe())
    }

    fn chunk_ids(&self) -> ChunkIds {
        ChunkIds::keyed(self.keyring.chunk_id_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, KeyFile};
    use proptest::prelude::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn keyring() -> Keyring {
        KeyFile::create(b"correct horse", FAST).expect("create").1
    }

    #[tokio::test]
    async fn keeps_the_backend_contract_and_stores_nothing_in_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = crate::LocalStorage::open(dir.path()).expect("open");
        let sealed = SealedStorage::new(Arc::new(local), Arc::new(keyring()));
        crate::conformance::check_backend(&sealed).await;
        let marker = b"a marker that must never be stored in clear";
        let big: Vec<u8> = marker
            .iter()
            .cycle()
            .take(3 * SEGMENT_LEN + 5)
            .copied()
            .collect();
        let stream: ObjectReader = Box::new(std::io::Cursor::new(big.clone()));
        sealed
            .put_stream("s/big", stream, PutMode::Create, Durability::Immediate)
            .await
            .expect("put");
        let stored = std::fs::read(dir.path().join("s/big")).expect("stored");
        assert!(!stored.windows(16).any(|w| w == &marker[..16]));
        assert_eq!(
            crate::StorageExt::get_bytes(&sealed, "s/big")
                .await
                .expect("get"),
            big
        );
        let range = SEGMENT_LEN as u64 - 3..2 * SEGMENT_LEN as u64 + 9;
        assert_eq!(
            sealed
                .get_range("s/big", range.clone())
                .await
                .expect("range"),
            big[range.start as usize..range.end as usize]
        );
        // Copied under another name, it no longer opens.
        std::fs::copy(dir.path().join("s/big"), dir.path().join("s/other")).expect("copy");
        let moved = crate::StorageExt::get_bytes(&sealed, "s/other").await;
        assert!(moved.is_err(), "an object copied under another name opened");
    }

    /// Gives `left` bytes, then panics, as a bug in whatever produced the stream would.
    struct PanicsAfter {
        left: usize,
    }

    impl AsyncRead for PanicsAfter {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            assert!(self.left > 0, "the producer's bug");
            let n = self.left.min(buf.remaining());
            buf.put_slice(&vec![7u8; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    /// An empty object, streamed in and out: its one (empty) segment opens to no bytes, which is
    /// not taken for the end before the end is said.
    #[tokio::test]
    async fn an_empty_stream_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = crate::LocalStorage::open(dir.path()).expect("open");
        let sealed = SealedStorage::new(Arc::new(local), Arc::new(keyring()));
        let empty: ObjectReader = Box::new(std::io::Cursor::new(Vec::new()));
        sealed
            .put_stream("s/empty", empty, PutMode::Create, Durability::Immediate)
            .await
            .expect("put");
        let mut read = Vec::new();
        let mut stream = sealed.get_stream("s/empty").await.expect("get");
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut read)
            .await
            .expect("read");
        assert!(read.is_empty());
        let stored = std::fs::metadata(dir.path().join("s/empty")).expect("stored");
        assert!(stored.len() > 0, "sealed, with its tag");
    }

    #[tokio::test]
    async fn a_stream_whose_sealing_stops_midway_is_an_error_and_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = crate::LocalStorage::open(dir.path()).expect("open");
        let sealed = SealedStorage::new(Arc::new(local), Arc::new(keyring()));
        let source: ObjectReader = Box::new(PanicsAfter {
            left: 2 * SEGMENT_LEN * SEGMENTS_PER_BATCH + 3,
        });
        let stored = sealed
            .put_stream("s/cut", source, PutMode::Create, Durability::Immediate)
            .await;
        assert!(stored.is_err(), "an object cut short was stored");
        assert!(
            !crate::StorageExt::exists(&sealed, "s/cut")
                .await
                .expect("exists")
        );
    }

    #[tokio::test]
    async fn a_range_read_of_an_object_cut_on_a_segment_boundary_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local: Arc<dyn Storage> =
            Arc::new(crate::LocalStorage::open(dir.path()).expect("open"));
        let sealed = SealedStorage::new(local, Arc::new(keyring()));
        let plain = vec![5u8; 3 * SEGMENT_LEN];
        sealed
            .put_bytes("p/x", plain, PutMode::Create, Durability::Immediate)
            .await
            .expect("put");
        let path = dir.path().join("p/x");
        let stored = std::fs::read(&path).expect("read");
        std::fs::write(&path, &stored[..HEADER_LEN + 2 * STORED_SEGMENT]).expect("cut");
        let end = 2 * SEGMENT_LEN as u64;
        assert!(sealed.get_range("p/x", end - 12..end).await.is_err());
        assert!(
            sealed.get_range("p/x", 0..10).await.is_ok(),
            "the intact start still reads"
        );
        assert!(
            sealed
                .get_range("p/x", u64::MAX - 10..u64::MAX)
                .await
                .expect("far")
                .is_empty()
        );
    }

    #[test]
    fn sizes_map_both_ways() {
        let keyring = keyring();
        for len in [
            0,
            1,
            SEGMENT_LEN - 1,
            SEGMENT_LEN,
            SEGMENT_LEN + 1,
            3 * SEGMENT_LEN,
            5 * SEGMENT_LEN + 17,
        ] {
            let sealed = seal(&keyring, "k", &vec![9u8; len]).expect("seal");
            assert_eq!(plain_size(sealed.len() as u64), len as u64, "{len}");
            assert_eq!(open(&keyring, "k", &sealed).expect("open").len(), len);
        }
    }

    #[test]
    fn an_object_cut_on_a_segment_boundary_is_refused() {
        let keyring = keyring();
        let sealed = seal(&keyring, "k", &vec![1u8; 3 * SEGMENT_LEN]).expect("seal");
        let cut = &sealed[..HEADER_LEN + 2 * STORED_SEGMENT];
        assert!(open(&keyring, "k", cut).is_err());
        let header_only = &sealed[..HEADER_LEN];
        assert!(open(&keyring, "k", header_only).is_err());
    }

    #[test]
    fn another_repository_s_key_cannot_open_an_object() {
        let (a, b) = (keyring(), keyring());
        let sealed = seal(&a, "k", b"rows").expect("seal");
        let error = open(&b, "k", &sealed).expect_err("another key");
        assert!(error.to_string().contains("authentication"), "{error}");
    }

    #[test]
    fn chunk_ids_are_keyed_and_stable() {
        let (a, b) = (keyring(), keyring());
        let (ia, ib) = (
            ChunkIds::keyed(a.chunk_id_key()),
            ChunkIds::keyed(b.chunk_id_key()),
        );
        assert_eq!(ChunkIds::plain().of(b"same"), blake3::hash(b"same"));
        assert_ne!(ia.of(b"same"), blake3::hash(b"same"));
        assert_ne!(ia.of(b"same"), ib.of(b"same"));
        assert_eq!(ia.of(b"same"), ia.of(b"same"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn sealed_objects_open_only_whole_and_under_their_own_name(
            plain in proptest::collection::vec(any::<u8>(), 0..(3 * SEGMENT_LEN)),
            flip in any::<usize>(),
            bit in 0u8..8,
            cut in any::<usize>(),
        ) {
            let keyring = keyring();
            let sealed = seal(&keyring, "packs/ab/cd", &plain).expect("seal");
            prop_assert_eq!(open(&keyring, "packs/ab/cd", &sealed).expect("opens"), plain.clone());
            // The plaintext never shows through (beyond what chance allows).
            if plain.len() >= 16 {
                let probe = &plain[..16];
                prop_assert!(!sealed.windows(16).any(|w| w == probe));
            }
            let mut flipped = sealed.clone();
            let at = flip % flipped.len();
            flipped[at] ^= 1 << bit;
            prop_assert!(open(&keyring, "packs/ab/cd", &flipped).is_err());
            prop_assert!(open(&keyring, "packs/ab/cd", &sealed[..cut % sealed.len()]).is_err());
            prop_assert!(open(&keyring, "packs/ab/ce", &sealed).is_err());
        }

        #[test]
        fn any_range_opens_to_the_same_bytes(
            len in 0usize..(4 * SEGMENT_LEN),
            start in any::<usize>(),
            width in 0usize..(2 * SEGMENT_LEN),
        ) {
            let keyring = keyring();
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let sealed = seal(&keyring, "k", &plain).expect("seal");
            let start = if len == 0 { 0 } else { start % len };
            let end = (start + width).min(len);
            if start < end {
                let range = start as u64..end as u64;
                let (first, span) = stored_span(&range).expect("reachable");
                let cipher = ObjectCipher::parse(&keyring, "k", &sealed).expect("header");
                let body = &sealed[(span.start as usize).min(sealed.len())..(span.end as usize).min(sealed.len())];
                let continues = sealed.len() as u64 > span.end;
                let mut opened = body.to_vec();
                let len = open_span_in_place(&cipher, "k", first, &mut opened, continues).expect("opens");
                opened.truncate(len);
                let skip = start - first as usize * SEGMENT_LEN;
                prop_assert_eq!(&opened[skip..skip + (end - start)], &plain[start..end]);
            }
        }
    }
}
