//! Anything read from the repository is decoded: corrupt bytes must give an error, never a
//! panic and never plaintext that fails its checksum.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(plain) = storage::object::decode("fuzz", data) {
        let header = storage::ObjectHeader::parse("fuzz", data).expect("decoded, so it parses");
        assert_eq!(storage::object::checksum(&plain), header.checksum);
    }
});
