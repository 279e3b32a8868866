//! The ledger's vocabulary and its invariants, free of storage: what a
//! posting is, how an entry is hashed into its program's chain, and the
//! checks that a balance agrees with its entries and lots.

use sha2::{Digest, Sha256};

/// Kind of a ledger entry (stored as its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Earn,
    Redeem,
    Expire,
    Reverse,
    Adjust,
    Transfer,
    Exchange,
    /// Pending points became available (total unchanged).
    Release,
}

impl EntryKind {
    pub const ALL: [Self; 8] = [
        Self::Earn,
        Self::Redeem,
        Self::Expire,
        Self::Reverse,
        Self::Adjust,
        Self::Transfer,
        Self::Exchange,
        Self::Release,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earn => "earn",
            Self::Redeem => "redeem",
            Self::Expire => "expire",
            Self::Reverse => "reverse",
            Self::Adjust => "adjust",
            Self::Transfer => "transfer",
            Self::Exchange => "exchange",
            Self::Release => "release",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether a credit of this kind counts as points earned for life
    /// (transfers and returned redemptions do not).
    pub fn counts_as_earned(self) -> bool {
        matches!(self, Self::Earn | Self::Adjust | Self::Exchange)
    }

    pub fn to_proto(self) -> loyalty_proto::loyalty::rewards::v1::EntryKind {
        use loyalty_proto::loyalty::rewards::v1::EntryKind as P;
        match self {
            Self::Earn => P::Earn,
            Self::Redeem => P::Redeem,
            Self::Expire => P::Expire,
            Self::Reverse => P::Reverse,
            Self::Adjust => P::Adjust,
            Self::Transfer => P::Transfer,
            Self::Exchange => P::Exchange,
            Self::Release => P::Release,
        }
    }
}

/// A rule (id and version) that contributed to an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub rule_id: String,
    pub version: i64,
}

impl RuleRef {
    /// `rule_id@version`, how entries store and show it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.rule_id, self.version)
    }
}

/// Why an entry exists. Every part is optional; together they let a
/// reader (and a refund) trace any entry to its origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cause {
    pub rules: Vec<RuleRef>,
    pub order_id: Option<String>,
    pub staff_id: Option<String>,
    pub reason: Option<String>,
    /// Free reference: redemption id, transfer counterpart, campaign action.
    pub reference: Option<String>,
}

impl Cause {
    /// The rules as stored: `id@v,id@v`.
    pub fn rules_text(&self) -> String {
        self.rules
            .iter()
            .map(RuleRef::label)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A short description for events (`order:…`, `ref:…`).
    pub fn summary(&self) -> String {
        if let Some(o) = &self.order_id {
            format!("order:{o}")
        } else if let Some(r) = &self.reference {
            r.clone()
        } else if let Some(r) = &self.reason {
            format!("reason:{r}")
        } else {
            String::new()
        }
    }
}

/// A request to move points of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub program_id: String,
    pub member_id: String,
    pub kind: EntryKind,
    /// Always positive: `credit` adds it, `debit` takes it.
    pub points: i64,
    pub cause: Cause,
}

/// The fields of an entry that its hash covers, in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedEntry<'a> {
    pub program_id: &'a str,
    pub seq: i64,
    pub entry_id: &'a str,
    pub member_id: &'a str,
    pub kind: &'a str,
    pub points: i64,
    pub available_delta: i64,
    pub pending_delta: i64,
    pub lifetime_delta: i64,
    pub order_id: &'a str,
    pub rules: &'a str,
    pub staff_id: &'a str,
    pub reason: &'a str,
    pub reference: &'a str,
    pub reverses: &'a str,
    pub created_at: i64,
}

/// Hash of the first entry's predecessor.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl ChainedEntry<'_> {
    /// SHA-256 over the predecessor's hash and every field, each
    /// length-prefixed so that no two entries encode the same way.
    pub fn hash(&self, prev_hash: &str) -> String {
        let mut h = Sha256::new();
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        field(prev_hash);
        field(self.program_id);
        field(&self.seq.to_string());
        field(self.entry_id);
        field(self.member_id);
        field(self.kind);
        field(&self.points.to_string());
        field(&self.available_delta.to_string());
        field(&self.pending_delta.to_string());
        field(&self.lifetime_delta.to_string());
        field(self.order_id);
        field(self.rules);
        field(self.staff_id);
        field(self.reason);
        field(self.reference);
        field(self.reverses);
        field(&self.created_at.to_string());
        hex::encode(h.finalize())
    }
}

/// What the chain check found at one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub entry_id: String,
    pub seq: i64,
    pub problem: String,
}

/// Walks entries in sequence order, checking each one's predecessor link,
/// its sequence (no gaps) and its hash. Returns the first break.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = (ChainedEntry<'a>, &'a str, &'a str)>,
    mut expected_seq: i64,
    mut prev_hash: String,
) -> Result<(i64, String), ChainBreak> {
    for (entry, stored_prev, stored_hash) in entries {
        let brk = |problem: String| ChainBreak {
            entry_id: entry.entry_id.to_owned(),
            seq: entry.seq,
            problem,
        };
        if entry.seq != expected_seq {
            return Err(brk(format!(
                "sequence {} where {expected_seq} was expected (an entry is missing)",
                entry.seq
            )));
        }
        if stored_prev != prev_hash {
            return Err(brk("does not link to its predecessor".into()));
        }
        let hash = entry.hash(&prev_hash);
        if hash != stored_hash {
            return Err(brk(
                "its content does not match its hash (modified after writing)".into(),
            ));
        }
        prev_hash = hash;
        expected_seq += 1;
    }
    Ok((expected_seq, prev_hash))
}

/// A member's stored balance row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceRow {
    pub available: i64,
    pub pending: i64,
    pub lifetime_earned: i64,
}

/// What the ledger and lots say a member's balance must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerSums {
    /// Sum of entries' available deltas.
    pub available: i64,
    /// Sum of entries' pending deltas.
    pub pending: i64,
    /// Sum of entries' lifetime deltas.
    pub lifetime: i64,
    /// Remaining points of released (available) lots.
    pub released_lots: i64,
    /// Remaining points of lots still in their return window.
    pub pending_lots: i64,
    /// Lots whose remaining is outside `0..=points`.
    pub bad_lots: i64,
}

/// The invariant of one member: the stored balance equals its ledger, the
/// lots hold exactly the balance, nothing is negative unless the program's
/// clawback policy allows a negative available balance (a debt, during
/// which no lot holds points). Empty when all holds.
pub fn balance_problems(row: BalanceRow, sums: LedgerSums, negative_allowed: bool) -> Vec<String> {
    let mut p = Vec::new();
    if row.available != sums.available {
        p.push(format!(
            "available {} but the ledger sums to {}",
            row.available, sums.available
        ));
    }
    if row.pending != sums.pending {
        p.push(format!(
            "pending {} but the ledger sums to {}",
            row.pending, sums.pending
        ));
    }
    if row.lifetime_earned != sums.lifetime {
        p.push(format!(
            "lifetime earned {} but the ledger sums to {}",
            row.lifetime_earned, sums.lifetime
        ));
    }
    if row.pending != sums.pending_lots {
        p.push(format!(
            "pending {} but pending lots hold {}",
            row.pending, sums.pending_lots
        ));
    }
    let lots_should_hold = row.available.max(0);
    if sums.released_lots != lots_should_hold {
        p.push(format!(
            "available {} but available lots hold {}",
            row.available, sums.released_lots
        ));
    }
    if row.available < 0 && !negative_allowed {
        p.push(format!(
            "available {} is negative and the program does not allow it",
            row.available
        ));
    }
    if row.pending < 0 {
        p.push(format!("pending {} is negative", row.pending));
    }
    if sums.bad_lots > 0 {
        p.push(format!(
            "{} lots hold a remaining outside 0..=points",
            sums.bad_lots
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, points: i64) -> ChainedEntry<'static> {
        ChainedEntry {
            program_id: "p1",
            seq,
            entry_id: "e",
            member_id: "m1",
            kind: "earn",
            points,
            available_delta: points,
            pending_delta: 0,
            lifetime_delta: points,
            order_id: "",
            rules: "",
            staff_id: "",
            reason: "",
            reference: "",
            reverses: "",
            created_at: 1,
        }
    }

    #[test]
    fn chain_detects_a_changed_amount_and_names_the_entry() {
        let e1 = entry(1, 10);
        let h1 = e1.hash(GENESIS_HASH);
        let e2 = entry(2, 20);
        let h2 = e2.hash(&h1);
        let good = vec![
            (e1.clone(), GENESIS_HASH, h1.as_str()),
            (e2.clone(), h1.as_str(), h2.as_str()),
        ];
        assert!(verify_chain(good, 1, GENESIS_HASH.into()).is_ok());
        let mut tampered = e2.clone();
        tampered.points = 2000;
        let bad = vec![
            (e1, GENESIS_HASH, h1.as_str()),
            (tampered, h1.as_str(), h2.as_str()),
        ];
        let err = verify_chain(bad, 1, GENESIS_HASH.into()).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(err.problem.contains("modified"), "{}", err.problem);
    }

    #[test]
    fn chain_detects_a_deleted_entry() {
        let e1 = entry(1, 10);
        let h1 = e1.hash(GENESIS_HASH);
        let e3 = entry(3, 30);
        let h3 = e3.hash(&h1);
        let err = verify_chain(
            vec![
                (e1, GENESIS_HASH, h1.as_str()),
                (e3, h1.as_str(), h3.as_str()),
            ],
            1,
            GENESIS_HASH.into(),
        )
        .unwrap_err();
        assert_eq!(err.seq, 3);
    }

    #[test]
    fn fields_are_length_prefixed() {
        let mut a = entry(1, 1);
        a.order_id = "ab";
        a.rules = "c";
        let mut b = entry(1, 1);
        b.order_id = "a";
        b.rules = "bc";
        assert_ne!(a.hash(GENESIS_HASH), b.hash(GENESIS_HASH));
    }

    #[test]
    fn balance_problems_catch_each_disagreement() {
        let row = BalanceRow {
            available: 100,
            pending: 20,
            lifetime_earned: 150,
        };
        let sums = LedgerSums {
            available: 100,
            pending: 20,
            lifetime: 150,
            released_lots: 100,
            pending_lots: 20,
            bad_lots: 0,
        };
        assert!(balance_problems(row, sums, false).is_empty());
        let off = LedgerSums {
            available: 90,
            ..sums
        };
        assert_eq!(balance_problems(row, off, false).len(), 1);
        let lots_off = LedgerSums {
            released_lots: 99,
            ..sums
        };
        assert_eq!(balance_problems(row, lots_off, false).len(), 1);
        let debt = BalanceRow {
            available: -5,
            ..row
        };
        let debt_sums = LedgerSums {
            available: -5,
            released_lots: 0,
            ..sums
        };
        assert!(balance_problems(debt, debt_sums, true).is_empty());
        assert_eq!(balance_problems(debt, debt_sums, false).len(), 1);
    }
}
