//! Values and their payload bytes.
//!
//! - Any `serde` value is MessagePack with field names (`rmp_serde`).
//! - Byte values (`[u8]`, `&[u8]`, `Vec<u8>`, `Box<[u8]>`, `bytes::Bytes`) are one MessagePack
//!   `bin` and strings (`str`, `&str`, `String`) one `str`, written with a single copy and
//!   read back, as the byte or string type asked for, with a single copy. Serde alone would
//!   write a `Vec<u8>` as an array of integers (two bytes per byte above 127) and read it
//!   back integer by integer. (`serde_bytes::ByteBuf` is a `bin` through serde already.)
//! - Entries written before this, where a `Vec<u8>` is an array, still read: a byte type
//!   whose payload is not a single `bin` goes through `rmp_serde`, which accepts both.
//! - Raw payloads (`set_bytes`, record flag 4) are never parsed as MessagePack: to serde
//!   they are one byte array, so types that take bytes get them and others fail to decode.
//!
//! Byte values nested inside other types keep serde's data model (arrays), since rmp-serde's
//! `BytesMode::ForceIterables` would break internally tagged, untagged and flattened types
//! that contain a `Vec<u8>` (serde buffers them, and its buffer refuses `bin` as a sequence);
//! use `#[serde(with = "serde_bytes")]` on such fields.

use std::any::TypeId;
use std::borrow::Cow;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::record::Format;
use crate::error::{Error, Result};

/// The largest encoded value: MessagePack's lengths are 32-bit, and rmp-serde silently
/// wraps longer ones (a 4 GiB + 16 byte value would read back as 16 bytes). No value whose
/// encoding fits in this can hold a longer string, byte array or sequence.
pub(crate) const MAX_ENCODED_LEN: u64 = u32::MAX as u64;

/// A value's payload: MessagePack (byte and string types as one `bin` / `str`).
pub(crate) fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>> {
    if let Some(bytes) = byte_view(value) {
        return single(key, Kind::Bin, bytes);
    }
    if let Some(text) = str_view(value) {
        return single(key, Kind::Str, text.as_bytes());
    }
    let mut out = BoundedVec::default();
    match rmp_serde::encode::write_named(&mut out, value) {
        Ok(()) => Ok(out.bytes),
        Err(_) if out.overflowed => Err(too_large(key)),
        Err(e) => Err(Error::Encode {
            key: key.to_owned(),
            source: Box::new(e),
        }),
    }
}

/// A raw payload (`set_bytes`): the bytes themselves, within the same bound as the rest.
pub(crate) fn check_raw(key: &str, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 > MAX_ENCODED_LEN {
        return Err(too_large(key));
    }
    Ok(())
}

/// Turns the payload a lookup found into the value it returns. Closures are decoders;
/// [`Typed`] is the one of the hit path.
pub(crate) trait Decode<R> {
    fn decode(&mut self, format: Format, payload: &[u8]) -> Result<R>;
}

impl<R, F: FnMut(Format, &[u8]) -> Result<R>> Decode<R> for F {
    #[inline]
    fn decode(&mut self, format: Format, payload: &[u8]) -> Result<R> {
        self(format, payload)
    }
}

/// The decoder of `T` values for `key` ([`decode`]). Not a closure: a closure's body was
/// called out of line, and its `Result` returned through memory was a store-forwarding
/// stall on every hit; this method is inlined.
pub(crate) struct Typed<'k, T>(&'k str, PhantomData<fn() -> T>);

impl<'k, T> Typed<'k, T> {
    pub(crate) fn new(key: &'k str) -> Self {
        Typed(key, PhantomData)
    }
}

impl<T: DeserializeOwned> Decode<T> for Typed<'_, T> {
    #[inline(always)]
    fn decode(&mut self, format: Format, payload: &[u8]) -> Result<T> {
        decode(self.0, format, payload)
    }
}

/// The value of type `T` in a payload of `format`.
///
/// The byte and string types' one copy is inlined into the hit path; the rest (serde) is
/// out of line. (A hit's `Result` passed back through one more call cost a store-forwarding
/// stall: wider loads of what narrower stores had just written.)
#[inline(always)]
pub(crate) fn decode<T: DeserializeOwned>(key: &str, format: Format, payload: &[u8]) -> Result<T> {
    let bytes = match format {
        Format::Raw => Some(payload),
        Format::MessagePack => single_of(payload, Kind::Bin),
    };
    if let Some(bytes) = bytes
        && let Some(value) = bytes_as::<T>(bytes)
    {
        return Ok(value);
    }
    if format == Format::MessagePack
        && typeid::of::<T>() == TypeId::of::<String>()
        && let Some(text) = single_of(payload, Kind::Str)
    {
        let text = string_of(text).map_err(|e| decode_error::<T>(key, Box::new(e)))?;
        if let Ok(value) = cast::<T, String>(text) {
            return Ok(value);
        }
    }
    decode_with_serde(key, format, payload)
}

/// `bytes` as a `String`, checked: ASCII text (the common case) is recognized 16 bytes at
/// a time, anything else gets the full UTF-8 check. (`str::from_utf8` took 107 instructions
/// for 100 ASCII bytes, this 45, `<[u8]>::is_ascii` 241.)
fn string_of(bytes: &[u8]) -> std::result::Result<String, std::string::FromUtf8Error> {
    if is_ascii(bytes) {
        // SAFETY: ASCII is valid UTF-8.
        return Ok(unsafe { String::from_utf8_unchecked(bytes.to_vec()) });
    }
    String::from_utf8(bytes.to_vec())
}

/// Whether every byte of `bytes` is below 0x80: the high bits of all 16-byte blocks,
/// or'ed together (the last block overlapping the one before, so there is no tail).
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH_BITS: u128 = u128::from_ne_bytes([0x80; 16]);
    let Some(last) = bytes.last_chunk::<16>() else {
        return bytes.iter().fold(0, |acc, &b| acc | b) < 0x80;
    };
    let (blocks, _) = bytes.as_chunks::<16>();
    let high = blocks
        .iter()
        .fold(u128::from_ne_bytes(*last), |acc, block| {
            acc | u128::from_ne_bytes(*block)
        });
    high & HIGH_BITS == 0
}

#[cold]
fn decode_error<T>(key: &str, source: crate::BoxError) -> Error {
    Error::Decode {
        key: key.to_owned(),
        type_name: std::any::type_name::<T>(),
        source,
    }
}

/// [`decode`] of what is not one of the byte and string types' payloads.
#[inline(never)]
fn decode_with_serde<T: DeserializeOwned>(key: &str, format: Format, payload: &[u8]) -> Result<T> {
    let decode_error = |source| decode_error::<T>(key, source);
    if format == Format::Raw {
        // To serde a raw value is one byte array: never MessagePack to be parsed.
        return T::deserialize(
            serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(payload),
        )
        .map_err(|e| {
            decode_error(
                format!(
                    "{e} (the value was stored as raw bytes, by set_bytes; read it with get_bytes)"
                )
                .into(),
            )
        });
    }
    rmp_serde::from_slice(payload).map_err(|e| decode_error(Box::new(e)))
}

/// The bytes of a value, for `get_bytes` / `with_bytes`: a raw payload, a MessagePack `bin`
/// or `str` in place, or (entries of earlier versions) an array of bytes decoded.
pub(crate) fn bytes_of<'p>(key: &str, format: Format, payload: &'p [u8]) -> Result<Cow<'p, [u8]>> {
    if format == Format::Raw {
        return Ok(Cow::Borrowed(payload));
    }
    if let Some(bytes) = single_of(payload, Kind::Bin).or_else(|| single_of(payload, Kind::Str)) {
        return Ok(Cow::Borrowed(bytes));
    }
    rmp_serde::from_slice::<Vec<u8>>(payload)
        .map(Cow::Owned)
        .map_err(|e| Error::Decode {
            key: key.to_owned(),
            type_name: "bytes",
            source: Box::new(e),
        })
}

fn too_large(key: &str) -> Error {
    Error::Encode {
        key: key.to_owned(),
        source: format!(
            "the value's encoding exceeds {MAX_ENCODED_LEN} bytes (4 GiB - 1), the most a \
             MessagePack length can say"
        )
        .into(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bin,
    Str,
}

/// One MessagePack `bin` or `str`, in its shortest header (as rmp writes it).
fn single(key: &str, kind: Kind, bytes: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&len| u64::from(len) + 5 <= MAX_ENCODED_LEN)
        .ok_or_else(|| too_large(key))?;
    let mut out = Vec::with_capacity(bytes.len() + 5);
    match (kind, len) {
        (Kind::Str, 0..32) => out.push(0xa0 | len as u8),
        (Kind::Str, 32..256) => out.extend_from_slice(&[0xd9, len as u8]),
        (Kind::Bin, 0..256) => out.extend_from_slice(&[0xc4, len as u8]),
        (_, 256..65536) => {
            out.push(if kind == Kind::Bin { 0xc5 } else { 0xda });
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(if kind == Kind::Bin { 0xc6 } else { 0xdb });
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(bytes);
    Ok(out)
}

/// The contents if `payload` is exactly one MessagePack `bin` (or `str`), header and data.
fn single_of(payload: &[u8], kind: Kind) -> Option<&[u8]> {
    let (&marker, rest) = payload.split_first()?;
    let (len, data) = match (kind, marker) {
        (Kind::Str, 0xa0..=0xbf) => (usize::from(marker & 0x1f), rest),
        (Kind::Bin, 0xc4) | (Kind::Str, 0xd9) => {
            let (len, data) = rest.split_first()?;
            (usize::from(*len), data)
        }
        (Kind::Bin, 0xc5) | (Kind::Str, 0xda) => {
            let (len, data) = rest.split_first_chunk::<2>()?;
            (usize::from(u16::from_be_bytes(*len)), data)
        }
        (Kind::Bin, 0xc6) | (Kind::Str, 0xdb) => {
            let (len, data) = rest.split_first_chunk::<4>()?;
            (usize::try_from(u32::from_be_bytes(*len)).ok()?, data)
        }
        _ => return None,
    };
    (data.len() == len).then_some(data)
}

/// `bytes` as a `T`, if `T` is one of the owned byte types.
fn bytes_as<T>(bytes: &[u8]) -> Option<T> {
    let id = typeid::of::<T>();
    if id == TypeId::of::<Vec<u8>>() {
        return cast::<T, _>(bytes.to_vec()).ok();
    }
    if id == TypeId::of::<Box<[u8]>>() {
        return cast::<T, Box<[u8]>>(Box::from(bytes)).ok();
    }
    #[cfg(feature = "bytes")]
    if id == TypeId::of::<bytes::Bytes>() {
        return cast::<T, _>(bytes::Bytes::copy_from_slice(bytes)).ok();
    }
    None
}

/// The bytes of `value`, if its type is one of the byte types.
fn byte_view<T: ?Sized>(value: &T) -> Option<&[u8]> {
    let id = typeid::of::<T>();
    if id == TypeId::of::<[u8]>() {
        // SAFETY: `T` is `[u8]`, so `&T` is a `&[u8]` (same fat pointer).
        return Some(unsafe { std::mem::transmute_copy::<&T, &[u8]>(&value) });
    }
    if let Some(slice) = downcast_ref::<T, &'static [u8]>(value) {
        return Some(slice); // reborrowed for as long as `value` is borrowed
    }
    if let Some(vec) = downcast_ref::<T, Vec<u8>>(value) {
        return Some(vec);
    }
    if let Some(boxed) = downcast_ref::<T, Box<[u8]>>(value) {
        return Some(boxed);
    }
    #[cfg(feature = "bytes")]
    if let Some(bytes) = downcast_ref::<T, bytes::Bytes>(value) {
        return Some(bytes);
    }
    None
}

/// The text of `value`, if its type is one of the string types.
fn str_view<T: ?Sized>(value: &T) -> Option<&str> {
    if typeid::of::<T>() == TypeId::of::<str>() {
        // SAFETY: `T` is `str`, so `&T` is a `&str` (same fat pointer).
        return Some(unsafe { std::mem::transmute_copy::<&T, &str>(&value) });
    }
    if let Some(text) = downcast_ref::<T, &'static str>(value) {
        return Some(text);
    }
    downcast_ref::<T, String>(value).map(String::as_str)
}

/// `value` as a `&U` if `T` is `U` (lifetimes aside).
///
/// For the `&'static [u8]` / `&'static str` targets, `T` may be `&'a [u8]` with a shorter
/// `'a`: callers only ever use the result reborrowed for the lifetime of `value`, which
/// `'a` outlives.
fn downcast_ref<T: ?Sized, U: 'static>(value: &T) -> Option<&U> {
    (typeid::of::<T>() == TypeId::of::<U>())
        // SAFETY: `T` and `U` are the same sized type (a sized `U` has the same id only as
        // a sized `T`), so the thin pointer cast keeps the address and layout.
        .then(|| unsafe { &*std::ptr::from_ref(value).cast::<U>() })
}

/// `value` as a `T`, if `T` is `U` (`U` has no lifetimes, so the ids match only then).
fn cast<T, U: 'static>(value: U) -> std::result::Result<T, U> {
    if typeid::of::<T>() != TypeId::of::<U>() {
        return Err(value);
    }
    let value = ManuallyDrop::new(value);
    // SAFETY: `T` is `U`; `value` is not dropped, so ownership moves to the returned copy.
    Ok(unsafe { std::ptr::read(std::ptr::from_ref::<U>(&value).cast::<T>()) })
}

/// A `Vec` writer that fails once it would pass [`MAX_ENCODED_LEN`] (so a too-large
/// value is refused after at most that many bytes, not after doubling its memory).
#[derive(Default)]
struct BoundedVec {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for BoundedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() as u64).saturating_add(buf.len() as u64) > MAX_ENCODED_LEN {
            self.overflowed = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "value too large",
            ));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct writer produces exactly rmp's bytes, at every header size.
    #[test]
    fn single_values_are_what_rmp_writes() {
        for len in [0usize, 1, 31, 32, 255, 256, 65535, 65536] {
            let bytes = vec![0xFFu8; len];
            let text = "x".repeat(len);
            let bin = single("k", Kind::Bin, &bytes).unwrap();
            assert_eq!(
                bin,
                rmp_serde::to_vec(serde_bytes::Bytes::new(&bytes)).unwrap()
            );
            assert_eq!(single_of(&bin, Kind::Bin), Some(&bytes[..]));
            let str = single("k", Kind::Str, text.as_bytes()).unwrap();
            assert_eq!(str, rmp_serde::to_vec(&text).unwrap());
            assert_eq!(single_of(&str, Kind::Str), Some(text.as_bytes()));
            assert_eq!(single_of(&str, Kind::Bin), None);
        }
        // Trailing or missing bytes: not one value.
        assert_eq!(single_of(&[0xc4, 2, 1], Kind::Bin), None);
        assert_eq!(single_of(&[0xc4, 1, 1, 1], Kind::Bin), None);
    }

    #[test]
    fn views_find_exactly_the_byte_and_string_types() {
        let v = vec![1u8, 2];
        assert_eq!(byte_view(&v), Some(&[1u8, 2][..]));
        assert_eq!(byte_view(&v[..]), Some(&[1u8, 2][..]));
        assert_eq!(byte_view(&&v[..]), Some(&[1u8, 2][..]));
        assert_eq!(
            byte_view(&v.clone().into_boxed_slice()),
            Some(&[1u8, 2][..])
        );
        assert_eq!(byte_view(&vec![1u16]), None);
        assert_eq!(byte_view(&[1u8, 2]), None); // arrays are tuples to serde
        assert_eq!(str_view("ab"), Some("ab"));
        assert_eq!(str_view(&"ab"), Some("ab"));
        assert_eq!(str_view(&"ab".to_string()), Some("ab"));
        assert_eq!(str_view(&v), None);
        assert_eq!(bytes_as::<Vec<u8>>(b"ab"), Some(b"ab".to_vec()));
        assert_eq!(bytes_as::<u16>(b"ab"), None);
    }

    /// The ASCII check agrees with the standard one for every length around the block size
    /// and a high byte at every position.
    #[test]
    fn is_ascii_agrees_with_the_standard_check() {
        for len in 0..70 {
            let text = vec![b'a'; len];
            assert!(is_ascii(&text), "{len}");
            for at in 0..len {
                let mut high = text.clone();
                high[at] = 0xC3;
                assert!(!is_ascii(&high), "{len} {at}");
                assert_eq!(is_ascii(&high), high.is_ascii());
            }
        }
        assert_eq!(string_of("grüße".as_bytes()).unwrap(), "grüße");
        assert!(string_of(&[b'a', 0xFF, b'b']).is_err());
    }
}
