//! The index record: one per key, stored as the LMDB value (format version 1).
//!
//! ```text
//! offset size  field
//!  0      1    format version (1)
//!  1      1    flags: 1 = payload lives in a blob file, 2 = full key stored (long key),
//!                     4 = the payload is raw bytes (`set_bytes`), not MessagePack
//!  2      2    reserved, 0
//!  4      4    CRC-32 of the index key, bytes 0..4, and every byte from offset 8 on
//!  8      8    load timestamp, ns since the Unix epoch
//! 16      8    expiry, ns since the Unix epoch; 0 = never
//! 24      8    eviction order stamp, ns (store time; last use under LRU)
//! 32      4    stored-key length (0 unless flag 2)
//! 36      8    payload length (inline bytes, or the blob file's length)
//! 44      -    stored key, then either the inline payload (MessagePack or raw)
//!              or the blob reference: CRC-32 of the blob file, then its file name
//! ```
//!
//! Every decoder of on-disk bytes checks lengths before slicing and returns an error string,
//! never panics: the index may have been damaged by hand or by a lost power supply.

use std::mem::MaybeUninit;
use std::sync::LazyLock;

/// The record format this build reads and writes.
pub(crate) const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 44;
const FLAG_BLOB: u8 = 1;
const FLAG_KEY: u8 = 2;
const FLAG_RAW: u8 = 4;

/// How the payload bytes encode the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Format {
    /// MessagePack with field names (`set`, `get_or_load`).
    #[default]
    MessagePack,
    /// The caller's bytes as they are (`set_bytes`): never parsed as MessagePack.
    Raw,
}

/// Timestamps and size of an entry, without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) load_ns: u64,
    /// 0 = never expires.
    pub(crate) expire_ns: u64,
    /// Position in the eviction order (store time, or last use under LRU).
    pub(crate) order_ns: u64,
    pub(crate) payload_len: u64,
}

impl Meta {
    /// Whether the entry's own expiry has passed at `now_ns`.
    pub(crate) fn expired(&self, now_ns: u64) -> bool {
        self.expire_ns != 0 && now_ns >= self.expire_ns
    }
}

/// Where the value bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    Inline(&'a [u8]),
    Blob { crc: u32, name: &'a str },
}

/// A decoded record, borrowing from the index's memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) meta: Meta,
    /// The full key, present only for keys too long to be the index key themselves.
    pub(crate) stored_key: Option<&'a [u8]>,
    pub(crate) format: Format,
    pub(crate) body: Body<'a>,
}

impl<'a> Record<'a> {
    /// Serializes a record stored under `ikey` (the checksum covers the key too, so a
    /// damaged key in the index cannot make one key's record pass for another's).
    pub(crate) fn encode(&self, ikey: &[u8]) -> Vec<u8> {
        let key = self.stored_key.unwrap_or_default();
        let (flags, body_len) = match self.body {
            Body::Inline(bytes) => (0, bytes.len()),
            Body::Blob { name, .. } => (FLAG_BLOB, 4 + name.len()),
        };
        let flags = flags
            | if self.stored_key.is_some() {
                FLAG_KEY
            } else {
                0
            }
            | if self.format == Format::Raw {
                FLAG_RAW
            } else {
                0
            };
        let mut out = Vec::with_capacity(HEADER_LEN + key.len() + body_len);
        out.extend_from_slice(&[FORMAT_VERSION, flags, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.meta.load_ns.to_le_bytes());
        out.extend_from_slice(&self.meta.expire_ns.to_le_bytes());
        out.extend_from_slice(&self.meta.order_ns.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.meta.payload_len.to_le_bytes());
        out.extend_from_slice(key);
        match self.body {
            Body::Inline(bytes) => out.extend_from_slice(bytes),
            Body::Blob { crc, name } => {
                out.extend_from_slice(&crc.to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
        let crc = checksum(ikey, &out);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and verifies a record. The error says what is wrong, for [`Error::Corrupt`].
    ///
    /// [`Error::Corrupt`]: crate::Error::Corrupt
    pub(crate) fn decode(ikey: &[u8], bytes: &'a [u8]) -> Result<Self, String> {
        Self::decode_inline(ikey, bytes)
    }

    /// [`decode`](Self::decode), inlined into the hit path: a record returned from a call
    /// was written to memory and read back wider (a store-forwarding stall, ~2% of a hit).
    #[inline(always)]
    pub(crate) fn decode_inline(ikey: &[u8], bytes: &'a [u8]) -> Result<Self, String> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("record of {} bytes is shorter than its header", bytes.len()))?;
        if header[0] != FORMAT_VERSION {
            return Err(format!(
                "record format {} is not {FORMAT_VERSION}",
                header[0]
            ));
        }
        let flags = header[1];
        // Only what `encode` writes is a record: unknown flags or reserved bits set mean
        // another format (or damage that kept its CRC), not something to guess at.
        if flags & !(FLAG_BLOB | FLAG_KEY | FLAG_RAW) != 0 || header[2..4] != [0, 0] {
            return Err(format!(
                "record flags {flags:#x} or reserved bytes are not format 1"
            ));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let crc = u32_at(4);
        if checksum(ikey, bytes) != crc {
            return Err("record checksum mismatch".into());
        }
        let meta = Meta {
            load_ns: u64_at(8),
            expire_ns: u64_at(16),
            order_ns: u64_at(24),
            payload_len: u64_at(36),
        };
        let key_len = u32_at(32) as usize;
        let rest = &bytes[HEADER_LEN..];
        if rest.len() < key_len {
            return Err("stored key runs past the record".into());
        }
        if flags & FLAG_KEY == 0 && key_len != 0 {
            return Err("stored key without its flag".into());
        }
        let (key, rest) = rest.split_at(key_len);
        let stored_key = (flags & FLAG_KEY != 0).then_some(key);
        let body = if flags & FLAG_BLOB != 0 {
            let (crc, name) = rest
                .split_first_chunk::<4>()
                .ok_or("blob reference is truncated")?;
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| valid_blob_name(n))
                .ok_or("blob file name is invalid")?;
            Body::Blob {
                crc: u32::from_le_bytes(*crc),
                name,
            }
        } else {
            if rest.len() as u64 != meta.payload_len {
                return Err("inline payload length mismatch".into());
            }
            Body::Inline(rest)
        };
        let format = if flags & FLAG_RAW != 0 {
            Format::Raw
        } else {
            Format::MessagePack
        };
        Ok(Record {
            meta,
            stored_key,
            format,
            body,
        })
    }
}

/// CRC-32 over the index key and the whole record except the checksum field itself.
fn checksum(ikey: &[u8], record: &[u8]) -> u32 {
    // Small records (the hit path's common case) are hashed in one call over a stack copy:
    // three calls, two of them on 4-8 bytes, cost more than the copy. crc32fast's SIMD
    // kernel folds 16-byte blocks but finishes a shorter tail byte by byte (a 150-byte
    // record's 6-byte tail cost as much as its first 128 bytes), so the copy starts with a
    // prefix that brings the CRC back to its start (`CRC_NEUTRAL_PREFIX`) and makes its
    // length a multiple of 16. The result is the plain CRC-32 (the format does not change).
    const STACK: usize = 256;
    let mut hasher = CRC32.clone();
    let Some(body) = record.get(8..) else {
        // Shorter than the header's first 8 bytes: not a record (decode refuses it first).
        hasher.update(record);
        return hasher.finalize();
    };
    let len = ikey.len() + 4 + body.len();
    let pad = match (16 - len % 16) % 16 {
        short @ 0..4 => short + 16,
        pad => pad,
    };
    if pad + len > STACK {
        hasher.update(ikey);
        hasher.update(&record[..4]);
        hasher.update(body);
        return hasher.finalize();
    }
    // Not zeroed first (that was a 256-byte memset per read): every byte hashed is written.
    let mut buf = MaybeUninit::<[u8; STACK]>::uninit();
    let base = buf.as_mut_ptr().cast::<u8>();
    let parts = [&CRC_NEUTRAL_PREFIX[pad][..pad], ikey, &record[..4], body];
    // SAFETY: the parts are `pad + len <= STACK` bytes together, copied one after the other
    // from the start of `buf` (which no part overlaps), so the slice covers exactly the
    // bytes just written.
    let bytes = unsafe {
        let mut at = 0;
        for part in parts {
            std::ptr::copy_nonoverlapping(part.as_ptr(), base.add(at), part.len());
            at += part.len();
        }
        std::slice::from_raw_parts(base, at)
    };
    hasher.update(bytes);
    hasher.finalize()
}

/// A hasher with the CPU's kernel already chosen: `Hasher::new` detects it on every call.
static CRC32: LazyLock<crc32fast::Hasher> = LazyLock::new(crc32fast::Hasher::new);

/// CRC-32's register (reflected, polynomial 0xEDB88320), as crc32fast keeps it inverted.
const POLY: u32 = 0xEDB8_8320;

/// `CRC_NEUTRAL_PREFIX[n][..n]` for n in 4..20: n bytes whose CRC-32 is 0, the value every
/// CRC-32 starts from, so hashing them first changes no CRC (n - 4 zeros, then 4 bytes that
/// bring the register back to its start; fewer than 4 bytes cannot always do that).
const CRC_NEUTRAL_PREFIX: [[u8; 20]; 20] = {
    let mut table = [[0u8; 20]; 20];
    let mut n = 4;
    while n < 20 {
        table[n] = neutral_prefix(n);
        n += 1;
    }
    table
};

const fn neutral_prefix(n: usize) -> [u8; 20] {
    // The register after n - 4 zero bytes from the start (all ones).
    let mut register = u32::MAX;
    let mut bits = 8 * (n - 4);
    while bits > 0 {
        register = if register & 1 != 0 {
            (register >> 1) ^ POLY
        } else {
            register >> 1
        };
        bits -= 1;
    }
    // Four bytes are xored into the register (little-endian) and then 32 steps run; a step
    // is undone from the top bit it leaves (set only if it xored the polynomial), so run
    // 32 steps back from the start to find what the register must hold after the xor.
    let mut wanted = u32::MAX;
    let mut bits = 32;
    while bits > 0 {
        wanted = if wanted & 0x8000_0000 != 0 {
            ((wanted ^ POLY) << 1) | 1
        } else {
            wanted << 1
        };
        bits -= 1;
    }
    let tail = (register ^ wanted).to_le_bytes();
    let mut out = [0u8; 20];
    let mut i = 0;
    while i < 4 {
        out[n - 4 + i] = tail[i];
        i += 1;
    }
    out
}

/// Blob names are generated by us; anything else (a `/`, a `..`) is corruption, and must
/// never become a path outside the blob directory.
pub(crate) fn valid_blob_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: Body<'_>, key: Option<&'static [u8]>) -> Vec<u8> {
        sample_as(Format::MessagePack, body, key)
    }

    fn sample_as(format: Format, body: Body<'_>, key: Option<&'static [u8]>) -> Vec<u8> {
        Record {
            meta: Meta {
                load_ns: 7,
                expire_ns: 9,
                order_ns: 8,
                payload_len: 3,
            },
            stored_key: key,
            format,
            body,
        }
        .encode(b"\0key")
    }

    #[test]
    fn round_trips_inline_and_blob() {
        let bytes = sample(Body::Inline(b"abc"), Some(b"long key"));
        let rec = Record::decode(b"\0key", &bytes).unwrap();
        assert_eq!(rec.body, Body::Inline(b"abc"));
        assert_eq!(rec.stored_key, Some(&b"long key"[..]));
        assert_eq!((rec.meta.load_ns, rec.meta.expire_ns), (7, 9));

        let bytes = sample(
            Body::Blob {
                crc: 5,
                name: "v-abc.blob",
            },
            None,
        );
        let rec = Record::decode(b"\0key", &bytes).unwrap();
        assert_eq!(
            rec.body,
            Body::Blob {
                crc: 5,
                name: "v-abc.blob"
            }
        );
        assert_eq!(rec.stored_key, None);
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_detected() {
        let bytes = sample(Body::Inline(b"abc"), Some(b"k"));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    Record::decode(b"\0key", &bad).is_err(),
                    "flip at byte {i} bit {bit}"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(
                Record::decode(b"\0key", &bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
    }

    /// Regression: records with unknown flags, reserved bytes or a stored key without its
    /// flag were accepted (with a matching CRC), and did not encode back to their bytes.
    #[test]
    fn only_canonical_records_are_accepted() {
        let good = sample(Body::Inline(b"abc"), None);
        let with_crc = |mut bytes: Vec<u8>| {
            let crc = checksum(b"\0key", &bytes);
            bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        for (at, byte) in [(1, 0x80u8), (2, 1), (3, 1)] {
            let mut bad = good.clone();
            bad[at] |= byte;
            assert!(
                Record::decode(b"\0key", &with_crc(bad)).is_err(),
                "byte {at}"
            );
        }
        // A key length with no key flag: the key bytes would be skipped silently.
        let mut bad = good.clone();
        bad[32] = 1;
        bad[36] = 2;
        assert!(Record::decode(b"\0key", &with_crc(bad)).is_err());
        let rec = Record::decode(b"\0key", &good).unwrap();
        assert_eq!(rec.encode(b"\0key"), good);
    }

    /// The raw flag survives a round trip on inline and blob bodies, and re-encodes to the
    /// same bytes; without the flag a payload is MessagePack.
    #[test]
    fn raw_payloads_are_flagged() {
        for body in [
            Body::Inline(b"abc"),
            Body::Blob {
                crc: 1,
                name: "v-x.blob",
            },
        ] {
            let raw = sample_as(Format::Raw, body, None);
            let rec = Record::decode(b"\0key", &raw).unwrap();
            assert_eq!((rec.format, rec.body), (Format::Raw, body));
            assert_eq!(rec.encode(b"\0key"), raw);
            let packed = sample(body, None);
            assert_eq!(
                Record::decode(b"\0key", &packed).unwrap().format,
                Format::MessagePack
            );
            assert_ne!(raw[1], packed[1]);
        }
    }

    /// The checksum is exactly CRC-32 over the key and the record without its checksum
    /// field, for keys of every length around the stack buffer's bound (and hashed keys),
    /// records of every length and so every split and prefix: records written before it
    /// still verify, and nothing else does.
    #[test]
    fn the_checksum_is_the_plain_crc_for_every_length() {
        let data: Vec<u8> = (0..800u32).map(|i| (i * 31 % 251) as u8).collect();
        let keys: Vec<Vec<u8>> = (1..=80)
            .chain([400])
            .map(|n| data[300..300 + n].to_vec())
            .chain([vec![0xFF; 33], vec![0xFE]])
            .collect();
        for ikey in &keys {
            for len in 0..300 {
                let record = &data[..len];
                let mut reference = crc32fast::Hasher::new();
                reference.update(ikey);
                if len >= 8 {
                    reference.update(&record[..4]);
                    reference.update(&record[8..]);
                } else {
                    reference = crc32fast::Hasher::new();
                    reference.update(record);
                }
                assert_eq!(
                    checksum(ikey, record),
                    reference.finalize(),
                    "key of {} bytes, record of {len}",
                    ikey.len()
                );
            }
        }
        for n in 4..20 {
            assert_eq!(crc32fast::hash(&CRC_NEUTRAL_PREFIX[n][..n]), 0, "{n} bytes");
        }
    }

    #[test]
    fn a_record_does_not_verify_under_another_key() {
        let bytes = sample(Body::Inline(b"abc"), None);
        assert!(Record::decode(b"\0kez", &bytes).is_err());
    }

    #[test]
    fn blob_names_cannot_escape() {
        for bad in ["", "../x", "a/b", ".hidden", "x\0y", &"a".repeat(65)] {
            assert!(!valid_blob_name(bad), "{bad:?}");
        }
        assert!(valid_blob_name("v-AbC123.blob"));
    }
}
