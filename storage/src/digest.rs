//! The 32-byte names a manifest gives its chunks and packs.
//!
//! A manifest holds one chunk entry per 256 KiB block of the database, so each is kept as 32
//! bytes rather than 64 hex digits on the heap: a chunk entry is a plain value of 88 bytes, and
//! a restore plans every block of a terabyte in a few hundred MiB. They are written (in
//! manifests and pack indexes) as 64 lowercase hex digits, and anything else is refused when a
//! manifest is read, before a name can become a path.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

macro_rules! digest {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                $name(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The 64 hex digits it is written as.
            pub fn to_hex(&self) -> String {
                self.to_string()
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(hash: blake3::Hash) -> Self {
                $name(*hash.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                parse_hex(text)
                    .map($name)
                    .ok_or_else(|| format!("{text:?} is not {}", $what))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(HexVisitor($what)).map($name)
            }
        }
    };
}

digest!(
    /// The blake3 of a chunk's plaintext (keyed, in an encrypted repository): its name.
    ChunkHash,
    "a chunk hash (64 hex digits)"
);
digest!(
    /// The blake3 of a pack's bytes (keyed, in an encrypted repository): its name.
    PackId,
    "a pack id (64 hex digits)"
);

/// 64 hex digits, either case, as 32 bytes.
fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    blake3::Hash::from_hex(text).ok().map(|h| *h.as_bytes())
}

struct HexVisitor(&'static str);

impl Visitor<'_> for HexVisitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<[u8; 32], E> {
        parse_hex(text).ok_or_else(|| E::invalid_value(de::Unexpected::Str(text), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn written_as_the_hex_it_was_read_from() {
        let hash: ChunkHash = HEX.parse().expect("hex");
        assert_eq!(hash.to_hex(), HEX);
        let json = serde_json::to_string(&hash).expect("json");
        assert_eq!(json, format!("\"{HEX}\""));
        assert_eq!(
            serde_json::from_str::<ChunkHash>(&json).expect("parses"),
            hash
        );
        let upper: PackId = HEX.to_uppercase().parse().expect("upper-case hex");
        assert_eq!(upper.to_hex(), HEX);
        assert_eq!(ChunkHash::from(blake3::hash(b"")), hash);
    }

    #[test]
    fn anything_but_64_hex_digits_is_refused() {
        for bad in [
            "",
            "ab",
            &HEX[1..],
            &format!("{HEX}0"),
            "../../etc",
            &HEX.replace('a', "g"),
        ] {
            assert!(bad.parse::<PackId>().is_err(), "{bad:?}");
            let json = serde_json::to_string(bad).expect("json");
            let err = serde_json::from_str::<ChunkHash>(&json)
                .expect_err("refused")
                .to_string();
            assert!(err.contains("a chunk hash (64 hex digits)"), "{err}");
        }
        assert!(serde_json::from_str::<ChunkHash>("7").is_err());
    }
}
