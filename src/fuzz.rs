//! Entry points for fuzzing the decoders of on-disk bytes: index records, the totals record,
//! and installer markers. Compiled with the `fuzzing` feature (for `fuzz/`) and in unit
//! tests; not part of the API.
//!
//! Each function decodes arbitrary bytes (it must never panic) and, if they are accepted,
//! checks that encoding the result gives them back (records, totals) or decodes to the same
//! value (markers, whose escapes have more than one spelling). Returns whether they were
//! accepted.

use crate::caches::index::Totals;
use crate::caches::record::Record;
use crate::execs::marker::Marker;

/// The index key the fuzzed records are checked under (a record's checksum covers its key;
/// the decoder's logic does not otherwise depend on it).
pub const RECORD_KEY: &[u8] = b"fuzz-key";

/// An index record (`caches/record.rs`), stored under [`RECORD_KEY`].
pub fn record(bytes: &[u8]) -> bool {
    match Record::decode(RECORD_KEY, bytes) {
        Ok(record) => {
            assert_eq!(
                record.encode(RECORD_KEY),
                bytes,
                "an accepted record re-encodes identically"
            );
            true
        }
        Err(_) => false,
    }
}

/// The totals record of the index (`caches/index.rs`).
pub fn totals(bytes: &[u8]) -> bool {
    match Totals::decode(bytes) {
        Some(totals) => {
            assert_eq!(
                totals.encode(),
                bytes,
                "accepted totals re-encode identically"
            );
            true
        }
        None => false,
    }
}

/// An installer's completion marker (`execs/marker.rs`), from any bytes.
pub fn marker(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    match Marker::decode(&text) {
        Some(marker) => {
            assert_eq!(
                Marker::decode(&marker.encode()).as_ref(),
                Some(&marker),
                "an accepted marker survives encode + decode"
            );
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    //! The same properties under proptest, so stable `cargo test` fuzzes too: random bytes,
    //! and valid encodings with random edits (with the checksum fixed up, or not).

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::caches::record::{Body, Format, Meta};

    fn any_record() -> impl Strategy<Value = Vec<u8>> {
        let body = prop_oneof![
            vec(any::<u8>(), 0..200).prop_map(|b| (false, b, String::new(), 0u32)),
            ("[A-Za-z0-9_-]{1,40}(\\.blob)?", any::<u32>()).prop_map(|(name, crc)| (
                true,
                Vec::new(),
                name,
                crc
            )),
        ];
        (
            any::<[u64; 4]>(),
            proptest::option::of(vec(any::<u8>(), 0..64)),
            body,
            any::<bool>(),
        )
            .prop_map(|(t, key, (blob, inline, name, crc), raw)| {
                let body = if blob {
                    Body::Blob { crc, name: &name }
                } else {
                    Body::Inline(&inline)
                };
                Record {
                    meta: Meta {
                        load_ns: t[0],
                        expire_ns: t[1],
                        order_ns: t[2],
                        payload_len: if blob { t[3] } else { inline.len() as u64 },
                    },
                    stored_key: key.as_deref(),
                    format: if raw {
                        Format::Raw
                    } else {
                        Format::MessagePack
                    },
                    body,
                }
                .encode(RECORD_KEY)
            })
    }

    fn any_totals() -> impl Strategy<Value = Vec<u8>> {
        any::<[u64; 6]>().prop_map(|f| {
            Totals {
                entries: f[0],
                bytes: f[1],
                size_limit: f[2],
                hits: f[3],
                misses: f[4],
                evictions: f[5],
            }
            .encode()
        })
    }

    fn any_marker() -> impl Strategy<Value = Vec<u8>> {
        (
            "\\PC{0,30}",
            "\\PC{0,30}",
            "[0-9a-f]{64}",
            "\\PC{0,20}",
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(id, source, sha, file, size, secs)| {
                format!(
                    "dbx-concurio executable v1\nidentifier={id}\nsource={source}\nsha256={sha}\n\
                     file={file}\nsize={size}\ninstalled={secs}\n"
                )
                .into_bytes()
            })
    }

    /// Random byte edits and maybe a truncation; `fix` then repairs the checksum, so the
    /// edits reach the checks behind it.
    fn mutated(
        valid: impl Strategy<Value = Vec<u8>>,
        fix: fn(&mut [u8]),
    ) -> impl Strategy<Value = Vec<u8>> {
        (
            valid,
            vec((any::<usize>(), any::<u8>()), 0..6),
            proptest::option::of(any::<usize>()),
            any::<bool>(),
        )
            .prop_map(move |(mut bytes, edits, cut, fix_crc)| {
                for (at, xor) in edits {
                    if !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] ^= xor;
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut % (bytes.len() + 1));
                }
                if fix_crc {
                    fix(&mut bytes);
                }
                bytes
            })
    }

    fn fix_record_crc(bytes: &mut [u8]) {
        if bytes.len() >= 8 {
            let mut h = crc32fast::Hasher::new();
            h.update(RECORD_KEY);
            h.update(&bytes[..4]);
            h.update(&bytes[8..]);
            bytes[4..8].copy_from_slice(&h.finalize().to_le_bytes());
        }
    }

    fn fix_totals_crc(bytes: &mut [u8]) {
        if let Some(body_len) = bytes.len().checked_sub(4) {
            let crc = crc32fast::hash(&bytes[..body_len]);
            bytes[body_len..].copy_from_slice(&crc.to_le_bytes());
        }
    }

    fn no_fix(_: &mut [u8]) {}

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
            record(&bytes);
            totals(&bytes);
            marker(&bytes);
        }

        #[test]
        fn valid_encodings_are_accepted(r in any_record(), t in any_totals(), m in any_marker()) {
            prop_assert!(record(&r));
            prop_assert!(totals(&t));
            marker(&m); // a marker whose file name is not plain is refused: either is fine
        }

        #[test]
        fn mutated_records(bytes in mutated(any_record(), fix_record_crc)) {
            record(&bytes);
        }

        #[test]
        fn mutated_totals(bytes in mutated(any_totals(), fix_totals_crc)) {
            totals(&bytes);
        }

        #[test]
        fn mutated_markers(bytes in mutated(any_marker(), no_fix)) {
            marker(&bytes);
        }
    }
}
