//! Money and points as integers, never floats: `Money` in minor units of an
//! ISO 4217 currency, `Points` as a whole number. Constructors validate, so
//! the rest of the code cannot hold an invalid amount, and arithmetic is
//! checked (overflow and currency mixing are errors, not wrap-arounds).

use loyalty_proto::common::Money as MoneyProto;

use crate::{ServiceError, Violations};

/// An ISO 4217 currency code (three upper-case letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, String> {
        match code.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(format!(
                "{code:?} is not an ISO 4217 code (three upper-case letters, e.g. CNY)"
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // three ASCII upper-case letters by construction
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount in minor units (cents, fen) of a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// From the contract type; `field` names it in violations. Amounts must
    /// not be negative (refunds are positive amounts on refund messages).
    pub fn from_proto(field: &str, proto: Option<&MoneyProto>) -> Result<Self, ServiceError> {
        let mut v = Violations::new();
        let Some(p) = proto else {
            return Err(ServiceError::invalid(field, "is required"));
        };
        let currency = v.check(&format!("{field}.currency"), Currency::parse(&p.currency));
        if p.minor_units < 0 {
            v.add(format!("{field}.minor_units"), "must not be negative");
        }
        v.finish()?;
        Ok(Self::new(
            p.minor_units,
            currency.ok_or_else(|| ServiceError::invalid(field, "invalid"))?,
        ))
    }

    pub fn to_proto(self) -> MoneyProto {
        MoneyProto {
            minor_units: self.minor,
            currency: self.currency.as_str().to_owned(),
        }
    }

    /// Sum in the same currency; `None` on overflow or mixed currencies.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        (self.currency == other.currency).then_some(())?;
        Some(Self::new(
            self.minor.checked_add(other.minor)?,
            self.currency,
        ))
    }

    /// Difference in the same currency; `None` on overflow or mixed currencies.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        (self.currency == other.currency).then_some(())?;
        Some(Self::new(
            self.minor.checked_sub(other.minor)?,
            self.currency,
        ))
    }
}

/// A number of loyalty points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Points(pub i64);

impl Points {
    pub const ZERO: Self = Self(0);

    /// Points given by a caller: `field` names them in the error.
    pub fn positive(field: &str, value: i64) -> Result<Self, ServiceError> {
        if value > 0 {
            Ok(Self(value))
        } else {
            Err(ServiceError::invalid(
                field,
                "must be a positive number of points",
            ))
        }
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cny() -> Currency {
        Currency::parse("CNY").unwrap()
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert_eq!(cny().as_str(), "CNY");
        for bad in ["cny", "CN", "CNYY", "C1Y", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proto_money_is_validated_with_field_paths() {
        let ok = Money::from_proto(
            "amount",
            Some(&MoneyProto {
                minor_units: 1999,
                currency: "CNY".into(),
            }),
        )
        .unwrap();
        assert_eq!(ok, Money::new(1999, cny()));
        assert_eq!(ok.to_proto().minor_units, 1999);
        let err = Money::from_proto(
            "amount",
            Some(&MoneyProto {
                minor_units: -1,
                currency: "yuan".into(),
            }),
        )
        .unwrap_err();
        let ServiceError::InvalidArgument(v) = err else {
            panic!()
        };
        let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["amount.currency", "amount.minor_units"]);
        assert!(Money::from_proto("amount", None).is_err());
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Money::new(i64::MAX, cny());
        assert!(a.checked_add(Money::new(1, cny())).is_none());
        let eur = Money::new(1, Currency::parse("EUR").unwrap());
        assert!(
            Money::new(1, cny()).checked_add(eur).is_none(),
            "no mixing currencies"
        );
        assert_eq!(
            Money::new(5, cny())
                .checked_sub(Money::new(7, cny()))
                .unwrap()
                .minor,
            -2
        );
        assert_eq!(Points(3).checked_sub(Points(5)), Some(Points(-2)));
        assert!(Points(i64::MIN).checked_sub(Points(1)).is_none());
        assert!(Points::positive("points", 0).is_err());
    }
}
