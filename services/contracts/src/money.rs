//! Money as a decimal string on the wire (`"12.50"`), whole cents inside.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount in cents. Serialized as a decimal string with two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(pub i64);

impl Money {
    /// Parses `"12.5"`, `"12.50"`, `"12"`; at most two decimals, not negative.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is not an amount like \"12.50\"");
        if t.is_empty() || t.starts_with('-') || t.starts_with('+') {
            return Err(bad());
        }
        let (whole, frac) = match t.split_once('.') {
            Some((_, "")) => return Err(bad()),
            Some((w, f)) => (w, f),
            None => (t, ""),
        };
        if whole.is_empty()
            || frac.len() > 2
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: i64 = whole.parse().map_err(|_| bad())?;
        let cents: i64 = match frac.len() {
            0 => 0,
            1 => frac.parse::<i64>().map_err(|_| bad())? * 10,
            _ => frac.parse().map_err(|_| bad())?,
        };
        whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(cents))
            .map(Money)
            .ok_or_else(bad)
    }

    /// `self × n`, or `None` on overflow.
    pub fn times(self, n: u32) -> Option<Money> {
        self.0.checked_mul(i64::from(n)).map(Money)
    }

    /// `self + other`, or `None` on overflow.
    pub fn plus(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", a / 100, a % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Money::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(Money::parse("12.50").unwrap(), Money(1250));
        assert_eq!(Money::parse("12.5").unwrap(), Money(1250));
        assert_eq!(Money::parse("12").unwrap(), Money(1200));
        assert_eq!(Money::parse("0.07").unwrap().to_string(), "0.07");
        for bad in [
            "",
            "-1",
            "1.234",
            "a",
            "1.",
            ".5",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(Money::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&Money(1250)).unwrap(), "\"12.50\"");
        assert_eq!(Money(350).times(3), Some(Money(1050)));
    }
}
