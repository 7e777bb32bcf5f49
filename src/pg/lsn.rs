//! Log sequence numbers: a position in the write-ahead log.
//!
//! PostgreSQL prints an LSN as two hexadecimal halves, `16/B374D848` (high 32 bits, low 32 bits).
//! The `Lsn` type keeps positions from being mixed up with byte counts or row counts, orders
//! them, and parses and prints the server's text form exactly.

use std::fmt;
use std::str::FromStr;

/// A position in PostgreSQL's write-ahead log; `Lsn::ZERO` is `0/0`, the "invalid" position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

/// Why a string is not an LSN in the `X/Y` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers of at most 8 digits separated by '/', like 16/B374D848")]
pub struct ParseLsnError {
    input: String,
}

impl Lsn {
    /// `0/0`: the server's "no position"; also where a fresh bookmark starts.
    pub const ZERO: Lsn = Lsn(0);
    /// The largest position; useful as an open upper bound.
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// Wraps the 64-bit position the replication protocol sends on the wire.
    pub const fn from_u64(value: u64) -> Lsn {
        Lsn(value)
    }

    /// The 64-bit position, as the replication protocol sends it.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is `0/0`, which PostgreSQL uses for "no position".
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The position `bytes` further on, or `None` past the end of the LSN space.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// The position `bytes` further on, stopping at `Lsn::MAX`.
    pub fn saturating_add(self, bytes: u64) -> Lsn {
        Lsn(self.0.saturating_add(bytes))
    }

    /// Bytes of WAL from `earlier` to `self`; zero when `earlier` is not before `self`.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(input: &str) -> Result<Lsn, ParseLsnError> {
        let error = || ParseLsnError {
            input: input.to_owned(),
        };
        let (high, low) = input.split_once('/').ok_or_else(error)?;
        let half = |text: &str| {
            if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            u32::from_str_radix(text, 16).map_err(|_| error())
        };
        Ok(Lsn((u64::from(half(high)?) << 32) | u64::from(half(low)?)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Lsn, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Lsn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LSN as \"X/Y\" text or as a 64-bit integer")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Lsn, E> {
                text.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Lsn, E> {
                Ok(Lsn(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Lsn, E> {
                u64::try_from(value)
                    .map(Lsn)
                    .map_err(|_| E::custom("an LSN cannot be negative"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_servers_text_form() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.as_u64(), 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!("ffffffff/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn::MAX);
        assert_eq!(Lsn::from_u64(0x1_0000_0000).to_string(), "1/0");
    }

    #[test]
    fn rejects_text_that_is_not_an_lsn() {
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1",
            "1/2/3",
            "g/0",
            "123456789/0",
            "0/-1",
            " 0/1",
            "+1/1",
        ] {
            let error = bad.parse::<Lsn>().unwrap_err();
            assert!(
                error.to_string().contains("invalid LSN"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn orders_and_counts_bytes() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b = a.checked_add(1).unwrap();
        assert_eq!(b.to_string(), "1/0");
        assert!(a < b);
        assert_eq!(b.bytes_since(a), 1);
        assert_eq!(a.bytes_since(b), 0);
        assert_eq!(Lsn::MAX.checked_add(1), None);
        assert_eq!(Lsn::MAX.saturating_add(5), Lsn::MAX);
    }

    #[test]
    fn serde_uses_the_text_form_and_accepts_integers() {
        let lsn: Lsn = "2/10".parse().unwrap();
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"2/10\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"2/10\"").unwrap(), lsn);
        assert_eq!(serde_json::from_str::<Lsn>("8589934608").unwrap(), lsn);
        assert!(serde_json::from_str::<Lsn>("-1").is_err());
    }
}
