//! Repository encryption: keys and key slots.
//!
//! A repository's master key is 256 random bits, stored only wrapped in key slots: each slot
//! seals it with XChaCha20-Poly1305 under a key derived from one passphrase by Argon2id (the
//! parameters and salt are recorded in the slot). Changing or adding a passphrase rewrites a
//! slot, never data. The keys that do the work are random too, and stored in the key file
//! wrapped under the master key: one data key per epoch (`key rotate` starts a new epoch; older
//! objects keep theirs) and one for chunk ids (keyed BLAKE3, so an id says nothing of the
//! content while equal chunks still share one). A key derived from the master key
//! authenticates the whole key file.
//!
//! Because the data keys are not derived from the master key, the master key can be replaced
//! (`key rotate --new-master`): the keys are re-wrapped under a new one, a new epoch starts,
//! and an old passphrase, even with an old copy of the key file, opens nothing written since.
//!
//! Objects are sealed with the data keys in [`crate::sealed`].

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;
const KEY_FILE_FORMAT: u32 = 2;
/// Bounds on what a key file may ask for, checked before any work: someone who can write to
/// the bucket must not make every `wal push` run out of memory or time.
const MAX_SLOTS: usize = 64;
const MAX_EPOCHS: usize = 4096;
const MAX_KDF_MEMORY_KIB: u32 = 4 << 20;
const MAX_KDF_ITERATIONS: u32 = 64;
const MAX_KDF_PARALLELISM: u32 = 64;

/// Why a key could not be used. None of them prints a key or a passphrase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "the passphrase opens none of the repository's key slots: it is not one of this repository's passphrases"
    )]
    WrongPassphrase,
    #[error("the key file is damaged or was altered: {0}")]
    KeyFile(String),
    #[error("{0}")]
    KeyOperation(String),
    #[error("the operating system gave no random numbers: {0}")]
    Random(String),
}

/// Argon2id's cost, recorded in every slot so that it can be raised without breaking old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes: about a quarter of a second here, per passphrase tried.
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

/// One passphrase's wrapping of the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySlot {
    pub id: u32,
    pub kdf: String,
    pub params: KdfParams,
    pub salt: String,
    pub nonce: String,
    /// The master key sealed under the passphrase's key (hex).
    pub wrapped: String,
    pub created_at: String,
}

/// A working key (a data key, or the chunk-id key) sealed under the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub nonce: String,
    pub wrapped: String,
}

/// `keys.json` at the root of an encrypted repository: the slots, the wrapped keys and a MAC
/// (under a key derived from the master key) over everything else, so that a slot, an epoch or
/// a key cannot be forged, changed or removed by someone who can write to the bucket but has
/// no passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub format: u32,
    pub slots: Vec<KeySlot>,
    /// Data key of each epoch.
    pub epochs: BTreeMap<u32, WrappedKey>,
    pub chunk_ids: WrappedKey,
    /// The epoch new objects are sealed under.
    pub current_epoch: u32,
    /// Keyed BLAKE3 of every other field, each with its length.
    pub mac: String,
}

/// The unlocked keys. No `Debug` of them.
pub struct Keyring {
    master: Zeroizing<[u8; 32]>,
    current_epoch: u32,
    data_keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    chunk_id_key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current_epoch", &self.current_epoch)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str, what: &str) -> Result<Vec<u8>, CryptoError> {
    let bad = || CryptoError::KeyFile(format!("{what} is not hexadecimal"));
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// The key Argon2id derives from `passphrase` with `salt` and `params`.
fn passphrase_key(
    passphrase: &[u8],
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|e| CryptoError::KeyFile(format!("unusable Argon2id parameters: {e}")))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|e| CryptoError::KeyFile(format!("Argon2id: {e}")))?;
    Ok(key)
}

fn cache_key(passphrase: &[u8], salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new(Vec::with_capacity(passphrase.len() + salt.len()));
    material.extend_from_slice(salt);
    material.extend_from_slice(passphrase);
    Zeroizing::new(blake3::derive_key("lifeline 2026-11 key cache", &material))
}

fn slot_aad(id: u32, params: KdfParams) -> Vec<u8> {
    format!(
        "lifeline key slot {id} argon2id m={} t={} p={}",
        params.memory_kib, params.iterations, params.parallelism
    )
    .into_bytes()
}

/// Seal `secret` under `key` with `aad`.
fn wrap(key: &[u8; 32], secret: &[u8], aad: &[u8]) -> Result<(String, String), CryptoError> {
    let nonce = random::<NONCE_LEN>()?;
    let wrapped = XChaCha20Poly1305::new(key.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad })
        .map_err(|_| CryptoError::KeyOperation("sealing a key failed".into()))?;
    Ok((hex(&nonce), hex(&wrapped)))
}

/// Open a 256-bit key sealed by [`wrap`]; `None` when it does not open.
fn unwrap(
    key: &[u8; 32],
    nonce: &str,
    wrapped: &str,
    aad: &[u8],
) -> Result<Option<Zeroizing<[u8; 32]>>, CryptoError> {
    let nonce = unhex(nonce, "a nonce")?;
    let wrapped = unhex(wrapped, "a wrapped key")?;
    if nonce.len() != NONCE_LEN {
        return Err(CryptoError::KeyFile("a nonce has the wrong length".into()));
    }
    let Ok(opened) = XChaCha20Poly1305::new(key.into())
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &wrapped, aad })
    else {
        return Ok(None);
    };
    let opened = Zeroizing::new(opened);
    let mut out = Zeroizing::new([0u8; 32]);
    if opened.len() != 32 {
        return Err(CryptoError::KeyFile("a wrapped key is not 256 bits".into()));
    }
    out.copy_from_slice(&opened);
    Ok(Some(out))
}

fn epoch_aad(epoch: u32) -> Vec<u8> {
    format!("lifeline data key epoch {epoch}").into_bytes()
}

const CHUNK_IDS_AAD: &[u8] = b"lifeline chunk id key";

impl Keyring {
    fn derive(&self, context: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(context, self.master.as_ref()))
    }

    pub fn current_epoch(&self) -> u32 {
        self.current_epoch
    }

    fn mac_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive("lifeline 2026-11 key file authentication")
    }

    /// Wrap the master key under `passphrase` in a new slot `id`.
    fn new_slot(
        &self,
        id: u32,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<KeySlot, CryptoError> {
        let salt = random::<16>()?;
        let key = passphrase_key(passphrase, &salt, params)?;
        let (nonce, wrapped) = wrap(&key, self.master.as_ref(), &slot_aad(id, params))?;
        Ok(KeySlot {
            id,
            kdf: "argon2id".into(),
            params,
            salt: hex(&salt),
            nonce,
            wrapped,
            created_at: jiff::Timestamp::now().to_string(),
        })
    }

    /// The data key of `epoch`, if the key file has that epoch.
    pub(crate) fn data_key(&self, epoch: u32) -> Option<&[u8; 32]> {
        self.data_keys.get(&epoch).map(|key| &**key)
    }

    pub(crate) fn chunk_id_key(&self) -> Zeroizing<[u8; 32]> {
        self.chunk_id_key.clone()
    }
}

/// Feed `field` into the MAC with its length, so that no two files share an input.
fn mac_field(hasher: &mut blake3::Hasher, field: &[u8]) {
    hasher.update(&(field.len() as u64).to_le_bytes());
    hasher.update(field);
}

impl KeyFile {
    /// A new key file with one slot for `passphrase`, and the keyring it opens.
    pub fn create(passphrase: &[u8], params: KdfParams) -> Result<(KeyFile, Keyring), CryptoError> {
        check_params(params)?;
        let keyring = Keyring {
            master: Zeroizing::new(random::<32>()?),
            current_epoch: 1,
            data_keys: BTreeMap::from([(1, Zeroizing::new(random::<32>()?))]),
            chunk_id_key: Zeroizing::new(random::<32>()?),
        };
        let mut file = KeyFile::wrapping(&keyring)?;
        file.slots.push(keyring.new_slot(1, passphrase, params)?);
        file.mac = file.compute_mac(&keyring);
        Ok((file, keyring))
    }

    /// A key file (without slots) holding `keyring`'s keys wrapped under its master key.
    fn wrapping(keyring: &Keyring) -> Result<KeyFile, CryptoError> {
        let mut epochs = BTreeMap::new();
        for (epoch, key) in &keyring.data_keys {
            let (nonce, wrapped) = wrap(&keyring.master, key.as_ref(), &epoch_aad(*epoch))?;
            epochs.insert(*epoch, WrappedKey { nonce, wrapped });
        }
        let (nonce, wrapped) = wrap(
            &keyring.master,
            keyring.chunk_id_key.as_ref(),
            CHUNK_IDS_AAD,
        )?;
        Ok(KeyFile {
            format: KEY_FILE_FORMAT,
            slots: Vec::new(),
            epochs,
            chunk_ids: WrappedKey { nonce, wrapped },
            current_epoch: keyring.current_epoch,
            mac: String::new(),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parse and bound-check a key file; nothing in it is trusted until [`KeyFile::unlock`].
    pub fn from_json(bytes: &[u8]) -> Result<KeyFile, CryptoError> {
        if bytes.len() > 1 << 20 {
            return Err(CryptoError::KeyFile("it is larger than 1 MiB".into()));
        }
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| CryptoError::KeyFile(e.to_string()))?;
        if file.format != KEY_FILE_FORMAT {
            return Err(CryptoError::KeyFile(format!(
                "key file format {} is not supported by this lifeline; upgrade lifeline",
                file.format
            )));
        }
        if file.slots.is_empty() || file.slots.len() > MAX_SLOTS {
            return Err(CryptoError::KeyFile(format!(
                "it has {} key slots (1 to {MAX_SLOTS} allowed)",
                file.slots.len()
            )));
        }
        if file.epochs.len() > MAX_EPOCHS || !file.epochs.contains_key(&file.current_epoch) {
            return Err(CryptoError::KeyFile(
                "its data epochs are out of bounds or lack the current one".into(),
            ));
        }
        for slot in &file.slots {
            check_params(slot.params)?;
        }
        Ok(file)
    }

    fn compute_mac(&self, keyring: &Keyring) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&keyring.mac_key());
        mac_field(&mut hasher, &self.format.to_le_bytes());
        mac_field(&mut hasher, &self.current_epoch.to_le_bytes());
        for slot in &self.slots {
            mac_field(&mut hasher, &slot.id.to_le_bytes());
            mac_field(&mut hasher, slot.kdf.as_bytes());
            mac_field(&mut hasher, &slot.params.memory_kib.to_le_bytes());
            mac_field(&mut hasher, &slot.params.iterations.to_le_bytes());
            mac_field(&mut hasher, &slot.params.parallelism.to_le_bytes());
            mac_field(&mut hasher, slot.salt.as_bytes());
            mac_field(&mut hasher, slot.nonce.as_bytes());
            mac_field(&mut hasher, slot.wrapped.as_bytes());
            mac_field(&mut hasher, slot.created_at.as_bytes());
        }
        for (epoch, key) in &self.epochs {
            mac_field(&mut hasher, &epoch.to_le_bytes());
            mac_field(&mut hasher, key.nonce.as_bytes());
            mac_field(&mut hasher, key.wrapped.as_bytes());
        }
        mac_field(&mut hasher, self.chunk_ids.nonce.as_bytes());
        mac_field(&mut hasher, self.chunk_ids.wrapped.as_bytes());
        hasher.finalize().to_hex().to_string()
    }

    /// The keyring of `master`, once the file's MAC proves it untouched (checked first, before
    /// any key is unwrapped).
    fn open_with(&self, master: Zeroizing<[u8; 32]>) -> Result<Keyring, CryptoError> {
        let mut keyring = Keyring {
            master,
            current_epoch: self.current_epoch,
            data_keys: BTreeMap::new(),
            chunk_id_key: Zeroizing::new([0u8; 32]),
        };
        if self.compute_mac(&keyring) != self.mac {
            return Err(CryptoError::KeyFile(
                "its authentication code does not match (slots, epochs or keys were changed without the key)".into(),
            ));
        }
        let altered = || CryptoError::KeyFile("a wrapped key does not open".into());
        keyring.chunk_id_key = unwrap(
            &keyring.master,
            &self.chunk_ids.nonce,
            &self.chunk_ids.wrapped,
            CHUNK_IDS_AAD,
        )?
        .ok_or_else(altered)?;
        for (epoch, key) in &self.epochs {
            let data_key = unwrap(
                &keyring.master,
                &key.nonce,
                &key.wrapped,
                &epoch_aad(*epoch),
            )?
            .ok_or_else(altered)?;
            keyring.data_keys.insert(*epoch, data_key);
        }
        Ok(keyring)
    }

    /// Open the keys with `passphrase` and check the file was not altered.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<Keyring, CryptoError> {
        for slot in &self.slots {
            if slot.kdf != "argon2id" {
                return Err(CryptoError::KeyFile(format!(
                    "slot {} is malformed",
                    slot.id
                )));
            }
            let salt = unhex(&slot.salt, "a slot's salt")?;
            let key = passphrase_key(passphrase, &salt, slot.params)?;
            let aad = slot_aad(slot.id, slot.params);
            if let Some(master) = unwrap(&key, &slot.nonce, &slot.wrapped, &aad)? {
                return self.open_with(master);
            }
        }
        Err(CryptoError::WrongPassphrase)
    }

    /// A new slot for `passphrase`, opened by the unlocked `keyring`.
    pub fn add_slot(
        &mut self,
        keyring: &Keyring,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<u32, CryptoError> {
        check_params(params)?;
        if self.slots.len() >= MAX_SLOTS {
            return Err(CryptoError::KeyOperation(format!(
                "the repository already has {MAX_SLOTS} key slots: remove one first"
            )));
        }
        let id = self.slots.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        self.slots.push(keyring.new_slot(id, passphrase, params)?);
        self.mac = self.compute_mac(keyring);
        Ok(id)
    }

    /// Remove slot `id`; never the last one (the repository would be unreadable for ever).
    pub fn remove_slot(&mut self, keyring: &Keyring, id: u32) -> Result<(), CryptoError> {
        if !self.slots.iter().any(|s| s.id == id) {
            return Err(CryptoError::KeyOperation(format!(
                "there is no key slot {id}"
            )));
        }
        if self.slots.len() == 1 {
            return Err(CryptoError::KeyOperation(format!(
                "slot {id} is the only one: add another passphrase first (key add), or the repository can never be read again"
            )));
        }
        self.slots.retain(|s| s.id != id);
        self.mac = self.compute_mac(keyring);
        Ok(())
    }

    /// This key file's keys sealed for a host-local cache under a key derived quickly
    /// (BLAKE3, not Argon2id) from `passphrase`: the cache spares every `wal push` the
    /// passphrase's deliberate cost, and is only as strong as the passphrase itself.
    pub fn cache_entry(
        &self,
        keyring: &Keyring,
        passphrase: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let salt = random::<16>()?;
        let key = cache_key(passphrase, &salt);
        let (nonce, wrapped) = wrap(&key, keyring.master.as_ref(), self.mac.as_bytes())?;
        Ok(format!("{}\n{nonce}\n{wrapped}\n", hex(&salt)).into_bytes())
    }

    /// The keyring from a cache entry made by [`KeyFile::cache_entry`] for this very key file
    /// and passphrase; `None` when it does not open (then unlock the slow way).
    pub fn unlock_cached(&self, entry: &[u8], passphrase: &[u8]) -> Option<Keyring> {
        let text = std::str::from_utf8(entry).ok()?;
        let mut lines = text.lines();
        let (salt, nonce, wrapped) = (lines.next()?, lines.next()?, lines.next()?);
        let key = cache_key(passphrase, &unhex(salt, "salt").ok()?);
        let master = unwrap(&key, nonce, wrapped, self.mac.as_bytes()).ok()??;
        self.open_with(master).ok()
    }

    /// Start a new data epoch with a new random data key: objects sealed from now on use it;
    /// older ones keep theirs.
    pub fn rotate(&mut self, keyring: &Keyring) -> Result<Keyring, CryptoError> {
        if self.epochs.len() >= MAX_EPOCHS {
            return Err(CryptoError::KeyOperation(format!(
                "the repository already has {MAX_EPOCHS} data epochs"
            )));
        }
        let epoch = self.epochs.keys().max().copied().unwrap_or(0) + 1;
        let key = Zeroizing::new(random::<32>()?);
        let (nonce, wrapped) = wrap(&keyring.master, key.as_ref(), &epoch_aad(epoch))?;
        self.epochs.insert(epoch, WrappedKey { nonce, wrapped });
        self.current_epoch = epoch;
        let mut data_keys = keyring.data_keys.clone();
        data_keys.insert(epoch, key);
        let next = Keyring {
            master: keyring.master.clone(),
            current_epoch: epoch,
            data_keys,
            chunk_id_key: keyring.chunk_id_key.clone(),
        };
        self.mac = self.compute_mac(&next);
        Ok(next)
    }

    /// Replace the master key and start a new epoch: every key is re-wrapped under a new
    /// master key, which only `passphrase` (in a new slot) opens; the other slots are dropped
    /// (their ids are returned: add their passphrases again). Whoever kept an older key file
    /// and an old passphrase opens nothing sealed from now on.
    pub fn replace_master(
        &mut self,
        keyring: &Keyring,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<(Keyring, Vec<u32>), CryptoError> {
        check_params(params)?;
        let mut next = self.rotate(keyring)?;
        next.master = Zeroizing::new(random::<32>()?);
        let id = self.slots.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        let dropped = self.slots.iter().map(|s| s.id).collect();
        let mut file = KeyFile::wrapping(&next)?;
        file.slots.push(next.new_slot(id, passphrase, params)?);
        file.mac = file.compute_mac(&next);
        *self = file;
        Ok((next, dropped))
    }
}

fn check_params(params: KdfParams) -> Result<(), CryptoError> {
    let fits = (8..=MAX_KDF_MEMORY_KIB).contains(&params.memory_kib)
        && (1..=MAX_KDF_ITERATIONS).contains(&params.iterations)
        && (1..=MAX_KDF_PARALLELISM).contains(&params.parallelism);
    if fits {
        return Ok(());
    }
    Err(CryptoError::KeyFile(format!(
        "Argon2id parameters m={} KiB t={} p={} are out of bounds (at most {MAX_KDF_MEMORY_KIB} KiB, {MAX_KDF_ITERATIONS} passes, {MAX_KDF_PARALLELISM} lanes)",
        params.memory_kib, params.iterations, params.parallelism
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap Argon2id for tests: the format, not the cost, is under test.
    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn keyring() -> (KeyFile, Keyring) {
        KeyFile::create(b"correct horse", FAST).expect("create")
    }

    #[test]
    fn a_passphrase_opens_its_slot_and_a_wrong_one_says_so() {
        let (file, keyring) = keyring();
        let json = file.to_json();
        let text = String::from_utf8_lossy(&json);
        assert!(!text.contains("correct horse"));
        let back = KeyFile::from_json(&json).expect("parses");
        let opened = back.unlock(b"correct horse").expect("opens");
        assert_eq!(*opened.chunk_id_key(), *keyring.chunk_id_key());
        assert_eq!(
            back.unlock(b"wrong").err(),
            Some(CryptoError::WrongPassphrase)
        );
    }

    #[test]
    fn slots_are_added_and_removed_but_never_the_last() {
        let (mut file, keyring) = keyring();
        let id = file.add_slot(&keyring, b"second", FAST).expect("add");
        assert!(file.unlock(b"second").is_ok());
        file.remove_slot(&keyring, 1).expect("remove the first");
        assert_eq!(
            file.unlock(b"correct horse").err(),
            Some(CryptoError::WrongPassphrase)
        );
        let last = file
            .remove_slot(&keyring, id)
            .expect_err("the last slot stays");
        assert!(last.to_string().contains("only one"), "{last}");
        assert!(file.unlock(b"second").is_ok());
    }

    #[test]
    fn rotation_seals_new_objects_under_a_new_epoch_and_old_ones_still_open() {
        let (mut file, keyring) = keyring();
        let plain = b"a WAL segment";
        let old = crate::sealed::seal(&keyring, "wal/1", plain).expect("seal");
        let rotated = file.rotate(&keyring).expect("rotate");
        assert_eq!(rotated.current_epoch(), 2);
        let reopened = file.unlock(b"correct horse").expect("opens after rotation");
        let new = crate::sealed::seal(&reopened, "wal/2", plain).expect("seal");
        assert_eq!(crate::sealed::epoch_of("wal/1", &old).expect("sealed"), 1);
        assert_eq!(crate::sealed::epoch_of("wal/2", &new).expect("sealed"), 2);
        assert_eq!(
            crate::sealed::open(&reopened, "wal/1", &old).expect("epoch 1"),
            plain
        );
        assert_eq!(
            crate::sealed::open(&reopened, "wal/2", &new).expect("epoch 2"),
            plain
        );
    }

    #[test]
    fn a_cache_entry_opens_only_with_its_passphrase_and_key_file() {
        let (mut file, keyring) = keyring();
        let entry = file.cache_entry(&keyring, b"correct horse").expect("entry");
        let cached = file.unlock_cached(&entry, b"correct horse").expect("opens");
        assert_eq!(*cached.chunk_id_key(), *keyring.chunk_id_key());
        assert!(file.unlock_cached(&entry, b"wrong").is_none());
        assert!(file.unlock_cached(&entry[..20], b"correct horse").is_none());
        file.rotate(&keyring).expect("rotate");
        assert!(
            file.unlock_cached(&entry, b"correct horse").is_none(),
            "a changed key file must invalidate the cache"
        );
    }

    #[test]
    fn a_new_master_key_locks_out_old_passphrases_even_with_an_old_key_file() {
        let (mut file, keyring) = keyring();
        file.add_slot(&keyring, b"leaked", FAST).expect("add");
        let old_file = file.clone();
        let old_object = crate::sealed::seal(&keyring, "wal/1", b"before").expect("seal");
        let (next, dropped) = file
            .replace_master(&keyring, b"correct horse", FAST)
            .expect("new master");
        assert_eq!(dropped, vec![1, 2]);
        assert_eq!(file.slots.len(), 1);
        let new_object = crate::sealed::seal(&next, "wal/2", b"after").expect("seal");
        // The new key file opens everything, old and new, with the passphrase kept.
        let reopened = file.unlock(b"correct horse").expect("opens");
        assert_eq!(
            crate::sealed::open(&reopened, "wal/1", &old_object).expect("old"),
            b"before"
        );
        assert_eq!(
            crate::sealed::open(&reopened, "wal/2", &new_object).expect("new"),
            b"after"
        );
        assert_eq!(
            file.unlock(b"leaked").err(),
            Some(CryptoError::WrongPassphrase)
        );
        // The leaked passphrase with the old key file opens nothing sealed since.
        let attacker = old_file
            .unlock(b"leaked")
            .expect("the old file still opens");
        assert!(crate::sealed::open(&attacker, "wal/2", &new_object).is_err());
        // Nor can the old file's master key open the new one.
        assert!(file.open_with(attacker.master.clone()).is_err());
    }

    #[test]
    fn a_key_file_asking_for_too_much_is_refused_before_any_work() {
        let (file, _) = keyring();
        let mut huge_epoch: serde_json::Value =
            serde_json::from_slice(&file.to_json()).expect("json");
        huge_epoch["current_epoch"] = serde_json::json!(u32::MAX);
        let refused = KeyFile::from_json(huge_epoch.to_string().as_bytes());
        assert!(
            matches!(refused, Err(CryptoError::KeyFile(_))),
            "{refused:?}"
        );
        let mut greedy = file.clone();
        greedy.slots[0].params.memory_kib = u32::MAX;
        let refused = KeyFile::from_json(&greedy.to_json());
        assert!(
            matches!(refused, Err(CryptoError::KeyFile(_))),
            "{refused:?}"
        );
        // A field the MAC covers, changed: refused even with the right passphrase.
        let mut renamed = file.clone();
        renamed.slots[0].created_at = "2000-01-01T00:00:00Z".into();
        assert!(matches!(
            renamed.unlock(b"correct horse"),
            Err(CryptoError::KeyFile(_))
        ));
    }

    #[test]
    fn an_altered_key_file_is_refused() {
        let (mut file, keyring) = keyring();
        file.add_slot(&keyring, b"second", FAST).expect("add");
        let mut forged = file.clone();
        forged.current_epoch = 7;
        assert!(matches!(
            forged.unlock(b"second"),
            Err(CryptoError::KeyFile(_))
        ));
        let mut dropped = file.clone();
        dropped.slots.remove(0);
        assert!(matches!(
            dropped.unlock(b"second"),
            Err(CryptoError::KeyFile(_))
        ));
    }
}
