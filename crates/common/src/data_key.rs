//! The key protecting data at rest (setting `data_key`, ADR 0009): coupon
//! codes are sealed with a sub-key of it and found by a keyed digest made
//! with another. Services never use it directly: they derive a sub-key per
//! purpose ([`DataKey::derive`]), so one purpose's key says nothing about
//! another's. Losing it makes what it sealed unreadable. A database sealed
//! with it records its [`DataKeyId`], so a service started with another key
//! can refuse to start instead of failing on each sealed value.

use std::path::Path;
use std::sync::Arc;

use ring::hmac;

use crate::key_file;

/// Shortest accepted key, in bytes of the setting's text.
pub const MIN_LEN: usize = key_file::MIN_LEN;

/// The data key: the setting's text (or the generated file's), used as
/// input key material, never printed.
#[derive(Clone)]
pub struct DataKey(Arc<[u8]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

/// Purpose of the key identifier's derivation: no sub-key is derived for it.
const ID_PURPOSE: &str = "loyalty.data-key.id.v1";

/// Bytes of the derivation kept as the identifier (128 bits: collisions of
/// two keys are out of reach, and it reveals nothing usable of the key).
const ID_LEN: usize = 16;

/// A public name of a data key: the first 16 bytes, in hex, of its
/// derivation for a purpose of its own (`loyalty.data-key.id.v1`), so equal
/// keys have equal ids and the id says nothing about the key or its
/// sub-keys. Safe to store beside what the key sealed and to log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataKeyId(String);

impl DataKeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DataKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a value is not a data key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataKeyError {
    #[error("must be at least {MIN_LEN} bytes long (e.g. `head -c 32 /dev/urandom | base64`)")]
    TooShort,
}

impl DataKey {
    /// A key from configured material (at least [`MIN_LEN`] bytes).
    pub fn new(material: impl AsRef<[u8]>) -> Result<Self, DataKeyError> {
        let material = material.as_ref();
        if material.len() < MIN_LEN {
            return Err(DataKeyError::TooShort);
        }
        Ok(Self(Arc::from(material)))
    }

    /// Reads the key in `path`, or generates one there the way the auth
    /// secret is generated ([`key_file::load_or_create`]).
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let material = key_file::load_or_create(path, "data key")?;
        Ok(Self(Arc::from(material)))
    }

    /// A fresh random key (tests; a process that keeps nothing).
    pub fn random() -> std::io::Result<Self> {
        let bytes = key_file::os_random::<32>()?;
        Ok(Self(Arc::from(hex::encode(bytes).into_bytes())))
    }

    /// The 32-byte sub-key for `purpose` (e.g. `rewards.coupon-code.seal`):
    /// HKDF-SHA256 (RFC 5869) with a fixed salt, the purpose as info and
    /// one output block, so distinct purposes get independent keys.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        hkdf_sha256(b"loyalty data key v1", &self.0, purpose.as_bytes())
    }

    /// The identifier a database sealed with this key records ([`DataKeyId`]).
    pub fn id(&self) -> DataKeyId {
        DataKeyId(hex::encode(&self.derive(ID_PURPOSE)[..ID_LEN]))
    }
}

/// HKDF-SHA256 (RFC 5869) with one output block (L = 32).
fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()));
    ctx.update(info);
    ctx.update(&[1]);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_material_is_refused() {
        assert_eq!(
            DataKey::new("x".repeat(31)).unwrap_err(),
            DataKeyError::TooShort
        );
        assert!(DataKey::new("x".repeat(32)).is_ok());
    }

    #[test]
    fn purposes_get_distinct_stable_sub_keys() {
        let k = DataKey::new("k".repeat(40)).unwrap();
        assert_eq!(k.derive("a"), k.derive("a"));
        assert_ne!(k.derive("a"), k.derive("b"));
        let other = DataKey::new("j".repeat(40)).unwrap();
        assert_ne!(k.derive("a"), other.derive("a"));
        assert_eq!(format!("{k:?}"), "DataKey(***)");
    }

    #[test]
    fn the_id_names_the_key_without_being_a_sub_key() {
        let k = DataKey::new("k".repeat(40)).unwrap();
        let id = k.id();
        assert_eq!(id, DataKey::new("k".repeat(40)).unwrap().id());
        assert_ne!(id, DataKey::new("j".repeat(40)).unwrap().id());
        assert_eq!(id.as_str().len(), 2 * ID_LEN);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        // neither the key nor a sub-key of the coupon code purposes
        assert!(!id.as_str().contains(&hex::encode("k".repeat(16))));
        for purpose in [
            "rewards.coupon-code.seal.v1",
            "rewards.coupon-code.lookup.v1",
        ] {
            assert!(!hex::encode(k.derive(purpose)).contains(id.as_str()));
        }
        assert_eq!(id.to_string(), id.as_str());
    }

    #[test]
    fn derivation_is_hkdf_sha256() {
        // RFC 5869, test case 1: the first 32 bytes of its OKM
        let salt: [u8; 13] = core::array::from_fn(|i| i as u8);
        let info: [u8; 10] = core::array::from_fn(|i| 0xf0 + i as u8);
        assert_eq!(
            hex::encode(hkdf_sha256(&salt, &[0x0b; 22], &info)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    #[test]
    fn the_generated_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        let a = DataKey::load_or_create(&path).unwrap();
        let b = DataKey::load_or_create(&path).unwrap();
        assert_eq!(a.derive("x"), b.derive("x"));
        assert_ne!(a.derive("x"), DataKey::random().unwrap().derive("x"));
    }
}
