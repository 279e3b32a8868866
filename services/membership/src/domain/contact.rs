//! Contact details as the platform keeps them: phone numbers in E.164,
//! e-mail addresses in lower case. Both are unique per program, so two
//! spellings of one number or address must normalise to the same text.

use sha2::{Digest, Sha256};

/// A phone number in E.164 form (`+` and 8 to 15 digits, no leading 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    /// Accepts international forms with common separators
    /// (`+86 138-0013-8000`, `0086 13800138000`, `+1 (415) 555 2671`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        let rest = if let Some(r) = trimmed.strip_prefix('+') {
            r
        } else if let Some(r) = trimmed.strip_prefix("00") {
            r
        } else {
            return Err(
                "must be an international number starting with + and the country code".into(),
            );
        };
        let mut digits = String::with_capacity(15);
        for c in rest.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => {
                    return Err(format!(
                        "contains {c:?}: only digits and separators allowed"
                    ));
                }
            }
        }
        if digits.starts_with('0') {
            return Err("the country code cannot start with 0".into());
        }
        if !(8..=15).contains(&digits.len()) {
            return Err("must have 8 to 15 digits after the + (E.164)".into());
        }
        Ok(Self(format!("+{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An e-mail address, trimmed and in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.trim().to_lowercase();
        if lower.len() > 254 {
            return Err("is longer than 254 characters".into());
        }
        let Some((local, domain)) = lower.split_once('@') else {
            return Err("must contain @".into());
        };
        if local.is_empty() || local.len() > 64 {
            return Err("the part before @ must have 1 to 64 characters".into());
        }
        if local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@')
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
        {
            return Err("the part before @ is not a valid address".into());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return Err("the domain after @ is not valid".into());
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Hex SHA-256 of `<program_id>:<normalised contact>`: what events carry
/// instead of the contact itself (rewards refuses referrals that reuse
/// contact details by comparing these).
pub fn contact_hash(program_id: &str, normalised: &str) -> String {
    hex::encode(Sha256::digest(
        format!("{program_id}:{normalised}").as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn phones_normalise_to_e164() {
        for (raw, want) in [
            ("+86 138-0013-8000", "+8613800138000"),
            ("0086 13800138000", "+8613800138000"),
            ("  +1 (415) 555.2671 ", "+14155552671"),
            ("+4930123456", "+4930123456"),
        ] {
            assert_eq!(Phone::parse(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn bad_phones_are_refused_with_a_reason() {
        for raw in [
            "13800138000",
            "+0 123456789",
            "+1234567",
            "+1234567890123456",
            "+86 138x0013",
            "",
            "+",
        ] {
            assert!(Phone::parse(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn emails_normalise_to_lower_case() {
        assert_eq!(
            Email::parse("  Li.Na@Example.COM ").unwrap().as_str(),
            "li.na@example.com"
        );
        assert_eq!(
            Email::parse("a+b@mail.example.cn").unwrap().as_str(),
            "a+b@mail.example.cn"
        );
    }

    #[test]
    fn bad_emails_are_refused() {
        for raw in [
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            "a@@example.com",
            ".a@example.com",
            "a..b@example.com",
            "a@-x.com",
            "a@x..com",
        ] {
            assert!(Email::parse(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn contact_hash_is_program_scoped_sha256() {
        let h = contact_hash("p1", "+8613800138000");
        assert_eq!(h.len(), 64);
        assert_ne!(h, contact_hash("p2", "+8613800138000"));
        assert_eq!(
            contact_hash("p", "x"),
            // sha256("p:x")
            hex::encode(Sha256::digest(b"p:x"))
        );
    }

    /// Property: any spelling of a number (separators, 00 or + prefix)
    /// normalises to the same E.164 text, and normalising is idempotent.
    #[test]
    fn property_phone_spellings_agree_and_normalising_is_idempotent() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0001);
        for _ in 0..2000 {
            let len = rng.random_range(8..=15);
            let mut digits = String::new();
            digits.push(char::from(b'1' + rng.random_range(0..9u8)));
            for _ in 1..len {
                digits.push(char::from(b'0' + rng.random_range(0..10u8)));
            }
            let mut spelled = String::from(if rng.random_bool(0.5) { "+" } else { "00" });
            for c in digits.chars() {
                if rng.random_bool(0.2) {
                    spelled.push([' ', '-', '.', '(', ')'][rng.random_range(0..5)]);
                }
                spelled.push(c);
            }
            let p = Phone::parse(&spelled).unwrap();
            assert_eq!(p.as_str(), format!("+{digits}"), "{spelled}");
            assert_eq!(Phone::parse(p.as_str()).unwrap(), p);
        }
    }

    /// Property: case and surrounding spaces never change the normalised
    /// address, and normalising is idempotent.
    #[test]
    fn property_email_case_and_spaces_do_not_matter() {
        let mut rng = StdRng::seed_from_u64(0x5eed_0002);
        let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            .chars()
            .collect();
        let word = |rng: &mut StdRng, n: usize| -> String {
            (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        };
        for _ in 0..2000 {
            let (na, nd) = (rng.random_range(1..20), rng.random_range(1..20));
            let a = word(&mut rng, na);
            let d = word(&mut rng, nd);
            let raw = format!(
                "{}{a}@{d}.com{}",
                " ".repeat(rng.random_range(0..3)),
                " ".repeat(rng.random_range(0..3))
            );
            let e = Email::parse(&raw).unwrap();
            assert_eq!(e.as_str(), format!("{a}@{d}.com").to_lowercase());
            assert_eq!(Email::parse(&raw.to_uppercase()).unwrap(), e);
            assert_eq!(Email::parse(e.as_str()).unwrap(), e);
        }
    }
}
