//! Referral rules: who may be referred by whom, and which purchase
//! qualifies. Contact details are compared as the hashes membership
//! publishes (hex SHA-256 of program-scoped normalised phone/email), never
//! in clear.

use std::collections::HashSet;

use loyalty_common::money::Money;

/// Why a referral is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a member cannot refer themselves")]
    SelfReferral,
    #[error("the member shares contact details with the referrer")]
    SharedWithReferrer,
    #[error("the member's contact details were already used by a referred member")]
    ContactAlreadyReferred,
    #[error("only members without a purchase can be referred")]
    AlreadyPurchased,
    #[error("the program's referrals are closed")]
    Closed,
}

/// What is known when a referee applies a code.
#[derive(Debug, Clone, Default)]
pub struct Applicant<'a> {
    pub referrer_id: &'a str,
    pub referee_id: &'a str,
    pub referrer_hashes: HashSet<String>,
    pub referee_hashes: HashSet<String>,
    /// Hashes held by any other member already referred in the program.
    pub hashes_already_referred: HashSet<String>,
    pub referee_has_purchased: bool,
    pub program_open: bool,
}

/// Checks an application; the first failing rule is the answer.
pub fn check(a: &Applicant<'_>) -> Result<(), Refusal> {
    if !a.program_open {
        return Err(Refusal::Closed);
    }
    if a.referrer_id == a.referee_id {
        return Err(Refusal::SelfReferral);
    }
    if !a.referee_hashes.is_disjoint(&a.referrer_hashes) {
        return Err(Refusal::SharedWithReferrer);
    }
    if !a.referee_hashes.is_disjoint(&a.hashes_already_referred) {
        return Err(Refusal::ContactAlreadyReferred);
    }
    if a.referee_has_purchased {
        return Err(Refusal::AlreadyPurchased);
    }
    Ok(())
}

/// Whether a first purchase of `amount` qualifies under `min_purchase`
/// (none = any purchase; another currency never qualifies).
pub fn qualifies(min_purchase: Option<Money>, amount: Option<Money>) -> bool {
    match (min_purchase, amount) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(min), Some(amount)) => min.currency == amount.currency && amount.minor >= min.minor,
    }
}

/// Whether text looks like a contact hash (64 lower-case hex digits).
pub fn is_contact_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use loyalty_common::money::Currency;

    use super::*;

    fn h(s: &str) -> String {
        s.repeat(64)
    }

    fn open<'a>() -> Applicant<'a> {
        Applicant {
            referrer_id: "alice",
            referee_id: "bob",
            referrer_hashes: [h("a")].into(),
            referee_hashes: [h("b")].into(),
            program_open: true,
            ..Applicant::default()
        }
    }

    #[test]
    fn a_new_member_with_own_contacts_may_be_referred() {
        assert_eq!(check(&open()), Ok(()));
    }

    #[test]
    fn abuse_is_refused() {
        let me = Applicant {
            referee_id: "alice",
            ..open()
        };
        assert_eq!(check(&me), Err(Refusal::SelfReferral));
        let twin = Applicant {
            referee_hashes: [h("c"), h("a")].into(),
            ..open()
        };
        assert_eq!(check(&twin), Err(Refusal::SharedWithReferrer));
        let again = Applicant {
            hashes_already_referred: [h("b")].into(),
            ..open()
        };
        assert_eq!(check(&again), Err(Refusal::ContactAlreadyReferred));
        let old = Applicant {
            referee_has_purchased: true,
            ..open()
        };
        assert_eq!(check(&old), Err(Refusal::AlreadyPurchased));
        let closed = Applicant {
            program_open: false,
            ..open()
        };
        assert_eq!(check(&closed), Err(Refusal::Closed));
    }

    #[test]
    fn minimum_purchase_in_the_same_currency() {
        let cny = Currency::parse("CNY").unwrap();
        let eur = Currency::parse("EUR").unwrap();
        let min = Some(Money::new(10_000, cny));
        assert!(qualifies(None, None));
        assert!(qualifies(min, Some(Money::new(10_000, cny))));
        assert!(!qualifies(min, Some(Money::new(9_999, cny))));
        assert!(!qualifies(min, Some(Money::new(50_000, eur))));
        assert!(!qualifies(min, None));
    }

    #[test]
    fn contact_hashes_are_hex_sha256() {
        assert!(is_contact_hash(&h("0")));
        assert!(!is_contact_hash(&h("G")));
        assert!(!is_contact_hash("abc"));
    }
}
