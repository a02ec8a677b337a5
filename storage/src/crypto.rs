//! Repository encryption: keys, key slots and the sealed object format.
//!
//! A repository's master key is 256 random bits, stored only wrapped in key slots: each slot
//! seals it with XChaCha20-Poly1305 under a key derived from one passphrase by Argon2id (the
//! parameters and salt are recorded in the slot). Changing or adding a passphrase rewrites a
//! slot, never data. Keys per purpose are derived from the master key with BLAKE3's key
//! derivation: one data key per epoch (`key rotate` starts a new epoch; older objects keep
//! theirs), one for chunk ids (keyed BLAKE3, so an id says nothing of the content while equal
//! chunks still share one), one to authenticate the key file itself.
//!
//! Objects are sealed with the data keys in [`crate::sealed`].

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const NONCE_LEN: usize = 24;
const KEY_FILE_FORMAT: u32 = 1;

/// Why a key or a sealed object could not be used. None of them prints a key or a passphrase.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "the passphrase opens none of the repository's key slots: it is not one of this repository's passphrases"
    )]
    WrongPassphrase,
    #[error("{key}: {reason}")]
    Refused { key: String, reason: String },
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

/// `keys.json` at the root of an encrypted repository: the slots, the data epochs and a MAC
/// (under the master key) over everything else, so that an epoch cannot be forged or removed
/// by someone who can write to the bucket but has no passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub format: u32,
    pub slots: Vec<KeySlot>,
    /// The epoch new objects are sealed under.
    pub current_epoch: u32,
    /// Keyed BLAKE3 (authentication key) of the format, the epoch and each slot's wrapping.
    pub mac: String,
}

/// The unlocked master key and what derives from it. No `Debug` of the keys.
pub struct Keyring {
    master: Zeroizing<[u8; 32]>,
    current_epoch: u32,
    data_keys: BTreeMap<u32, Zeroizing<[u8; 32]>>,
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

impl Keyring {
    /// A new master key, at epoch 1.
    pub fn generate() -> Result<Keyring, CryptoError> {
        Ok(Keyring::from_master(Zeroizing::new(random::<32>()?), 1))
    }

    fn from_master(master: Zeroizing<[u8; 32]>, current_epoch: u32) -> Keyring {
        let mut keyring = Keyring {
            master,
            current_epoch,
            data_keys: BTreeMap::new(),
        };
        for epoch in 1..=current_epoch {
            let key = keyring.derive(&format!("lifeline 2026-11 data key epoch {epoch}"));
            keyring.data_keys.insert(epoch, key);
        }
        keyring
    }

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
    pub fn new_slot(
        &self,
        id: u32,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<KeySlot, CryptoError> {
        let salt = random::<16>()?;
        let nonce = random::<NONCE_LEN>()?;
        let key = passphrase_key(passphrase, &salt, params)?;
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let aad = slot_aad(id, params);
        let payload = Payload {
            msg: self.master.as_ref(),
            aad: &aad,
        };
        let wrapped = cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .map_err(|_| CryptoError::KeyOperation("sealing the key slot failed".into()))?;
        Ok(KeySlot {
            id,
            kdf: "argon2id".into(),
            params,
            salt: hex(&salt),
            nonce: hex(&nonce),
            wrapped: hex(&wrapped),
            created_at: jiff::Timestamp::now().to_string(),
        })
    }

    /// The data key of `epoch`, if the key file has that epoch.
    pub(crate) fn data_key(&self, epoch: u32) -> Option<&[u8; 32]> {
        self.data_keys.get(&epoch).map(|key| &**key)
    }

    pub(crate) fn chunk_id_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive("lifeline 2026-11 chunk ids")
    }
}

impl KeyFile {
    /// A new key file with one slot for `passphrase`, and the keyring it opens.
    pub fn create(passphrase: &[u8], params: KdfParams) -> Result<(KeyFile, Keyring), CryptoError> {
        let keyring = Keyring::generate()?;
        let slot = keyring.new_slot(1, passphrase, params)?;
        let mut file = KeyFile {
            format: KEY_FILE_FORMAT,
            slots: vec![slot],
            current_epoch: keyring.current_epoch,
            mac: String::new(),
        };
        file.mac = file.compute_mac(&keyring);
        Ok((file, keyring))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<KeyFile, CryptoError> {
        let file: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| CryptoError::KeyFile(e.to_string()))?;
        if file.format != KEY_FILE_FORMAT {
            return Err(CryptoError::KeyFile(format!(
                "key file format {} is not supported by this lifeline; upgrade lifeline",
                file.format
            )));
        }
        Ok(file)
    }

    fn compute_mac(&self, keyring: &Keyring) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&keyring.mac_key());
        hasher.update(&self.format.to_le_bytes());
        hasher.update(&self.current_epoch.to_le_bytes());
        for slot in &self.slots {
            hasher.update(&slot.id.to_le_bytes());
            hasher.update(slot.salt.as_bytes());
            hasher.update(slot.nonce.as_bytes());
            hasher.update(slot.wrapped.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }

    /// Open the master key with `passphrase` and check the file was not altered.
    pub fn unlock(&self, passphrase: &[u8]) -> Result<Keyring, CryptoError> {
        for slot in &self.slots {
            let salt = unhex(&slot.salt, "a slot's salt")?;
            let nonce = unhex(&slot.nonce, "a slot's nonce")?;
            let wrapped = unhex(&slot.wrapped, "a slot's key")?;
            if nonce.len() != NONCE_LEN || slot.kdf != "argon2id" {
                return Err(CryptoError::KeyFile(format!(
                    "slot {} is malformed",
                    slot.id
                )));
            }
            let key = passphrase_key(passphrase, &salt, slot.params)?;
            let cipher = XChaCha20Poly1305::new(key.as_ref().into());
            let aad = slot_aad(slot.id, slot.params);
            let Ok(master) = cipher.decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &wrapped,
                    aad: &aad,
                },
            ) else {
                continue;
            };
            let master = Zeroizing::new(master);
            let mut key = Zeroizing::new([0u8; 32]);
            if master.len() != 32 {
                return Err(CryptoError::KeyFile(format!(
                    "slot {} holds no 256-bit key",
                    slot.id
                )));
            }
            key.copy_from_slice(&master);
            let keyring = Keyring::from_master(key, self.current_epoch.max(1));
            if self.compute_mac(&keyring) != self.mac {
                return Err(CryptoError::KeyFile(
                    "its authentication code does not match (slots or epochs were changed without the key)".into(),
                ));
            }
            return Ok(keyring);
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
            return Err(CryptoError::KeyOperation(
                "slot {id} is the only one: add another passphrase first (key add), or the repository can never be read again".replace("{id}", &id.to_string()),
            ));
        }
        self.slots.retain(|s| s.id != id);
        self.mac = self.compute_mac(keyring);
        Ok(())
    }

    /// This key file's master key sealed for a host-local cache under a key derived quickly
    /// (BLAKE3, not Argon2id) from `passphrase`: the cache spares every `wal push` the
    /// passphrase's deliberate cost, and is only as strong as the passphrase itself.
    pub fn cache_entry(
        &self,
        keyring: &Keyring,
        passphrase: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let salt = random::<16>()?;
        let nonce = random::<NONCE_LEN>()?;
        let key = cache_key(passphrase, &salt);
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: keyring.master.as_ref(),
                    aad: self.mac.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::KeyOperation("sealing the key cache failed".into()))?;
        Ok([&salt[..], &nonce[..], &sealed[..]].concat())
    }

    /// The keyring from a cache entry made by [`KeyFile::cache_entry`] for this very key file
    /// and passphrase; `None` when it does not open (then unlock the slow way).
    pub fn unlock_cached(&self, entry: &[u8], passphrase: &[u8]) -> Option<Keyring> {
        let (salt, rest) = entry.split_at_checked(16)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let key = cache_key(passphrase, salt);
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let master = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: self.mac.as_bytes(),
                    },
                )
                .ok()?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if master.len() != 32 {
            return None;
        }
        key.copy_from_slice(&master);
        let keyring = Keyring::from_master(key, self.current_epoch.max(1));
        (self.compute_mac(&keyring) == self.mac).then_some(keyring)
    }

    /// Start a new data epoch: objects sealed from now on use it; older ones keep theirs.
    pub fn rotate(&mut self, keyring: &Keyring) -> Result<Keyring, CryptoError> {
        let next = Keyring::from_master(keyring.master.clone(), keyring.current_epoch + 1);
        self.current_epoch = next.current_epoch;
        self.mac = self.compute_mac(&next);
        Ok(next)
    }
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
