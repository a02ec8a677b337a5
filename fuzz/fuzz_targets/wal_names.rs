//! Names come from PostgreSQL (%f, %p) and from repository keys: parsing must never panic,
//! and whatever parses must print back to the same name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use storage::wal::{Lsn, WalFileName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(name) = text.parse::<WalFileName>() {
        assert_eq!(name.to_string(), text);
        let _ = name.segment(16 << 20);
        let _ = storage::layout::parse_wal_key(&storage::layout::wal_key(1, &name));
    }
    if let Ok(lsn) = text.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
    }
    let _ = storage::wal::parse_history(text);
    let _ = storage::layout::parse_manifest_key(text);
});
