use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use ops::encryption::{self as keys, EncryptionSettings};

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// The key slots and the current data epoch (no passphrase needed).
    List,
    /// Add a passphrase (--new-passphrase-file, or LIFELINE_NEW_PASSPHRASE); rewrites no data.
    Add {
        /// A file holding the new passphrase, readable by its owner only.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Remove a key slot (never the last one).
    Remove { slot: u32 },
    /// A new data epoch for what is written from now on (--new-master: after a leak).
    Rotate {
        #[arg(long, help = "Re-seal every existing object under the new epoch")]
        rewrite: bool,
        #[arg(long, requires = "rewrite", help = "Finish a --rewrite")]
        resume: bool,
        #[arg(long, conflicts_with = "resume", help = "A new master key too")]
        new_master: bool,
    },
}

/// `repo init` and `key ...`: the logic is in `ops::encryption`.
pub async fn run(cmd: Option<KeyCommand>, settings: &ops::Settings) -> Result<ExitCode> {
    if settings.ops.simulate
        && let Some(would) = simulated(&cmd, settings).await?
    {
        println!("SIMULATE_MODE: {would}\nnothing was changed: unset SIMULATE_MODE to do it");
        return Ok(ExitCode::SUCCESS);
    }
    let (encryption, raw) = (
        &settings.encryption,
        settings.unsealed_repository(true).await?,
    );
    let line = match cmd {
        None => {
            keys::init(encryption, raw.clone()).await?;
            format!(
                "{} is an encrypted repository: keep the passphrase safe, it cannot be recovered",
                raw.describe()
            )
        }
        Some(KeyCommand::List) => keys::list(raw).await?.join("\n"),
        Some(KeyCommand::Add {
            new_passphrase_file,
        }) => {
            let new = EncryptionSettings::new_passphrase(new_passphrase_file.as_deref()).await?;
            format!("added key slot {}", keys::add(encryption, raw, &new).await?)
        }
        Some(KeyCommand::Remove { slot }) => {
            keys::remove(encryption, raw, slot).await?;
            format!("removed key slot {slot}")
        }
        Some(KeyCommand::Rotate {
            rewrite,
            resume,
            new_master,
        }) => {
            let how = keys::RotateHow {
                rewrite,
                resume,
                new_master,
            };
            let r = keys::rotate(encryption, raw, how).await?;
            if !r.dropped_slots.is_empty() {
                println!(
                    "new master key: slots {:?} were dropped; key add their passphrases again",
                    r.dropped_slots
                );
            }
            format!(
                "data key epoch {}: {} objects re-sealed, {} already under it",
                r.epoch, r.resealed, r.current
            )
        }
    };
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// Under `SIMULATE_MODE`, what the command would do, after its checks; `None` for `key list`,
/// which changes nothing and runs.
async fn simulated(cmd: &Option<KeyCommand>, settings: &ops::Settings) -> Result<Option<String>> {
    let encryption = &settings.encryption;
    let change = match cmd {
        None => {
            let raw = settings.unsealed_repository(false).await?;
            return Ok(Some(keys::preview_init(encryption, raw).await?));
        }
        Some(KeyCommand::List) => return Ok(None),
        Some(KeyCommand::Add {
            new_passphrase_file,
        }) => {
            EncryptionSettings::new_passphrase(new_passphrase_file.as_deref()).await?;
            keys::KeyChange::Add
        }
        Some(KeyCommand::Remove { slot }) => keys::KeyChange::Remove(*slot),
        Some(KeyCommand::Rotate {
            rewrite,
            resume,
            new_master,
        }) => keys::KeyChange::Rotate(keys::RotateHow {
            rewrite: *rewrite,
            resume: *resume,
            new_master: *new_master,
        }),
    };
    let raw = settings.unsealed_repository(false).await?;
    Ok(Some(keys::preview(encryption, raw, change).await?))
}
