//! Coupon codes at rest (docs/adr/0009-coupon-codes-at-rest.md). A code is
//! stored twice, neither time in clear: as a keyed digest,
//! HMAC-SHA256(lookup key, program_id || 0 || canonical code), which typed
//! codes are found by (unique per program), and sealed with AES-256-GCM
//! under a random 96-bit nonce, with the program and coupon ids as
//! associated data so that a sealed code opens only on its own row; it is
//! opened to show the code to its member. Both keys are derived from the
//! data key (`LOYALTY_DATA_KEY`) with distinct purposes. Codes are never
//! logged, and a code that cannot be opened is an internal error with a
//! log line naming the coupon, never a silently wrong answer.

use loyalty_common::ServiceError;
use loyalty_common::data_key::DataKey;
use loyalty_common::runtime::ServiceRuntime;
use rand::Rng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;

/// First byte of a sealed code: its format (AES-256-GCM under the v1
/// sub-key). A rotated key or another cipher gets another byte.
const SEALED_V1: u8 = 1;
const TAG_LEN: usize = 16;
const SEAL_PURPOSE: &str = "rewards.coupon-code.seal.v1";
const LOOKUP_PURPOSE: &str = "rewards.coupon-code.lookup.v1";

/// The coupon code keys of one service.
pub(crate) struct CodeVault {
    seal: LessSafeKey,
    lookup: hmac::Key,
}

impl std::fmt::Debug for CodeVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeVault(***)")
    }
}

/// Why a sealed code did not open (the code itself is never part of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("sealed coupon code of unknown format {0}")]
    Format(u8),
    #[error("sealed coupon code is truncated")]
    Truncated,
    #[error(
        "sealed coupon code does not open: sealed under another data key (LOYALTY_DATA_KEY changed?), \
         copied from another row, or damaged"
    )]
    Rejected,
    #[error("sealed coupon code is not text")]
    NotText,
}

impl CodeVault {
    /// The keys derived from `key`.
    pub(crate) fn new(key: &DataKey) -> Result<Self, ServiceError> {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.derive(SEAL_PURPOSE))
            .map_err(|_| ServiceError::internal("AES-256-GCM refused a 32-byte key"))?;
        Ok(Self {
            seal: LessSafeKey::new(unbound),
            lookup: hmac::Key::new(hmac::HMAC_SHA256, &key.derive(LOOKUP_PURPOSE)),
        })
    }

    /// The keys of the service `rt` runs.
    pub(crate) fn of(rt: &ServiceRuntime) -> Result<Self, ServiceError> {
        Self::new(rt.data_key()?)
    }

    /// What a canonical code is found by in `program_id`.
    pub(crate) fn digest(&self, program_id: &str, code: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.lookup);
        ctx.update(program_id.as_bytes());
        ctx.update(&[0]);
        ctx.update(code.as_bytes());
        ctx.sign().as_ref().to_vec()
    }

    /// `code` sealed for the coupon `coupon_id` of `program_id`: the format
    /// byte, a fresh random nonce, the ciphertext and its tag.
    pub(crate) fn seal(
        &self,
        program_id: &str,
        coupon_id: &str,
        code: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let mut body = code.as_bytes().to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(program_id, coupon_id)),
                &mut body,
            )
            .map_err(|_| ServiceError::internal("AES-256-GCM could not seal a coupon code"))?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + body.len());
        sealed.push(SEALED_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// The code sealed for the coupon `coupon_id` of `program_id`.
    pub(crate) fn open(
        &self,
        program_id: &str,
        coupon_id: &str,
        sealed: &[u8],
    ) -> Result<String, OpenError> {
        let (&format, rest) = sealed.split_first().ok_or(OpenError::Truncated)?;
        if format != SEALED_V1 {
            return Err(OpenError::Format(format));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Truncated);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Truncated)?;
        let mut body = body.to_vec();
        let plain = self
            .seal
            .open_in_place(
                nonce,
                Aad::from(associated(program_id, coupon_id)),
                &mut body,
            )
            .map_err(|_| OpenError::Rejected)?;
        String::from_utf8(plain.to_vec()).map_err(|_| OpenError::NotText)
    }

    /// [`Self::open`] for showing a coupon: a failure is logged (the coupon,
    /// never the code) and is an internal error.
    pub(crate) fn open_or_fail(
        &self,
        program_id: &str,
        coupon_id: &str,
        sealed: &[u8],
    ) -> Result<String, ServiceError> {
        self.open(program_id, coupon_id, sealed).map_err(|e| {
            tracing::error!(
                program_id = %program_id,
                coupon_id = %coupon_id,
                error = %e,
                "coupon code cannot be shown: its sealed form does not open with this data key"
            );
            ServiceError::internal(e)
        })
    }
}

/// Associated data binding a sealed code to its row: program, NUL, coupon
/// (ids hold no NUL, so the pair reads back one way only).
fn associated(program_id: &str, coupon_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(program_id.len() + 1 + coupon_id.len());
    aad.extend_from_slice(program_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(coupon_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(material: &str) -> CodeVault {
        CodeVault::new(&DataKey::new(material.repeat(32)).unwrap()).unwrap()
    }

    #[test]
    fn a_sealed_code_opens_on_its_own_row_only() {
        let v = vault("a");
        let sealed = v.seal("p1", "c1", "ABCDEFGHJKLMNPQR").unwrap();
        assert_eq!(sealed[0], SEALED_V1);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 16 + TAG_LEN);
        assert!(!sealed.windows(16).any(|w| w == b"ABCDEFGHJKLMNPQR"));
        assert_eq!(v.open("p1", "c1", &sealed).unwrap(), "ABCDEFGHJKLMNPQR");
        assert_eq!(v.open("p1", "c2", &sealed), Err(OpenError::Rejected));
        assert_eq!(v.open("p2", "c1", &sealed), Err(OpenError::Rejected));
        // the NUL separator keeps ("p1", "c1") and ("p1\0c", "1") apart
        assert_eq!(v.open("p1\0c", "1", &sealed), Err(OpenError::Rejected));
    }

    #[test]
    fn another_key_or_a_damaged_value_does_not_open() {
        let sealed = vault("a").seal("p1", "c1", "ABCDEFGHJKLMNPQR").unwrap();
        assert_eq!(
            vault("b").open("p1", "c1", &sealed),
            Err(OpenError::Rejected)
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            vault("a").open("p1", "c1", &flipped),
            Err(OpenError::Rejected)
        );
        let mut other_format = sealed.clone();
        other_format[0] = 2;
        assert_eq!(
            vault("a").open("p1", "c1", &other_format),
            Err(OpenError::Format(2))
        );
        assert_eq!(
            vault("a").open("p1", "c1", &sealed[..20]),
            Err(OpenError::Truncated)
        );
        assert_eq!(vault("a").open("p1", "c1", &[]), Err(OpenError::Truncated));
    }

    #[test]
    fn sealing_twice_differs_but_the_digest_is_stable_per_program_and_key() {
        let v = vault("a");
        assert_ne!(
            v.seal("p1", "c1", "ABCD").unwrap(),
            v.seal("p1", "c1", "ABCD").unwrap()
        );
        assert_eq!(v.digest("p1", "ABCD"), v.digest("p1", "ABCD"));
        assert_eq!(v.digest("p1", "ABCD").len(), 32);
        assert_ne!(v.digest("p1", "ABCD"), v.digest("p2", "ABCD"));
        assert_ne!(v.digest("p1", "ABCD"), v.digest("p1", "ABCE"));
        assert_ne!(v.digest("p1", "ABCD"), vault("b").digest("p1", "ABCD"));
    }

    #[test]
    fn the_error_never_carries_the_code() {
        let sealed = vault("a").seal("p1", "c1", "ABCDEFGHJKLMNPQR").unwrap();
        let e = vault("b").open_or_fail("p1", "c1", &sealed).unwrap_err();
        assert!(!format!("{e:?} {e}").contains("ABCD"));
    }
}
