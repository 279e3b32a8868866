//! Whether a member may redeem an item now: active, inside its validity
//! window, the member's tier allowed, the quantity sane and the cost
//! computable. Stock and per-member limits are checked again by the
//! conditional updates that reserve them (the only check that holds under
//! concurrency); the checks here give the precise reason first.

/// Most units in one redemption.
pub const MAX_QUANTITY: i64 = 100;

/// What the rules need to know of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemTerms {
    pub active: bool,
    pub points_cost: i64,
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
    pub eligible_tiers: Vec<String>,
}

/// Why a member may not redeem an item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the item is not available for redemption")]
    Inactive,
    #[error("the item cannot be redeemed before its validity starts")]
    NotYetValid,
    #[error("the item can no longer be redeemed: its validity ended")]
    Ended,
    #[error("the member's tier may not redeem this item")]
    Tier,
    #[error("quantity must be between 1 and {MAX_QUANTITY}")]
    Quantity,
    #[error("the points cost overflows")]
    Overflow,
}

/// The points a redemption of `quantity` units costs, or why it is refused.
pub fn check(
    item: &ItemTerms,
    member_tier: &str,
    quantity: i64,
    now_micros: i64,
) -> Result<i64, Refusal> {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(Refusal::Quantity);
    }
    if !item.active {
        return Err(Refusal::Inactive);
    }
    if item.valid_from.is_some_and(|from| now_micros < from) {
        return Err(Refusal::NotYetValid);
    }
    if item.valid_until.is_some_and(|until| now_micros >= until) {
        return Err(Refusal::Ended);
    }
    if !item.eligible_tiers.is_empty() && !item.eligible_tiers.iter().any(|t| t == member_tier) {
        return Err(Refusal::Tier);
    }
    item.points_cost
        .checked_mul(quantity)
        .ok_or(Refusal::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item() -> ItemTerms {
        ItemTerms {
            active: true,
            points_cost: 250,
            valid_from: Some(1_000),
            valid_until: Some(2_000),
            eligible_tiers: vec!["GOLD".into(), "PLATINUM".into()],
        }
    }

    #[test]
    fn cost_is_unit_cost_times_quantity() {
        assert_eq!(check(&item(), "GOLD", 3, 1_500), Ok(750));
    }

    #[test]
    fn validity_window_is_half_open() {
        assert_eq!(check(&item(), "GOLD", 1, 999), Err(Refusal::NotYetValid));
        assert_eq!(check(&item(), "GOLD", 1, 1_000), Ok(250));
        assert_eq!(check(&item(), "GOLD", 1, 1_999), Ok(250));
        assert_eq!(check(&item(), "GOLD", 1, 2_000), Err(Refusal::Ended));
    }

    #[test]
    fn tiers_restrict_when_listed() {
        assert_eq!(check(&item(), "SILVER", 1, 1_500), Err(Refusal::Tier));
        assert_eq!(check(&item(), "", 1, 1_500), Err(Refusal::Tier));
        let open = ItemTerms {
            eligible_tiers: vec![],
            ..item()
        };
        assert_eq!(check(&open, "", 1, 1_500), Ok(250));
    }

    #[test]
    fn inactive_items_and_bad_quantities_are_refused() {
        let off = ItemTerms {
            active: false,
            ..item()
        };
        assert_eq!(check(&off, "GOLD", 1, 1_500), Err(Refusal::Inactive));
        assert_eq!(check(&item(), "GOLD", 0, 1_500), Err(Refusal::Quantity));
        assert_eq!(check(&item(), "GOLD", 101, 1_500), Err(Refusal::Quantity));
        let dear = ItemTerms {
            points_cost: i64::MAX,
            ..item()
        };
        assert_eq!(check(&dear, "GOLD", 2, 1_500), Err(Refusal::Overflow));
    }
}
