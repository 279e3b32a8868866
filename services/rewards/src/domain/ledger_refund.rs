//! How much of an order's earning a refund takes back: exactly what the
//! order's lines earned (as stored when it was recorded, never recomputed
//! from today's rules), in proportion to the refunded amount. Each line's
//! reversal is computed on its cumulative refunded amount, so a series of
//! partial refunds that ends in a full refund reverses exactly what the line
//! earned, and never more.

use loyalty_common::ServiceError;

use super::earning_rules::allocate;

/// A stored order line and what was refunded of it so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineState {
    pub line_id: String,
    pub amount_minor: i64,
    pub points: i64,
    pub refunded_minor: i64,
    pub reversed_points: i64,
}

impl LineState {
    fn refundable(&self) -> i64 {
        self.amount_minor - self.refunded_minor
    }

    /// Points reversed once `refunded` of the line's amount is refunded.
    fn reversed_at(&self, refunded: i64) -> i64 {
        if self.amount_minor <= 0 || refunded >= self.amount_minor {
            return if refunded >= self.amount_minor {
                self.points
            } else {
                0
            };
        }
        let q = i128::from(self.points) * i128::from(refunded) / i128::from(self.amount_minor);
        i64::try_from(q).unwrap_or(self.points)
    }
}

/// What is refunded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAsk {
    /// These lines, each by an amount (`None`: what is left of it).
    Lines(Vec<(String, Option<i64>)>),
    /// An amount of the order, spread over its lines by what is left of them.
    Amount(i64),
}

/// One line's share of a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRefund {
    pub line_id: String,
    pub refunded_minor: i64,
    pub reversed_points: i64,
}

/// The effect of a refund on the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPlan {
    pub lines: Vec<LineRefund>,
    /// Points to take back in total.
    pub points: i64,
    pub refunded_minor: i64,
}

/// Plans a refund of `ask` against `lines`; INVALID_ARGUMENT naming the
/// field when a line is unknown or more is refunded than is left.
pub fn plan_refund(lines: &[LineState], ask: &RefundAsk) -> Result<RefundPlan, ServiceError> {
    let amounts: Vec<i64> = match ask {
        RefundAsk::Lines(asked) => {
            let mut amounts = vec![0; lines.len()];
            for (i, (line_id, amount)) in asked.iter().enumerate() {
                let Some(idx) = lines.iter().position(|l| &l.line_id == line_id) else {
                    return Err(ServiceError::invalid(
                        format!("lines[{i}].line_id"),
                        format!("the order has no line {line_id:?}"),
                    ));
                };
                let left = lines[idx].refundable() - amounts[idx];
                let amount = amount.unwrap_or(left);
                if amount < 0 || amount > left {
                    return Err(ServiceError::invalid(
                        format!("lines[{i}].amount"),
                        format!("must be within 0..={left} (what is left of the line)"),
                    ));
                }
                amounts[idx] += amount;
            }
            amounts
        }
        RefundAsk::Amount(amount) => {
            let left: Vec<i64> = lines.iter().map(LineState::refundable).collect();
            let total_left: i64 = left.iter().sum();
            if *amount <= 0 || *amount > total_left {
                return Err(ServiceError::invalid(
                    "amount",
                    format!("must be within 1..={total_left} (what is left of the order)"),
                ));
            }
            let mut parts = allocate(*amount, &left);
            // allocation never exceeds a line's rest when weights are the rests
            for (p, l) in parts.iter_mut().zip(&left) {
                *p = (*p).min(*l);
            }
            parts
        }
    };
    let mut plan = RefundPlan {
        lines: Vec::new(),
        points: 0,
        refunded_minor: 0,
    };
    for (line, amount) in lines.iter().zip(amounts) {
        if amount == 0 && line.refundable() > 0 {
            continue;
        }
        let reversed = line.reversed_at(line.refunded_minor + amount) - line.reversed_points;
        if amount == 0 && reversed == 0 {
            continue;
        }
        plan.points += reversed;
        plan.refunded_minor += amount;
        plan.lines.push(LineRefund {
            line_id: line.line_id.clone(),
            refunded_minor: amount,
            reversed_points: reversed,
        });
    }
    Ok(plan)
}

/// How a reversal of `points` is covered: from the order's own lot first,
/// then from other available points, and the rest is either a debt
/// (negative balance) or written off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clawback {
    pub from_pending: i64,
    pub from_available: i64,
    /// Taken from an available balance that does not hold it (debt).
    pub debt: i64,
    pub written_off: i64,
}

/// Splits a reversal of `points` given what the order's pending lot still
/// holds, what is available, and whether a negative balance is allowed.
pub fn plan_clawback(
    points: i64,
    pending_in_order_lot: i64,
    available: i64,
    negative_allowed: bool,
) -> Clawback {
    let from_pending = points.min(pending_in_order_lot.max(0));
    let rest = points - from_pending;
    let from_available = rest.min(available.max(0));
    let short = rest - from_available;
    if negative_allowed {
        Clawback {
            from_pending,
            from_available,
            debt: short,
            written_off: 0,
        }
    } else {
        Clawback {
            from_pending,
            from_available,
            debt: 0,
            written_off: short,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(id: &str, amount: i64, points: i64) -> LineState {
        LineState {
            line_id: id.into(),
            amount_minor: amount,
            points,
            refunded_minor: 0,
            reversed_points: 0,
        }
    }

    fn apply(lines: &mut [LineState], plan: &RefundPlan) {
        for r in &plan.lines {
            let l = lines.iter_mut().find(|l| l.line_id == r.line_id).unwrap();
            l.refunded_minor += r.refunded_minor;
            l.reversed_points += r.reversed_points;
        }
    }

    #[test]
    fn refunding_one_line_reverses_what_that_line_earned() {
        let lines = vec![line("a", 10_000, 300), line("b", 5_000, 50)];
        let plan = plan_refund(&lines, &RefundAsk::Lines(vec![("a".into(), None)])).unwrap();
        assert_eq!(plan.points, 300);
        assert_eq!(plan.refunded_minor, 10_000);
    }

    #[test]
    fn partial_refunds_add_up_to_exactly_the_earning() {
        let mut lines = vec![line("a", 999, 77)];
        let mut total = 0;
        for amount in [333, 333, 333] {
            let plan = plan_refund(&lines, &RefundAsk::Amount(amount)).unwrap();
            total += plan.points;
            apply(&mut lines, &plan);
        }
        assert_eq!(total, 77);
        assert!(plan_refund(&lines, &RefundAsk::Amount(1)).is_err());
    }

    #[test]
    fn unknown_lines_and_excess_amounts_are_named() {
        let lines = vec![line("a", 100, 1)];
        let ServiceError::InvalidArgument(v) =
            plan_refund(&lines, &RefundAsk::Lines(vec![("zz".into(), None)])).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(v[0].field, "lines[0].line_id");
        let ServiceError::InvalidArgument(v) =
            plan_refund(&lines, &RefundAsk::Lines(vec![("a".into(), Some(101))])).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(v[0].field, "lines[0].amount");
    }

    #[test]
    fn clawback_takes_pending_then_available_then_follows_policy() {
        assert_eq!(
            plan_clawback(100, 30, 50, false),
            Clawback {
                from_pending: 30,
                from_available: 50,
                debt: 0,
                written_off: 20
            }
        );
        assert_eq!(
            plan_clawback(100, 30, 50, true),
            Clawback {
                from_pending: 30,
                from_available: 50,
                debt: 20,
                written_off: 0
            }
        );
    }

    proptest! {
        #[test]
        fn any_refund_sequence_never_reverses_more_than_earned(
            amounts in prop::collection::vec((0i64..100_000, 0i64..10_000), 1..6),
            cuts in prop::collection::vec(1i64..50_000, 1..10),
        ) {
            let mut lines: Vec<LineState> = amounts
                .iter()
                .enumerate()
                .map(|(i, (a, p))| line(&format!("l{i}"), *a, *p))
                .collect();
            let earned: i64 = lines.iter().map(|l| l.points).sum();
            let mut reversed = 0;
            for c in cuts {
                let left: i64 = lines.iter().map(LineState::refundable).sum();
                if left == 0 { break; }
                let plan = plan_refund(&lines, &RefundAsk::Amount(c.min(left))).unwrap();
                prop_assert!(plan.points >= 0);
                reversed += plan.points;
                apply(&mut lines, &plan);
                prop_assert!(reversed <= earned);
            }
            // refund what is left: everything comes back, exactly
            let left: i64 = lines.iter().map(LineState::refundable).sum();
            if left > 0 {
                let plan = plan_refund(&lines, &RefundAsk::Amount(left)).unwrap();
                reversed += plan.points;
                apply(&mut lines, &plan);
            } else {
                let plan = plan_refund(&lines, &RefundAsk::Lines(lines.iter().map(|l| (l.line_id.clone(), Some(0))).collect())).unwrap();
                reversed += plan.points;
            }
            prop_assert_eq!(reversed, earned);
        }
    }
}
