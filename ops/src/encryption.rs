//! Encrypted repositories: how a repository is opened (sealed when it has a key file, refused
//! when the passphrase and the repository disagree), `repo init`, and the key operations
//! (`key list`, `key add`, `key remove`, `key rotate [--rewrite]`).
//!
//! A repository is encrypted when `keys.json` is at its root. It becomes encrypted at its
//! creation only: `repo init`, or the first write into an empty repository with a passphrase
//! configured. Plaintext and sealed objects never mix: a writer without the passphrase is
//! refused by an encrypted repository, and a passphrase is refused by a plain one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use storage::crypto::{KdfParams, KeyFile, Keyring};
use storage::{
    Durability, PutMode, SealedStorage, Storage, StorageError, StorageExt, layout, sealed,
};

use crate::OpsError;
use crate::passphrase::{self, Passphrase, PassphraseSources};

/// `passphrase-file`, `passphrase-command`, `key-cache`: where the passphrase comes from, and
/// whether the unwrapped key may be cached on this host.
#[derive(Debug, Clone, Default)]
pub struct EncryptionSettings {
    pub passphrase_file: Option<PathBuf>,
    pub passphrase_command: Option<String>,
    /// Cache the unwrapped master key under `$HOME/.cache/lifeline` (default on): a `wal push`
    /// then costs no Argon2id.
    pub key_cache: bool,
    /// Argon2id's cost for new key slots.
    pub kdf: KdfParams,
    /// `require-encryption` / `--require-encryption`: refuse a repository that is not
    /// encrypted (written into `restore_command`, so that a recovering server never takes
    /// WAL from a repository whose key file was removed and plaintext planted).
    pub required: bool,
}

impl EncryptionSettings {
    /// True when the repository is meant to be encrypted: a passphrase source is configured
    /// (or `LIFELINE_PASSPHRASE` is set), or encryption is required.
    pub fn expected(&self) -> bool {
        self.required
            || self.passphrase_file.is_some()
            || self.passphrase_command.is_some()
            || std::env::var_os("LIFELINE_PASSPHRASE").is_some()
    }

    /// The configured passphrase, if any (`LIFELINE_PASSPHRASE` last).
    pub async fn passphrase(&self) -> Result<Option<Passphrase>, OpsError> {
        let environment = std::env::var("LIFELINE_PASSPHRASE").ok();
        passphrase::read(&PassphraseSources {
            file: self.passphrase_file.as_deref(),
            command: self.passphrase_command.as_deref(),
            environment: environment.as_deref(),
        })
        .await
    }

    /// The new passphrase of `key add`: `--new-passphrase-file`, else `LIFELINE_NEW_PASSPHRASE`.
    pub async fn new_passphrase(file: Option<&Path>) -> Result<Passphrase, OpsError> {
        let environment = std::env::var("LIFELINE_NEW_PASSPHRASE").ok();
        passphrase::read(&PassphraseSources {
            file,
            command: None,
            environment: environment.as_deref(),
        })
        .await?
        .ok_or_else(|| {
            OpsError::Setting(
                "no new passphrase: give --new-passphrase-file FILE (mode 600) or set LIFELINE_NEW_PASSPHRASE".into(),
            )
        })
    }
}

/// What a repository is, as far as encryption goes.
enum State {
    Encrypted(KeyFile),
    Plain,
    Empty,
    /// Sealed objects but no key file: nothing can be read, nothing may be written.
    KeyFileMissing,
}

fn refused(message: String) -> OpsError {
    OpsError::Repository(message)
}

async fn inspect(raw: &dyn Storage) -> Result<State, OpsError> {
    match raw.get_bytes(layout::KEYS_KEY).await {
        Ok(bytes) => {
            let file = KeyFile::from_json(&bytes).map_err(|e| {
                refused(format!(
                    "{}: {e}; put back keys.json from a copy (lifeline writes nothing there meanwhile)",
                    raw.describe()
                ))
            })?;
            return Ok(State::Encrypted(file));
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    match raw.get_range(layout::CLUSTER_KEY, 0..4).await {
        Ok(head) if sealed::looks_sealed(&head) => return Ok(State::KeyFileMissing),
        Ok(_) => return Ok(State::Plain),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    // No cluster yet (a new repository, or Redis backups only): look at what is stored.
    for prefix in [
        layout::BACKUPS_PREFIX,
        layout::PACKS_PREFIX,
        layout::WAL_PREFIX,
    ] {
        if let Some(first) = raw.list(prefix).await?.first() {
            let head = raw.get_range(&first.key, 0..4).await?;
            return Ok(if sealed::looks_sealed(&head) {
                State::KeyFileMissing
            } else {
                State::Plain
            });
        }
    }
    Ok(State::Empty)
}

/// Whether the command may make an empty repository encrypted (its first write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// The checks of a write without the write (`SIMULATE_MODE`): an empty repository the
    /// write would make encrypted is left as it is.
    WouldWrite,
}

/// The repository as commands use it: `raw` itself when it is plain, sealed when it is
/// encrypted, refused when the passphrase and the repository disagree.
pub async fn open(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
    access: Access,
) -> Result<Arc<dyn Storage>, OpsError> {
    let passphrase = settings.passphrase().await?;
    let where_ = raw.describe();
    let state = inspect(&*raw).await?;
    // Required: an encrypted repository, or an empty one this very write makes encrypted.
    let becomes_encrypted =
        matches!(state, State::Empty) && passphrase.is_some() && access != Access::Read;
    if settings.required && !matches!(state, State::Encrypted(_)) && !becomes_encrypted {
        return Err(refused(format!(
            "the repository at {where_} is not encrypted (it has no keys.json) but encryption \
             is required: nothing is read from or written to it; if its key file was removed, \
             put keys.json back from a copy"
        )));
    }
    match (state, passphrase) {
        (State::Encrypted(file), Some(passphrase)) => {
            let keyring = unlock(settings, &*raw, &file, &passphrase).await?;
            Ok(Arc::new(SealedStorage::new(raw, Arc::new(keyring))))
        }
        (State::Encrypted(_), None) => Err(refused(format!(
            "the repository at {where_} is encrypted and no passphrase is configured: set \
             passphrase-file (mode 600), passphrase-command or LIFELINE_PASSPHRASE"
        ))),
        (State::KeyFileMissing, _) => Err(refused(format!(
            "the repository at {where_} holds sealed objects but its key file keys.json is \
             missing: put keys.json back from a copy (without it nothing there can be read); \
             lifeline writes nothing there meanwhile"
        ))),
        (State::Plain, Some(_)) => Err(refused(format!(
            "a passphrase is configured but the repository at {where_} is not encrypted: \
             lifeline never mixes plaintext and sealed objects; remove the passphrase setting \
             to use this repository, or start an encrypted one in a new, empty place \
             (lifeline repo init)"
        ))),
        (State::Empty, Some(passphrase)) if access == Access::Write => {
            create(settings, raw, &passphrase).await
        }
        (State::Plain | State::Empty, _) => Ok(raw),
    }
}

/// Make the empty repository `raw` encrypted; `repo init`. Two first writers at once agree on
/// one key file: the second finds the first's and opens it.
pub async fn create(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
    passphrase: &Passphrase,
) -> Result<Arc<dyn Storage>, OpsError> {
    let (params, bytes) = (settings.kdf, passphrase.as_bytes().to_vec());
    let (file, keyring) = tokio::task::spawn_blocking(move || KeyFile::create(&bytes, params))
        .await?
        .map_err(|e| refused(e.to_string()))?;
    match raw
        .put_bytes(
            layout::KEYS_KEY,
            file.to_json(),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
    {
        Ok(()) => {
            remember(settings, &*raw, &file, &keyring, passphrase);
            tracing::info!(
                "{} is now an encrypted repository (key slot 1)",
                raw.describe()
            );
            Ok(Arc::new(SealedStorage::new(raw, Arc::new(keyring))))
        }
        Err(StorageError::AlreadyExists { .. }) => {
            let State::Encrypted(file) = inspect(&*raw).await? else {
                return Err(refused(format!(
                    "{}: keys.json appeared and vanished while it was being created; try again",
                    raw.describe()
                )));
            };
            let keyring = unlock(settings, &*raw, &file, passphrase).await?;
            Ok(Arc::new(SealedStorage::new(raw, Arc::new(keyring))))
        }
        Err(e) => Err(e.into()),
    }
}

/// `repo init`: refuses anything but an empty repository; says what it made.
pub async fn init(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
) -> Result<String, OpsError> {
    let passphrase = may_init(settings, &*raw).await?;
    create(settings, raw.clone(), &passphrase).await?;
    Ok(format!(
        "{} is an encrypted repository: keep the passphrase safe, it cannot be recovered (key \
         add gives it a second one)",
        raw.describe()
    ))
}

/// `repo init`'s checks: a passphrase, and an empty repository.
async fn may_init(
    settings: &EncryptionSettings,
    raw: &dyn Storage,
) -> Result<Passphrase, OpsError> {
    let where_ = raw.describe();
    let Some(passphrase) = settings.passphrase().await? else {
        return Err(OpsError::Setting(
            "repo init needs a passphrase: set passphrase-file (mode 600), passphrase-command or \
             LIFELINE_PASSPHRASE"
                .into(),
        ));
    };
    match inspect(raw).await? {
        State::Empty => Ok(passphrase),
        State::Encrypted(_) => Err(refused(format!(
            "the repository at {where_} is already encrypted: nothing to do (key add gives it \
             another passphrase)"
        ))),
        State::Plain | State::KeyFileMissing => Err(refused(format!(
            "the repository at {where_} already holds backups or WAL: an encrypted repository \
             starts empty; point BACKUP_DIR or S3_BACKUP_BUCKET at a new place"
        ))),
    }
}

async fn unlock(
    settings: &EncryptionSettings,
    raw: &dyn Storage,
    file: &KeyFile,
    passphrase: &Passphrase,
) -> Result<Keyring, OpsError> {
    let cache = settings.key_cache.then(|| cache_path(raw)).flatten();
    if let Some(entry) = cache.as_deref().and_then(|p| std::fs::read(p).ok())
        && let Some(keyring) = file.unlock_cached(&entry, passphrase.as_bytes())
    {
        return Ok(keyring);
    }
    let (owned, bytes) = (file.clone(), passphrase.as_bytes().to_vec());
    let keyring = tokio::task::spawn_blocking(move || owned.unlock(&bytes))
        .await?
        .map_err(|e| match e {
            storage::crypto::CryptoError::WrongPassphrase => OpsError::Setting(format!(
                "wrong passphrase for the repository at {}: it opens none of its key slots; \
                 check passphrase-file, passphrase-command or LIFELINE_PASSPHRASE (nothing was \
                 read or written)",
                raw.describe()
            )),
            other => refused(format!("{}: {other}", raw.describe())),
        })?;
    remember(settings, raw, file, &keyring, passphrase);
    Ok(keyring)
}

/// The key cache of this repository on this host: `$HOME/.cache/lifeline/keys/<id>`, in a
/// directory only this user can enter; `None` when there is no such place.
fn cache_path(raw: &dyn Storage) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let home = PathBuf::from(std::env::var_os("HOME")?);
    let dir = home.join(".cache/lifeline/keys");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let mine = meta.uid() == rustix::process::geteuid().as_raw();
    if !meta.is_dir() || !mine || meta.mode() & 0o077 != 0 {
        return None;
    }
    let id = blake3::hash(raw.describe().as_bytes()).to_hex();
    Some(dir.join(&id[..32]))
}

/// Cache the unwrapped key for the next process; a cache that cannot be written costs only
/// time.
fn remember(
    settings: &EncryptionSettings,
    raw: &dyn Storage,
    file: &KeyFile,
    keyring: &Keyring,
    passphrase: &Passphrase,
) {
    let Some(path) = settings.key_cache.then(|| cache_path(raw)).flatten() else {
        return;
    };
    let Ok(entry) = file.cache_entry(keyring, passphrase.as_bytes()) else {
        return;
    };
    let options = storage::atomic::WriteOptions::private(storage::private::Owner::KEEP);
    if let Err(e) = storage::atomic::write(&path, &entry, options) {
        tracing::debug!("key cache not written: {e}");
    }
}

/// The sealed repository of a key operation, with its key file and the passphrase that opened it.
pub struct Unlocked {
    pub sealed: SealedStorage,
    pub file: KeyFile,
    passphrase: Passphrase,
}

/// Open the encrypted repository `raw` for a key operation (always with the passphrase itself).
pub async fn unlock_for_keys(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
) -> Result<Unlocked, OpsError> {
    let where_ = raw.describe();
    let State::Encrypted(file) = inspect(&*raw).await? else {
        return Err(refused(format!(
            "the repository at {where_} is not encrypted: it has no keys (an encrypted \
             repository starts empty: lifeline repo init)"
        )));
    };
    let Some(passphrase) = settings.passphrase().await? else {
        return Err(OpsError::Setting(
            "key operations need the current passphrase: set passphrase-file, \
             passphrase-command or LIFELINE_PASSPHRASE"
                .into(),
        ));
    };
    let uncached = EncryptionSettings {
        key_cache: false,
        ..settings.clone()
    };
    let keyring = unlock(&uncached, &*raw, &file, &passphrase).await?;
    Ok(Unlocked {
        sealed: SealedStorage::new(raw, Arc::new(keyring)),
        file,
        passphrase,
    })
}

impl Unlocked {
    /// Replace the key file (atomically: one object). The host's cache is refreshed when the
    /// passphrase used still has a slot, and dropped otherwise (`key remove` of one's own
    /// slot must not leave a cache that still opens the repository).
    async fn save(&self, settings: &EncryptionSettings, keyring: &Keyring) -> Result<(), OpsError> {
        let raw = self.sealed.inner();
        raw.put_bytes(
            layout::KEYS_KEY,
            self.file.to_json(),
            PutMode::Overwrite,
            Durability::Immediate,
        )
        .await?;
        if let Some(path) = cache_path(&**raw) {
            let _ = std::fs::remove_file(path);
        }
        let (file, bytes) = (self.file.clone(), self.passphrase.as_bytes().to_vec());
        let still_opens = tokio::task::spawn_blocking(move || file.unlock(&bytes).is_ok()).await?;
        if still_opens {
            remember(settings, &**raw, &self.file, keyring, &self.passphrase);
        }
        Ok(())
    }
}

/// A key operation `SIMULATE_MODE` describes instead of doing (`repo init`: [`preview_init`]).
#[derive(Debug, Clone, Copy)]
pub enum KeyChange {
    Add,
    Remove(u32),
    Rotate(RotateHow),
}

/// What `repo init` would do, after its checks (a passphrase, an empty repository).
pub async fn preview_init(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
) -> Result<String, OpsError> {
    may_init(settings, &*raw).await?;
    Ok(format!(
        "would make {} an encrypted repository",
        raw.describe()
    ))
}

/// What `change` would do, after every check it runs before it writes (the passphrase
/// unlocks the repository, the slot exists and is not the last); nothing is written.
pub async fn preview(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
    change: KeyChange,
) -> Result<String, OpsError> {
    let where_ = raw.describe();
    let unlocked = unlock_for_keys(settings, raw).await?;
    Ok(match change {
        KeyChange::Add => format!("would add a key slot to {where_}"),
        KeyChange::Remove(slot) => {
            let mut file = unlocked.file.clone();
            file.remove_slot(unlocked.sealed.keyring(), slot)
                .map_err(|e| refused(e.to_string()))?;
            format!("would remove key slot {slot} from {where_}")
        }
        KeyChange::Rotate(how) => {
            let epoch = match how.resume {
                true => format!(
                    "finish re-sealing under data key epoch {}",
                    unlocked.file.current_epoch
                ),
                false => format!("start data key epoch {}", unlocked.file.current_epoch + 1),
            };
            let master = match how.new_master {
                true => {
                    " with a new master key (every other slot is dropped: key add their passphrases again)"
                }
                false => "",
            };
            let rewrite = match how.rewrite {
                true => ", re-sealing every object under it",
                false => " for what is written from now on",
            };
            format!("would {epoch}{master} in {where_}{rewrite}")
        }
    })
}

/// One line per key slot, and the current data epoch.
pub fn describe_slots(file: &KeyFile) -> Vec<String> {
    let mut lines: Vec<String> = file
        .slots
        .iter()
        .map(|s| {
            format!(
                "slot {}  {}  m={} KiB t={} p={}  created {}",
                s.id,
                s.kdf,
                s.params.memory_kib,
                s.params.iterations,
                s.params.parallelism,
                s.created_at
            )
        })
        .collect();
    lines.push(format!(
        "data key epoch {} (new objects are sealed under it)",
        file.current_epoch
    ));
    lines
}

/// `key list`: needs no passphrase (the slots hide nothing).
pub async fn list(raw: Arc<dyn Storage>) -> Result<Vec<String>, OpsError> {
    match inspect(&*raw).await? {
        State::Encrypted(file) => Ok(describe_slots(&file)),
        _ => Err(refused(format!(
            "the repository at {} is not encrypted: it has no keys",
            raw.describe()
        ))),
    }
}

/// `key add`: a new slot for `new`; returns its number. No data is rewritten.
pub async fn add(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
    new: &Passphrase,
) -> Result<u32, OpsError> {
    let mut unlocked = unlock_for_keys(settings, raw).await?;
    let keyring = unlocked.sealed.keyring().clone();
    let (mut file, bytes, params) = (unlocked.file.clone(), new.as_bytes().to_vec(), settings.kdf);
    let (file, id) = tokio::task::spawn_blocking(move || {
        let id = file.add_slot(&keyring, &bytes, params)?;
        Ok::<_, storage::crypto::CryptoError>((file, id))
    })
    .await?
    .map_err(|e| refused(e.to_string()))?;
    unlocked.file = file;
    unlocked
        .save(settings, &unlocked.sealed.keyring().clone())
        .await?;
    Ok(id)
}

/// `key remove SLOT`: never the last slot.
pub async fn remove(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
    slot: u32,
) -> Result<(), OpsError> {
    let mut unlocked = unlock_for_keys(settings, raw).await?;
    let keyring = unlocked.sealed.keyring().clone();
    unlocked
        .file
        .remove_slot(&keyring, slot)
        .map_err(|e| refused(e.to_string()))?;
    unlocked.save(settings, &keyring).await
}

/// What `key rotate` did.
#[derive(Debug, Default)]
pub struct Rotation {
    pub epoch: u32,
    /// With a new master key: the slots dropped (their passphrases must be added again).
    pub dropped_slots: Vec<u32>,
    /// Objects re-sealed under the new epoch, and those already under it.
    pub resealed: u64,
    pub current: u64,
}

impl Rotation {
    /// The line about dropped slots, if any.
    pub fn dropped(&self) -> String {
        if self.dropped_slots.is_empty() {
            return String::new();
        }
        format!(
            "new master key: slots {:?} were dropped, add their passphrases again (key add)\n",
            self.dropped_slots
        )
    }
}

/// How `key rotate` runs: `rewrite` re-seals the existing objects, `resume` finishes an
/// interrupted rewrite without a new epoch, `new_master` also replaces the master key.
#[derive(Debug, Clone, Copy, Default)]
pub struct RotateHow {
    pub rewrite: bool,
    pub resume: bool,
    pub new_master: bool,
}

/// `key rotate`: a new data epoch for everything written from now on. With `rewrite`, every
/// older object is re-sealed under it (resumable: `resume` continues under the current epoch
/// without starting another). Each object is replaced whole and read back first, so an
/// interruption leaves every object readable.
pub async fn rotate(
    settings: &EncryptionSettings,
    raw: Arc<dyn Storage>,
    how: RotateHow,
) -> Result<Rotation, OpsError> {
    let RotateHow {
        rewrite,
        resume,
        new_master,
    } = how;
    let mut unlocked = unlock_for_keys(settings, raw).await?;
    let mut keyring = unlocked.sealed.keyring().clone();
    let mut dropped_slots = Vec::new();
    if !resume {
        let rotated = if new_master {
            let (file, current, bytes, params) = (
                unlocked.file.clone(),
                keyring.clone(),
                unlocked.passphrase.as_bytes().to_vec(),
                settings.kdf,
            );
            let (file, next, dropped) = tokio::task::spawn_blocking(move || {
                let mut file = file;
                let (next, dropped) = file.replace_master(&current, &bytes, params)?;
                Ok::<_, storage::crypto::CryptoError>((file, next, dropped))
            })
            .await?
            .map_err(|e| refused(e.to_string()))?;
            unlocked.file = file;
            dropped_slots = dropped;
            next
        } else {
            unlocked
                .file
                .rotate(&keyring)
                .map_err(|e| refused(e.to_string()))?
        };
        keyring = Arc::new(rotated);
        unlocked.save(settings, &keyring).await?;
    }
    let mut rotation = Rotation {
        epoch: keyring.current_epoch(),
        dropped_slots,
        ..Rotation::default()
    };
    if !rewrite {
        return Ok(rotation);
    }
    let sealed = SealedStorage::new(unlocked.sealed.inner().clone(), keyring);
    let keys = sealed.inner().list("").await?;
    for meta in keys.iter().filter(|m| is_repository_object(&m.key)) {
        match sealed.reseal(&meta.key).await {
            Ok(true) => rotation.resealed += 1,
            Ok(false) => rotation.current += 1,
            // Deleted meanwhile (prune, a finished restore's lease): nothing to re-seal.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(refused(format!(
                    "{e}; {} objects were re-sealed so far, all readable: run lifeline key \
                     rotate --rewrite --resume to finish",
                    rotation.resealed
                )));
            }
        }
    }
    Ok(rotation)
}

/// The objects `--rewrite` re-seals: what the repository keeps (not the key file, nor in a
/// local repository the catalog, logs and spool beside it). Leases and the prune state are
/// left alone: their owners rewrite them (under the current epoch) while they run, and a
/// re-seal racing with them could bring back a lease just released or undo a lock renewal.
fn is_repository_object(key: &str) -> bool {
    key == layout::CLUSTER_KEY
        || [
            layout::WAL_PREFIX,
            layout::BACKUPS_PREFIX,
            layout::PACKS_PREFIX,
        ]
        .iter()
        .any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(required: bool) -> EncryptionSettings {
        EncryptionSettings {
            passphrase_command: Some("echo correct horse".into()),
            key_cache: false,
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            required,
            ..EncryptionSettings::default()
        }
    }

    #[tokio::test]
    async fn required_encryption_lets_the_first_write_create_it_and_refuses_a_plain_repository() {
        let empty: Arc<dyn Storage> = Arc::new(testing::MemoryStorage::new());
        let read = open(&settings(true), empty.clone(), Access::Read).await;
        assert!(
            read.is_err(),
            "an empty repository read while encryption is required"
        );
        let written = open(&settings(true), empty.clone(), Access::Write)
            .await
            .expect("created");
        assert!(written.describe().ends_with("(encrypted)"));
        assert!(open(&settings(true), empty, Access::Read).await.is_ok());

        let plain: Arc<dyn Storage> = Arc::new(testing::MemoryStorage::new());
        plain
            .put_bytes(
                layout::CLUSTER_KEY,
                b"{}".to_vec(),
                PutMode::Create,
                Durability::Immediate,
            )
            .await
            .expect("put");
        let no_passphrase = EncryptionSettings {
            passphrase_command: None,
            ..settings(true)
        };
        let refused = open(&no_passphrase, plain, Access::Write)
            .await
            .expect_err("refused");
        assert!(
            refused.to_string().contains("encryption is required"),
            "{refused}"
        );
    }
}
