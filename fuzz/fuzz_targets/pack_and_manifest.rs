//! Pack indexes and manifests are read back from the repository: never panic on them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = storage::pack::read_index("fuzz", data);
    let _ = storage::manifest::BackupManifest::from_json("fuzz", data);
});
