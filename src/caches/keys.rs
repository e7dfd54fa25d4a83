//! Index keys: how a user key becomes an LMDB key, and back.

use sha2::{Digest, Sha256};

use super::record::Record;

/// Keys up to this many bytes are the index key itself; longer ones are hashed (LMDB keys
/// are at most 511 bytes) and stored in full inside the record.
const MAX_LITERAL_KEY: usize = 400;

/// The user key of an index entry (see [`IndexKey`]).
pub(crate) fn user_key(ikey: &[u8], record: &Record<'_>) -> Option<String> {
    let bytes = match (ikey, record.stored_key) {
        ([0xFE], _) => &[][..],
        ([0xFF, ..], Some(stored)) => stored,
        ([0xFF, ..], None) => return None,
        (literal, _) => literal,
    };
    String::from_utf8(bytes.to_vec()).ok()
}

/// The LMDB key for a user key: the key's own bytes when 1 to 400 bytes long (borrowed: the
/// hit path copies nothing), `0xFE` for the empty key (LMDB refuses empty keys), and
/// `0xFF ++ sha256(key)` for longer keys (LMDB keys are at most 511 bytes). 0xFE and 0xFF
/// never occur in UTF-8, so the three forms cannot collide.
pub(crate) enum IndexKey<'a> {
    Literal(&'a [u8]),
    Empty,
    Hashed([u8; 33]),
}

impl<'a> IndexKey<'a> {
    pub(crate) fn new(key: &'a str) -> Self {
        match key.len() {
            0 => IndexKey::Empty,
            1..=MAX_LITERAL_KEY => IndexKey::Literal(key.as_bytes()),
            _ => {
                let mut hashed = [0xFF; 33];
                hashed[1..].copy_from_slice(&Sha256::digest(key.as_bytes()));
                IndexKey::Hashed(hashed)
            }
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            IndexKey::Literal(bytes) => bytes,
            IndexKey::Empty => &[0xFE],
            IndexKey::Hashed(hashed) => hashed,
        }
    }

    pub(crate) fn is_hashed(&self) -> bool {
        matches!(self, IndexKey::Hashed(_))
    }
}
