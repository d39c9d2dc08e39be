//! Kubernetes quantities (`5`, `1500m`, `2k`, `1Ki`, `1e3`), read exactly
//! as apimachinery's `resource.Quantity` reads them, and `Milli`, the
//! integer milli-units the HPA controller computes in.
//!
//! The controller never sees a quantity as a float: it takes
//! `Quantity.MilliValue()` (the value × 1000, rounded up) and divides those
//! integers, so `21 / 1.4` is `21000 / 1400 = 15`, not `(21 / 1.4).ceil() =
//! 16` as binary fractions give. This module holds that reading and nothing
//! about what the quantity means (targets, tolerances: `hpa`).

/// A quantity in whole milli-units, as `Quantity.MilliValue()` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Milli(pub i64);

impl Milli {
    /// `units` whole units (a queue of `units` messages).
    pub const fn from_units(units: i64) -> Self {
        Milli(units * 1000)
    }

    /// As a float, for display and charts only.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl std::fmt::Display for Milli {
    /// As a decimal without binary noise: `5`, `1.4`, `0.001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sign, abs) = if self.0 < 0 {
            ("-", -self.0)
        } else {
            ("", self.0)
        };
        let (whole, frac) = (abs / 1000, abs % 1000);
        if frac == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{sign}{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// A quantity that does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a quantity's syntax.
    #[error("{0:?} is not a quantity (e.g. 5, 1500m, 2k, 1Ki)")]
    Syntax(String),
    /// Past what the controller's int64 milli-units hold.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// A parsed quantity: `mantissa × 10^exponent × 1024^binary`, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    exponent: i32,
    binary: u32,
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;

    /// `<signed decimal><suffix>`: a binary suffix (`Ki`…`Ei`), a decimal SI
    /// one (`n u m k M G T P E`), or a decimal exponent (`e3`, `E-2`).
    fn from_str(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let text_trimmed = text.trim();
        let split = text_trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
            .unwrap_or(text_trimmed.len());
        let (number, suffix) = text_trimmed.split_at(split);
        let (mut exponent, binary) = suffix_scale(suffix).ok_or_else(syntax)?;
        let (negative, digits) = match number.as_bytes().first() {
            Some(b'-') => (true, &number[1..]),
            Some(b'+') => (false, &number[1..]),
            _ => (false, number),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
            return Err(syntax());
        }
        // Trailing zeros of the fraction carry nothing; leading zeros of the
        // whole part neither. What is left must fit an i128.
        let fraction = fraction.trim_end_matches('0');
        let significant = format!("{}{fraction}", whole.trim_start_matches('0'));
        exponent -= i32::try_from(fraction.len()).map_err(|_| syntax())?;
        let mantissa = if significant.is_empty() {
            0
        } else {
            significant
                .parse::<i128>()
                .map_err(|_| QuantityError::TooLarge(text.to_owned()))?
        };
        Ok(Quantity {
            mantissa: if negative { -mantissa } else { mantissa },
            exponent,
            binary,
        })
    }
}

/// A suffix as (decimal exponent, powers of 1024): a binary suffix
/// (`Ki`…`Ei`), a decimal SI one (`n u m k M G T P E`), or a decimal
/// exponent (`e3`, `E-2`; a bare `E` is exa).
fn suffix_scale(suffix: &str) -> Option<(i32, u32)> {
    Some(match suffix {
        "" => (0, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        // `1e3`, `1E-2`: a decimal exponent (a bare `E` is exa, above).
        s if s.starts_with(['e', 'E']) => (s[1..].parse::<i32>().ok()?, 0),
        _ => return None,
    })
}

impl Quantity {
    /// The sign: -1, 0 or 1 (`Quantity.Sign`).
    pub fn signum(&self) -> i32 {
        self.mantissa.signum() as i32
    }

    /// `Quantity.MilliValue()`: the value × 1000, rounded up.
    pub fn milli_value(&self) -> Option<Milli> {
        let mut value = self.mantissa;
        for _ in 0..self.binary {
            value = value.checked_mul(1024)?;
        }
        let scale = self.exponent + 3;
        if scale >= 0 {
            value = value.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?;
        } else {
            // Past 10^38 the quotient is 0 or 1 anyway: rounded up, a
            // positive remainder is 1 milli-unit.
            let divisor = 10i128
                .checked_pow(scale.unsigned_abs())
                .unwrap_or(i128::MAX);
            value = value.div_euclid(divisor) + i128::from(value.rem_euclid(divisor) != 0);
        }
        i64::try_from(value).ok().map(Milli)
    }

    /// `Quantity.AsApproximateFloat64()`: the mantissa times a power of
    /// ten, in the same float steps as apimachinery (`base × 10^exp`, with
    /// `10^-k` as `1 / 10^k`), so a tolerance of `0.05` is the same float
    /// the controller compares against.
    pub fn approximate_f64(&self) -> f64 {
        let mut base = self.mantissa as f64;
        for _ in 0..self.binary {
            base *= 1024.0;
        }
        let pow = 10f64.powi(self.exponent.abs());
        match self.exponent {
            0 => base,
            e if e > 0 => base * pow,
            _ => base * (1.0 / pow),
        }
    }
}

/// A quantity's text as a float, for display (`watch`): `None` when it does
/// not read. The controller's arithmetic uses `Quantity::milli_value`.
pub fn parse_f64(text: &str) -> Option<f64> {
    text.parse::<Quantity>()
        .ok()
        .map(|q| q.approximate_f64())
        .filter(|v| v.is_finite())
}

/// A quantity's text in milli-units, rounded up as the controller reads it.
pub fn parse_milli(text: &str) -> Result<Milli, QuantityError> {
    text.parse::<Quantity>()?
        .milli_value()
        .ok_or_else(|| QuantityError::TooLarge(text.to_owned()))
}

/// `value` as Kubernetes writes a quantity: `5`, `2500m`, `12500u`: the
/// coarsest unit that holds it whole, so that it reads back the same.
pub fn format_f64(value: f64) -> String {
    let whole = |x: f64| (x - x.round()).abs() < 1e-6;
    if whole(value) {
        format!("{value:.0}")
    } else if whole(value * 1e3) {
        format!("{:.0}m", value * 1e3)
    } else if whole(value * 1e6) {
        format!("{:.0}u", value * 1e6)
    } else {
        format!("{:.0}n", value * 1e9)
    }
}

/// Milli-units as a quantity: `5` or `2500m`.
pub fn format_milli(value: Milli) -> String {
    if value.0 % 1000 == 0 {
        format!("{}", value.0 / 1000)
    } else {
        format!("{}m", value.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_every_suffix_kubernetes_writes() {
        for (text, value) in [
            ("2k", 2000.0),
            ("1500m", 1.5),
            ("7", 7.0),
            ("1Ki", 1024.0),
            ("3Mi", 3.0 * 1_048_576.0),
            ("1e3", 1000.0),
            ("250u", 0.00025),
            ("2M", 2e6),
            ("0.5", 0.5),
            ("1E", 1e18),
        ] {
            let got = parse_f64(text).unwrap_or_else(|| panic!("{text} parses"));
            assert!((got - value).abs() <= value.abs() * 1e-12, "{text}: {got}");
        }
        for bad in ["", "k", "2x", "abc", ".", "1.2.3", "--1", "1e"] {
            assert_eq!(parse_f64(bad), None, "{bad}");
        }
    }

    #[test]
    fn milli_values_are_exact_and_round_up() {
        for (text, milli) in [
            ("5", 5000),
            ("5000m", 5000),
            ("0.005k", 5000),
            ("1.4", 1400),
            ("2.3", 2300),
            ("1n", 1),
            ("1500u", 2),
            ("1500000u", 1500),
            ("1Ki", 1_024_000),
            ("1.5Ki", 1_536_000),
            ("-1500u", -1),
            ("-1.5", -1500),
            ("0", 0),
            ("0.000", 0),
        ] {
            assert_eq!(parse_milli(text), Ok(Milli(milli)), "{text}");
        }
        assert!(matches!(parse_milli("1E"), Err(QuantityError::TooLarge(_))));
    }

    #[test]
    fn tolerances_are_the_floats_apimachinery_gives() {
        // AsApproximateFloat64: 50 × (1 / 10^3), 5 × (1 / 10^2).
        assert_eq!("50m".parse::<Quantity>().unwrap().approximate_f64(), 0.05);
        assert_eq!("0.05".parse::<Quantity>().unwrap().approximate_f64(), 0.05);
        assert_eq!("0.1".parse::<Quantity>().unwrap().approximate_f64(), 0.1);
    }

    #[test]
    fn milli_units_print_as_decimals_and_quantities() {
        assert_eq!(Milli(1400).to_string(), "1.4");
        assert_eq!(Milli(5000).to_string(), "5");
        assert_eq!(Milli(1).to_string(), "0.001");
        assert_eq!(format_milli(Milli(2500)), "2500m");
        assert_eq!(format_milli(Milli(5000)), "5");
        assert_eq!(format_f64(0.0125), "12500u");
        for value in [0.05, 0.0125, 0.3, 7.0] {
            let back = parse_f64(&format_f64(value)).unwrap();
            assert!((back - value).abs() < 1e-12, "{value} -> {back}");
        }
    }
}
