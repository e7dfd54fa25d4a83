//! The shared entry format: one Redis string per key (format 1).
//!
//! ```text
//! offset size  field
//!  0      4    magic "CQS1"
//!  4     16    fence token of the lease it was stored under, decimal ASCII, zero-padded
//!              (read by the store script with GETRANGE 4 19: no need to parse binary in Lua)
//! 20      8    load timestamp, ns since the Unix epoch (little endian)
//! 28      8    expiry, ns since the Unix epoch; 0 = never
//! 36      4    CRC-32 of the user key, bytes 0..36 and the payload
//! 40      -    payload: the MessagePack value, exactly as the local record holds it
//! ```
//!
//! The same value, load time and expiry as a local record, so a shared hit fills the local
//! tier with the entry's own stamps. A damaged entry (or another program's bytes under our
//! key) fails its checksum and counts as a miss.

use super::Entry;

const MAGIC: &[u8; 4] = b"CQS1";
pub(crate) const HEADER_LEN: usize = 40;
/// Width of the decimal fence field: time in µs (the fence floor) has 16 digits until 2286.
const FENCE_DIGITS: usize = 16;

/// Serializes `entry`, stored under `fence`, for user key `key`.
pub(crate) fn encode(key: &str, entry: &Entry, fence: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + entry.payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(format!("{fence:0FENCE_DIGITS$}").as_bytes());
    out.extend_from_slice(&entry.load_ns.to_le_bytes());
    out.extend_from_slice(&entry.expire_ns.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&entry.payload);
    let crc = checksum(key, &out);
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Parses and verifies an entry read under `key`; the error says what is wrong.
pub(crate) fn decode(key: &str, mut bytes: Vec<u8>) -> Result<Entry, String> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(format!(
            "{} bytes that are not a shared entry of format 1",
            bytes.len()
        ));
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (load_ns, expire_ns) = (word(20), word(28));
    let crc = u32::from_le_bytes([bytes[36], bytes[37], bytes[38], bytes[39]]);
    if checksum(key, &bytes) != crc {
        return Err("shared entry checksum mismatch".into());
    }
    bytes.drain(..HEADER_LEN);
    Ok(Entry {
        load_ns,
        expire_ns,
        payload: bytes,
    })
}

/// CRC-32 over the key and the entry except the checksum field (the key is covered so an
/// entry copied under another key does not pass).
fn checksum(key: &str, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key.as_bytes());
    hasher.update(&bytes[..36]);
    hasher.update(&bytes[HEADER_LEN..]);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            load_ns: 7,
            expire_ns: 9,
            payload: b"abc".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_puts_the_fence_where_the_store_script_reads_it() {
        let bytes = encode("k", &sample(), 1_764_000_000_000_123);
        assert_eq!(&bytes[4..20], b"1764000000000123");
        assert_eq!(decode("k", bytes).unwrap(), sample());
    }

    #[test]
    fn every_flipped_bit_truncation_and_other_key_is_detected() {
        let bytes = encode("k", &sample(), 42);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(decode("k", bad).is_err(), "flip at byte {i} bit {bit}");
            }
        }
        for len in 0..bytes.len() {
            assert!(decode("k", bytes[..len].to_vec()).is_err(), "len {len}");
        }
        assert!(decode("j", bytes).is_err());
    }
}
