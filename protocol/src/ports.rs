//! Enterprise Gateway's port-range rules.
//!
//! Operators confine kernel ports to a firewall-friendly window with `EG_PORT_RANGE`,
//! `--EnterpriseGatewayApp.port_range` or a kernelspec's `port_range`, written `"<lower>..<upper>"`.
//! The gateway validates the string before launching and passes it to the launcher as
//! `--port-range`; the launcher must apply the same rules, or a range the gateway accepted would
//! make the launcher fail (or the reverse). This module is those rules, in one place.
//!
//! The rules (EG `processproxy.py` `_validate_port_range`, mirrored in the Python launcher):
//! - both bounds are inclusive;
//! - `"0..0"`, or any range whose bounds are equal, means "no restriction": bind port 0 and let
//!   the operating system choose;
//! - otherwise `upper - lower` must be at least the minimum size (`EG_MIN_PORT_RANGE_SIZE`,
//!   default [`DEFAULT_MIN_SIZE`]) and both bounds must lie in `1024..=65535`.
//!
//! Interop quirk: Python's `str.split("..")` silently ignores a third part (`"1..2..3"`); this
//! parser rejects it instead, because such a string is certainly a typo.

use std::fmt;
use std::str::FromStr;

/// The default `EG_MIN_PORT_RANGE_SIZE`.
pub const DEFAULT_MIN_SIZE: u32 = 1000;

/// The lowest port a bounded range may include.
pub const LOWEST_PORT: u16 = 1024;

/// A validated port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRange {
    /// Any port: let the operating system pick (bind port 0).
    Unrestricted,
    /// Ports `lower..=upper`.
    Bounded {
        /// Lowest port in the range (inclusive).
        lower: u16,
        /// Highest port in the range (inclusive).
        upper: u16,
    },
}

/// Why a port-range string was rejected. Every variant is the fault of whoever configured the
/// range (operator, kernelspec or gateway command line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortRangeError {
    /// The string has no `..` separator.
    #[error(
        "invalid port range {0:?}: expected \"<lower>..<upper>\", for example \"40000..41000\", or \"0..0\" for no restriction"
    )]
    MissingSeparator(String),
    /// A bound is not a non-negative decimal integer below 2^32.
    #[error(
        "invalid port range {range:?}: the {which} bound {bound:?} is not a number; expected \"<lower>..<upper>\", for example \"40000..41000\""
    )]
    NotANumber {
        /// The whole input.
        range: String,
        /// `"lower"` or `"upper"`.
        which: &'static str,
        /// The offending text.
        bound: String,
    },
    /// The upper bound is below the lower bound.
    #[error("invalid port range {lower}..{upper}: the upper bound is below the lower bound")]
    Reversed {
        /// The parsed lower bound.
        lower: u32,
        /// The parsed upper bound.
        upper: u32,
    },
    /// The range spans fewer ports than the configured minimum.
    #[error("invalid port range {lower}..{upper}: upper - lower is {}, but must be at least {min_size} (EG_MIN_PORT_RANGE_SIZE)", upper.saturating_sub(*lower))]
    TooSmall {
        /// The parsed lower bound.
        lower: u32,
        /// The parsed upper bound.
        upper: u32,
        /// The minimum `upper - lower` that was required.
        min_size: u32,
    },
    /// A bound is outside `1024..=65535`.
    #[error("invalid port range {lower}..{upper}: both bounds must be between 1024 and 65535")]
    OutOfRange {
        /// The parsed lower bound.
        lower: u32,
        /// The parsed upper bound.
        upper: u32,
    },
}

impl PortRange {
    /// Parses and validates `"<lower>..<upper>"` (surrounding whitespace allowed).
    ///
    /// `min_size` is the smallest accepted `upper - lower`; pass [`DEFAULT_MIN_SIZE`] unless
    /// `EG_MIN_PORT_RANGE_SIZE` says otherwise.
    pub fn parse(s: &str, min_size: u32) -> Result<Self, PortRangeError> {
        let trimmed = s.trim();
        let Some((lo, hi)) = trimmed.split_once("..") else {
            return Err(PortRangeError::MissingSeparator(s.to_owned()));
        };
        let number = |which: &'static str, text: &str| {
            text.trim()
                .parse::<u32>()
                .map_err(|_| PortRangeError::NotANumber {
                    range: s.to_owned(),
                    which,
                    bound: text.to_owned(),
                })
        };
        let lower = number("lower", lo)?;
        let upper = number("upper", hi)?;
        if lower == upper {
            return Ok(PortRange::Unrestricted);
        }
        if upper < lower {
            return Err(PortRangeError::Reversed { lower, upper });
        }
        if upper - lower < min_size {
            return Err(PortRangeError::TooSmall {
                lower,
                upper,
                min_size,
            });
        }
        match (u16::try_from(lower), u16::try_from(upper)) {
            (Ok(l), Ok(u)) if l >= LOWEST_PORT => Ok(PortRange::Bounded { lower: l, upper: u }),
            _ => Err(PortRangeError::OutOfRange { lower, upper }),
        }
    }

    /// Whether `port` may be used. Every port is allowed when unrestricted.
    pub fn contains(&self, port: u16) -> bool {
        match *self {
            PortRange::Unrestricted => true,
            PortRange::Bounded { lower, upper } => (lower..=upper).contains(&port),
        }
    }

    /// Maps a random number onto a port inside the range; `None` when unrestricted, meaning
    /// "bind port 0 and let the operating system pick".
    ///
    /// The mapping is a modulo: for ranges of at most 64 512 ports the bias is below 2^-16,
    /// which does not matter for choosing a port. A hand-built `Bounded` with its bounds
    /// swapped is treated as the range between them.
    pub fn pick(&self, random: u32) -> Option<u16> {
        match *self {
            PortRange::Unrestricted => None,
            PortRange::Bounded { lower, upper } => {
                let (lo, hi) = (lower.min(upper), lower.max(upper));
                let span = u32::from(hi - lo) + 1;
                let offset = random % span;
                // `offset <= hi - lo`, so the sum stays within `lo..=hi`.
                u16::try_from(u32::from(lo) + offset).ok()
            }
        }
    }

    /// Number of ports in the range; `None` when unrestricted.
    pub fn len(&self) -> Option<u32> {
        match *self {
            PortRange::Unrestricted => None,
            PortRange::Bounded { lower, upper } => {
                Some(u32::from(lower.max(upper) - lower.min(upper)) + 1)
            }
        }
    }

    /// Always `false`: a range holds at least one port. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// Parses with [`DEFAULT_MIN_SIZE`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortRange::parse(s, DEFAULT_MIN_SIZE)
    }
}

impl fmt::Display for PortRange {
    /// Writes the form [`PortRange::parse`] reads: `"0..0"` or `"<lower>..<upper>"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRange::Unrestricted => f.write_str("0..0"),
            PortRange::Bounded { lower, upper } => write!(f, "{lower}..{upper}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A predicate saying whether an error is the one a case expects.
    type IsExpected = fn(&PortRangeError) -> bool;

    #[test]
    fn unrestricted_forms() {
        for s in ["0..0", " 0..0\n", "5..5", "70000..70000"] {
            assert_eq!(
                PortRange::parse(s, DEFAULT_MIN_SIZE),
                Ok(PortRange::Unrestricted)
            );
        }
        assert_eq!(PortRange::Unrestricted.pick(12345), None);
        assert_eq!(PortRange::Unrestricted.len(), None);
        assert!(PortRange::Unrestricted.contains(1));
    }

    #[test]
    fn bounded_forms() {
        assert_eq!(
            PortRange::parse("40000..41000", DEFAULT_MIN_SIZE),
            Ok(PortRange::Bounded {
                lower: 40000,
                upper: 41000
            })
        );
        assert_eq!(
            PortRange::parse(" 1024 .. 65535 ", DEFAULT_MIN_SIZE),
            Ok(PortRange::Bounded {
                lower: 1024,
                upper: 65535
            })
        );
        let r: PortRange = "40000..41000".parse().unwrap();
        assert_eq!(r.len(), Some(1001));
        assert!(r.contains(40000) && r.contains(41000));
        assert!(!r.contains(39999) && !r.contains(41001));
        assert_eq!(r.to_string(), "40000..41000");
    }

    #[test]
    fn size_rule_is_upper_minus_lower() {
        assert!(PortRange::parse("40000..40999", 1000).is_err());
        assert!(PortRange::parse("40000..41000", 1000).is_ok());
        assert!(PortRange::parse("40000..40010", 10).is_ok());
    }

    #[test]
    fn rejections_name_the_problem() {
        let cases: [(&str, IsExpected); 8] = [
            ("", |e| matches!(e, PortRangeError::MissingSeparator(_))),
            ("40000-41000", |e| {
                matches!(e, PortRangeError::MissingSeparator(_))
            }),
            ("a..41000", |e| {
                matches!(e, PortRangeError::NotANumber { which: "lower", .. })
            }),
            ("40000..", |e| {
                matches!(e, PortRangeError::NotANumber { which: "upper", .. })
            }),
            ("1..2..3", |e| {
                matches!(e, PortRangeError::NotANumber { which: "upper", .. })
            }),
            ("41000..40000", |e| {
                matches!(e, PortRangeError::Reversed { .. })
            }),
            ("100..2000", |e| {
                matches!(e, PortRangeError::OutOfRange { .. })
            }),
            ("65000..70000", |e| {
                matches!(e, PortRangeError::OutOfRange { .. })
            }),
        ];
        for (input, is_expected) in cases {
            let err = PortRange::parse(input, DEFAULT_MIN_SIZE).unwrap_err();
            assert!(is_expected(&err), "{input:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
        let msg = PortRange::parse("40000-41000", 1000)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("<lower>..<upper>"), "{msg}");
        let msg = PortRange::parse("40000..40500", 1000)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("500") && msg.contains("1000"), "{msg}");
    }

    #[test]
    fn pick_covers_both_ends() {
        let r = PortRange::Bounded {
            lower: 2000,
            upper: 3000,
        };
        assert_eq!(r.pick(0), Some(2000));
        assert_eq!(r.pick(1000), Some(3000));
        assert_eq!(r.pick(1001), Some(2000));
        let full = PortRange::Bounded {
            lower: 1024,
            upper: 65535,
        };
        assert_eq!(full.pick(u32::MAX), Some(1024 + (u32::MAX % 64512) as u16));
    }

    proptest! {
        #[test]
        fn pick_is_always_inside(lower in any::<u16>(), upper in any::<u16>(), random in any::<u32>()) {
            let r = PortRange::Bounded { lower: lower.min(upper), upper: lower.max(upper) };
            let port = r.pick(random).unwrap();
            prop_assert!(r.contains(port));
        }

        #[test]
        fn parsed_ranges_pick_inside(lower in 1024u16.., size in 0u32..70000, random in any::<u32>()) {
            let upper = u32::from(lower) + size;
            if let Ok(r) = PortRange::parse(&format!("{lower}..{upper}"), 100) {
                let port = r.pick(random);
                match r {
                    PortRange::Unrestricted => prop_assert_eq!(port, None),
                    PortRange::Bounded { .. } => prop_assert!(r.contains(port.unwrap())),
                }
                prop_assert_eq!(PortRange::parse(&r.to_string(), 100), Ok(r));
            } else {
                prop_assert!(upper > 65535 || size < 100);
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}", min in any::<u32>()) {
            let _ = PortRange::parse(&s, min);
        }
    }
}
