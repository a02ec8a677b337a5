//! Which zstd setting stores a file's chunks in the fewest bytes, learnt while the backup runs.
//!
//! On 256 KiB chunks no single zstd setting is smallest everywhere. Measured on two PostgreSQL
//! databases (benches/README.md, "Compression chosen per file"): on pgbench's tables and
//! indexes zstd's fast strategy with 4-byte matches is 5 % smaller than level 3; on a database
//! of text and mixed columns level 1 is 1 % smaller than level 3 and fast with 4-byte matches
//! 2 % larger. So each file (and each stream) picks for itself: every so often one of its chunks
//! is compressed with every candidate, the smallest is stored, and the file's next chunks use
//! that setting until the next sample. The candidates besides the configured level are zstd's
//! two fastest, so a choice never makes a backup slower than the configured level would.
//! Decompression does not care which setting wrote a frame: restores and old lifelines read
//! every chunk as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// One way of compressing a chunk with zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The repository's configured level.
    Configured,
    /// Level 1's fast strategy with matches from 4 bytes: PostgreSQL pages of short rows.
    FastShortMatches,
    /// Level 1 as zstd defines it.
    Fast,
}

impl Setting {
    /// Every setting a sample tries, the configured level first (it wins ties).
    pub const ALL: [Setting; 3] = [
        Setting::Configured,
        Setting::FastShortMatches,
        Setting::Fast,
    ];

    /// What a WAL segment's part chooses from, by its first piece. On pgbench's WAL (benches/
    /// README.md, "WAL compressed with 4-byte matches") fast with 4-byte matches stores 2.6 %
    /// less than level 3 in half the time; only runs of full-page images of heap pages
    /// compress better at level 3, by about 2 %. Level 1 as zstd defines it is 16 % larger, so
    /// it is not worth a sample.
    pub const FOR_WAL: [Setting; 2] = [Setting::Configured, Setting::FastShortMatches];

    fn index(self) -> u8 {
        match self {
            Setting::Configured => 0,
            Setting::FastShortMatches => 1,
            Setting::Fast => 2,
        }
    }

    fn from_index(index: u8) -> Setting {
        match index {
            1 => Setting::FastShortMatches,
            2 => Setting::Fast,
            _ => Setting::Configured,
        }
    }
}

/// The setting one file's chunks use now; shared by the threads compressing them.
#[derive(Debug, Default)]
pub struct Choice(AtomicU8);

impl Choice {
    fn starting_at(setting: Setting) -> Choice {
        Choice(AtomicU8::new(setting.index()))
    }

    pub fn current(&self) -> Setting {
        Setting::from_index(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, setting: Setting) {
        self.0.store(setting.index(), Ordering::Relaxed);
    }
}

/// How one chunk is to be compressed: with its file's current choice, or, as a sample, with
/// every setting, updating the choice.
#[derive(Debug, Clone)]
pub struct ChunkTuning {
    pub choice: Arc<Choice>,
    pub sample: bool,
}

impl ChunkTuning {
    /// Always the configured level, never a sample (objects stored one at a time).
    pub fn configured() -> ChunkTuning {
        ChunkTuning {
            choice: Arc::default(),
            sample: false,
        }
    }
}

/// One in this many chunks is a sample: 2 extra compressions with the fastest settings per 32
/// chunks cost about 3 % of a level 3 backup's compression time.
pub const SAMPLE_EVERY: u32 = 32;
/// A file of fewer chunks than this does not get a sample of its own at its start: it goes on
/// with the previous file's choice, so thousands of small relations are not all sampled.
pub const OWN_SAMPLE_FROM: u64 = 8;

/// Hands out each chunk's tuning as one reader goes through files (or a stream) in order.
#[derive(Debug)]
pub struct Tuner {
    current: Arc<Choice>,
    since_sample: u32,
}

impl Default for Tuner {
    fn default() -> Self {
        Tuner {
            current: Arc::default(),
            since_sample: SAMPLE_EVERY,
        }
    }
}

impl Tuner {
    /// A new file of about `chunks` chunks starts: it begins with the choice the last file
    /// reached, and samples its first chunk when it is large enough to matter.
    pub fn start_file(&mut self, chunks: u64) {
        self.current = Arc::new(Choice::starting_at(self.current.current()));
        if chunks >= OWN_SAMPLE_FROM {
            self.since_sample = SAMPLE_EVERY;
        }
    }

    /// The tuning of the next chunk of the current file.
    pub fn next_chunk(&mut self) -> ChunkTuning {
        let sample = self.since_sample >= SAMPLE_EVERY;
        self.since_sample = if sample { 1 } else { self.since_sample + 1 };
        ChunkTuning {
            choice: self.current.clone(),
            sample,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(tuner: &mut Tuner, chunks: u64) -> Vec<u64> {
        tuner.start_file(chunks);
        (0..chunks).filter(|_| tuner.next_chunk().sample).collect()
    }

    #[test]
    fn a_large_file_samples_its_first_chunk_then_one_in_every_32() {
        let mut tuner = Tuner::default();
        assert_eq!(samples(&mut tuner, 100), vec![0, 32, 64, 96]);
        assert_eq!(samples(&mut tuner, 40), vec![0, 32]);
    }

    #[test]
    fn small_files_share_one_sample_every_32_chunks() {
        let mut tuner = Tuner::default();
        let sampled: usize = (0..64).map(|_| samples(&mut tuner, 2).len()).sum();
        assert_eq!(
            sampled, 4,
            "128 chunks of small files, one sample per 32 chunks"
        );
    }

    #[test]
    fn a_file_starts_with_the_previous_files_choice_and_keeps_its_own() {
        let mut tuner = Tuner::default();
        tuner.start_file(1);
        let first = tuner.next_chunk();
        assert_eq!(first.choice.current(), Setting::Configured);
        first.choice.set(Setting::FastShortMatches);
        tuner.start_file(1);
        let second = tuner.next_chunk();
        assert_eq!(second.choice.current(), Setting::FastShortMatches);
        second.choice.set(Setting::Fast);
        assert_eq!(first.choice.current(), Setting::FastShortMatches);
    }

    #[test]
    fn every_setting_survives_its_index() {
        for setting in Setting::ALL {
            assert_eq!(Setting::from_index(setting.index()), setting);
        }
    }
}
