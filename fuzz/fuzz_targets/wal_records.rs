//! The PITR check scans archived WAL for transaction records: any bytes must be survivable.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = storage::wal::parse_segment_header(data);
    let _ = storage::wal::last_transaction_time(data);
});
