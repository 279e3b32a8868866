//! Codes people type: coupon codes (unguessable, single use) and referral
//! codes (shareable). Both are drawn from a CSPRNG (`rand::rng()`, a
//! ChaCha generator seeded and reseeded from the operating system), never
//! derived from ids or counters, over an alphabet without look-alikes
//! (no 0/O, no 1/I), so a code read aloud or typed is not misread.

use rand::Rng;

/// 32 symbols: digits 2-9 and letters without I and O. 32 = 2^5, so a
/// random byte masked to 5 bits picks a symbol without bias.
pub const ALPHABET: &[u8; 32] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// Symbols in a coupon code: 16 × 5 bits = 80 bits of entropy.
pub const COUPON_CODE_LEN: usize = 16;
/// Symbols in a referral code: 8 × 5 = 40 bits (shared openly; uniqueness
/// is what matters, enforced by a unique index).
pub const REFERRAL_CODE_LEN: usize = 8;

/// A fresh random code of `len` symbols (canonical form: no separators).
pub fn generate(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::rng().fill(bytes.as_mut_slice());
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 0x1f)]))
        .collect()
}

/// A new coupon code.
pub fn new_coupon_code() -> String {
    generate(COUPON_CODE_LEN)
}

/// A new referral code.
pub fn new_referral_code() -> String {
    generate(REFERRAL_CODE_LEN)
}

/// The code grouped in fours for display: `ABCD-EFGH-JKMN-PQRS`.
pub fn display(code: &str) -> String {
    code.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// Why typed text is not a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("must have {0} symbols (separators and case are ignored)")]
    Length(usize),
    #[error("contains a symbol that never appears in codes")]
    Symbol,
}

/// The canonical form of typed text: upper case, without spaces and
/// dashes; checked against the alphabet and the expected length.
pub fn normalise(input: &str, len: usize) -> Result<String, CodeError> {
    let code: String = input
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if code.chars().count() != len {
        return Err(CodeError::Length(len));
    }
    if !code.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(CodeError::Symbol);
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn alphabet_has_32_distinct_unambiguous_symbols() {
        let set: HashSet<u8> = ALPHABET.iter().copied().collect();
        assert_eq!(set.len(), 32);
        for ambiguous in b"01IO" {
            assert!(!set.contains(ambiguous), "{}", char::from(*ambiguous));
        }
    }

    #[test]
    fn coupon_codes_carry_at_least_80_bits() {
        // log2(32) = 5 bits per symbol
        const { assert!(COUPON_CODE_LEN * 5 >= 80) };
        assert_eq!(new_coupon_code().len(), COUPON_CODE_LEN);
    }

    #[test]
    fn codes_are_neither_repeated_nor_sequential() {
        let codes: Vec<String> = (0..10_000).map(|_| new_coupon_code()).collect();
        let unique: HashSet<&String> = codes.iter().collect();
        assert_eq!(unique.len(), codes.len());
        // consecutive codes share no long common prefix (not a counter)
        let shared_prefix = codes.windows(2).filter(|w| w[0][..6] == w[1][..6]).count();
        assert_eq!(shared_prefix, 0);
    }

    #[test]
    fn every_symbol_is_used_roughly_evenly() {
        let mut counts = [0u32; 32];
        for _ in 0..2_000 {
            for b in new_coupon_code().bytes() {
                let i = ALPHABET.iter().position(|a| *a == b).unwrap();
                counts[i] += 1;
            }
        }
        // 32_000 symbols, 1_000 expected each; a biased generator misses wide
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn typed_codes_are_normalised() {
        let code = new_coupon_code();
        let typed = display(&code).to_lowercase();
        assert_eq!(normalise(&typed, COUPON_CODE_LEN).unwrap(), code);
        assert_eq!(
            normalise("ABCD", COUPON_CODE_LEN),
            Err(CodeError::Length(COUPON_CODE_LEN))
        );
        assert_eq!(
            normalise("0BCDEFGHJKMNPQRS", COUPON_CODE_LEN),
            Err(CodeError::Symbol)
        );
    }
}
