//! Resource quantities as Enterprise Gateway's kernel variables carry them.
//!
//! A client asks for a kernel's resources with `KERNEL_CPUS`, `KERNEL_MEMORY`, `KERNEL_GPUS`
//! and their `_LIMIT` forms. Enterprise Gateway copies them unchanged into a Kubernetes pod
//! template, so clients write them in Kubernetes' quantity syntax: CPUs as `"2"`, `"0.5"` or
//! `"500m"` (thousandths), memory as bytes (`"536870912"`), with a decimal suffix (`k`, `M`,
//! `G`, `T`, `P`, `E`) or a binary one (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`), GPUs as a whole
//! number. A gateway that runs kernels as Docker containers or Swarm services must read the
//! same strings, so they mean the same on every backend; these are those readers.
//!
//! The values come from HTTP requests, so every function here is total (any input gives a
//! value or an error, never a panic) and bounded: at most [`MAX_LEN`] characters, at most 19
//! significant digits, results that fit Docker's signed 64-bit fields.
//!
//! Differences from Kubernetes, each refused with an error that says what to write: the
//! exponent forms (`1e3`), signs, spaces and memory in thousandths of a byte (`m`) are not
//! accepted; a CPU amount finer than `1m` is an error rather than rounded. A fractional
//! memory amount (`"1.5Gi"`) is rounded up to whole bytes, as Kubernetes does.

use std::fmt;

/// Longest quantity string accepted.
pub const MAX_LEN: usize = 32;
/// Most significant digits (integer and fraction together).
const MAX_DIGITS: usize = 19;
/// Largest value of any quantity: Docker's fields are `i64`.
const MAX_VALUE: u128 = i64::MAX as u128;
/// Largest CPU amount in thousandths, so that nanocpus (thousandths × 10^6) fit `i64`.
pub const MAX_MILLICPUS: u64 = (i64::MAX / 1_000_000) as u64;

/// Why a quantity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityError {
    /// Nothing was given.
    #[error("is empty")]
    Empty,
    /// More than [`MAX_LEN`] characters.
    #[error("is longer than {MAX_LEN} characters")]
    TooLong,
    /// Not `<digits>[.<digits>][suffix]`.
    #[error("{0}")]
    Syntax(String),
    /// The unit is not one this kind of quantity takes.
    #[error("has the unknown unit {unit:?}; use {allowed}")]
    Unit {
        /// The suffix found.
        unit: String,
        /// The units that are accepted.
        allowed: &'static str,
    },
    /// A CPU amount finer than a thousandth.
    #[error("is finer than 1m (a thousandth of a CPU)")]
    TooFine,
    /// The value does not fit.
    #[error("is too large")]
    TooLarge,
}

/// A quantity split into its number and unit.
struct Parts<'a> {
    /// The digits of the number without the point.
    digits: u128,
    /// How many of them follow the point.
    scale: u32,
    unit: &'a str,
}

fn split(text: &str) -> Result<Parts<'_>, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::Empty);
    }
    if text.len() > MAX_LEN {
        return Err(QuantityError::TooLong);
    }
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let syntax = || {
        QuantityError::Syntax(
            "is not a number with an optional unit, like 2, 0.5, 500m, 512Mi or 1G".to_owned(),
        )
    };
    if int.is_empty() || frac.is_some_and(|f| f.is_empty() || f.contains('.')) {
        return Err(syntax());
    }
    let frac = frac.unwrap_or("");
    let significant = int.trim_start_matches('0').len() + frac.len();
    if significant > MAX_DIGITS {
        return Err(QuantityError::TooLarge);
    }
    let mut digits: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        digits = digits * 10 + u128::from(b - b'0');
    }
    Ok(Parts {
        digits,
        // At most MAX_LEN digits follow the point.
        scale: u32::try_from(frac.len()).map_err(|_| QuantityError::TooLong)?,
        unit,
    })
}

/// `digits / 10^scale * numerator / denominator`, rounded up; `None` if it does not fit.
fn scaled(p: &Parts<'_>, numerator: u128, denominator: u128) -> Option<(u128, bool)> {
    let den = 10u128.checked_pow(p.scale)?.checked_mul(denominator)?;
    let num = p.digits.checked_mul(numerator)?;
    Some((num.div_ceil(den), num % den == 0))
}

/// A CPU amount in thousandths of a CPU: `"2"` is 2000, `"0.5"` and `"500m"` are 500.
pub fn parse_millicpus(text: &str) -> Result<u64, QuantityError> {
    let p = split(text)?;
    let (numerator, denominator) = match p.unit {
        "" => (1000, 1),
        "m" => (1, 1),
        other => {
            return Err(QuantityError::Unit {
                unit: other.to_owned(),
                allowed: "CPUs (2, 0.5) or thousandths of a CPU (500m)",
            });
        }
    };
    let (value, exact) = scaled(&p, numerator, denominator).ok_or(QuantityError::TooLarge)?;
    if !exact {
        return Err(QuantityError::TooFine);
    }
    u64::try_from(value)
        .ok()
        .filter(|v| *v <= MAX_MILLICPUS)
        .ok_or(QuantityError::TooLarge)
}

/// A memory amount in bytes: `"536870912"`, `"512Mi"`, `"1G"`, `"1.5Gi"` (rounded up).
pub fn parse_bytes(text: &str) -> Result<u64, QuantityError> {
    let p = split(text)?;
    let multiplier: u128 = match p.unit {
        "" => 1,
        "k" => 1000,
        "M" => 1000u128.pow(2),
        "G" => 1000u128.pow(3),
        "T" => 1000u128.pow(4),
        "P" => 1000u128.pow(5),
        "E" => 1000u128.pow(6),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        other => {
            return Err(QuantityError::Unit {
                unit: other.to_owned(),
                allowed: "bytes, k, M, G, T, P, E or Ki, Mi, Gi, Ti, Pi, Ei (e.g. 512Mi, 2G)",
            });
        }
    };
    let (value, _) = scaled(&p, multiplier, 1).ok_or(QuantityError::TooLarge)?;
    if value > MAX_VALUE {
        return Err(QuantityError::TooLarge);
    }
    u64::try_from(value).map_err(|_| QuantityError::TooLarge)
}

/// A whole number of devices (GPUs): `"0"`, `"1"`, `"4"`.
pub fn parse_count(text: &str) -> Result<u32, QuantityError> {
    let p = split(text)?;
    if !p.unit.is_empty() || p.scale != 0 {
        return Err(QuantityError::Syntax(
            "is not a whole number (like 1 or 2)".to_owned(),
        ));
    }
    u32::try_from(p.digits).map_err(|_| QuantityError::TooLarge)
}

/// Displays thousandths of a CPU as the shortest quantity that reads back the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millicpus(pub u64);

impl fmt::Display for Millicpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// Displays bytes with the largest binary unit that divides them, else as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [
            (60, "Ei"),
            (50, "Pi"),
            (40, "Ti"),
            (30, "Gi"),
            (20, "Mi"),
            (10, "Ki"),
        ] {
            let size = 1u64 << shift;
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpus() {
        for (text, want) in [
            ("2", 2000),
            ("0.5", 500),
            ("500m", 500),
            ("0.001", 1),
            ("1.250", 1250),
            ("0", 0),
            ("007", 7000),
        ] {
            assert_eq!(parse_millicpus(text), Ok(want), "{text}");
        }
        assert_eq!(parse_millicpus("0.0005"), Err(QuantityError::TooFine));
        assert_eq!(parse_millicpus("1.5m"), Err(QuantityError::TooFine));
        assert!(matches!(
            parse_millicpus("2Gi"),
            Err(QuantityError::Unit { .. })
        ));
        for bad in [
            "", "-1", "+1", " 1", "1 ", ".5", "5.", "1.2.3", "1e3", "m", "0x10",
        ] {
            assert!(parse_millicpus(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_millicpus(&"9".repeat(19)),
            Err(QuantityError::TooLarge)
        );
        assert_eq!(
            parse_millicpus(&"1".repeat(40)),
            Err(QuantityError::TooLong)
        );
    }

    #[test]
    fn memory() {
        for (text, want) in [
            ("536870912", 536_870_912),
            ("512Mi", 512 << 20),
            ("1G", 1_000_000_000),
            ("1.5Gi", 3 << 29),
            ("1k", 1000),
            ("2Ki", 2048),
            ("0.1", 1),
            ("1Ei", 1 << 60),
            ("7Ei", 7 << 60),
        ] {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
        assert_eq!(parse_bytes("8Ei"), Err(QuantityError::TooLarge));
        assert_eq!(parse_bytes("10E"), Err(QuantityError::TooLarge));
        for bad in ["", "512mi", "1m", "1GB", "1 G", "-1", "1e9", "G"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        let e = parse_bytes("1GB").unwrap_err().to_string();
        assert!(e.contains("\"GB\"") && e.contains("512Mi"), "{e}");
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("0"), Ok(0));
        assert_eq!(parse_count("4"), Ok(4));
        for bad in ["", "1.5", "1m", "-1", "4294967296"] {
            assert!(parse_count(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_reads_back() {
        assert_eq!(Millicpus(2000).to_string(), "2");
        assert_eq!(Millicpus(1500).to_string(), "1500m");
        assert_eq!(Bytes(512 << 20).to_string(), "512Mi");
        assert_eq!(Bytes(1_000_000_000).to_string(), "1000000000");
        assert_eq!(Bytes(0).to_string(), "0");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_millicpus(&s);
            let _ = parse_bytes(&s);
            let _ = parse_count(&s);
        }

        #[test]
        fn display_round_trips(m in 0u64..=MAX_MILLICPUS, b in 0u64..=(i64::MAX as u64)) {
            prop_assert_eq!(parse_millicpus(&Millicpus(m).to_string()), Ok(m));
            prop_assert_eq!(parse_bytes(&Bytes(b).to_string()), Ok(b));
        }
    }
}
