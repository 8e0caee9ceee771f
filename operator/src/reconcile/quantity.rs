//! Kubernetes quantities compared by value: the API server stores `0.5` as
//! `500m` and `1024Mi` as `1Gi`, so comparing the strings would see a
//! change on every reconcile. Exact (integer) arithmetic, no floats.
//!
//! Written here rather than taken from a crate: k8s-openapi's `Quantity`
//! is a bare string, and the crates that parse quantities convert through
//! `f64` (where `0.1` and `100m` may differ) or pull in a big-number
//! dependency; equality is all that is needed, in forty lines.

/// Whether `a` and `b` are both quantities with the same value.
pub fn same(a: &str, b: &str) -> bool {
    matches!((parse(a), parse(b)), (Some(x), Some(y)) if x == y)
}

/// Whether `s` is a quantity (as the API server parses them).
pub fn is_valid(s: &str) -> bool {
    parse(s).is_some()
}

/// `mantissa × 10^exp10`, normalized (no trailing zero in the mantissa).
#[derive(Debug, PartialEq, Eq)]
struct Value {
    mantissa: i128,
    exp10: i32,
}

fn parse(s: &str) -> Option<Value> {
    let (sign, body) = match s.as_bytes().first()? {
        b'-' => (-1, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let number_end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || whole.len() + fraction.len() > 30 {
        return None;
    }
    let mut mantissa: i128 = format!("{whole}{fraction}").parse().ok()?;
    let mut exp10 = -(fraction.len() as i32);
    let (dec, bin) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        exp if exp.starts_with(['e', 'E']) => (exp[1..].parse::<i32>().ok()?, 0),
        _ => return None,
    };
    exp10 = exp10.checked_add(dec)?;
    mantissa = mantissa.checked_mul(1i128.checked_shl(bin)?)? * sign;
    while mantissa != 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        exp10 = exp10.checked_add(1)?;
    }
    if mantissa == 0 {
        exp10 = 0;
    }
    Some(Value { mantissa, exp10 })
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn canonical_forms_are_equal() {
        for (a, b) in [
            ("0.5", "500m"),
            ("1", "1000m"),
            ("1Gi", "1024Mi"),
            ("1k", "1000"),
            ("0.1", "100m"),
            ("1e3", "1k"),
            ("2", "2.0"),
            ("0", "0m"),
            ("1.5Gi", "1536Mi"),
        ] {
            assert!(same(a, b), "{a} = {b}");
        }
    }

    #[test]
    fn different_values_or_non_quantities_differ() {
        for (a, b) in [
            ("0.5", "501m"),
            ("1G", "1Gi"),
            ("32GB", "32G"),
            ("abc", "abc"),
            ("", ""),
            ("1", "-1"),
        ] {
            assert!(!same(a, b), "{a} != {b}");
        }
    }
}
