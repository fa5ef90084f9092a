//! Go-style durations (`90s`, `5m`, `1h30m`, `500ms`), as Flux and Kubernetes users write them.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected a Go duration such as 30s, 5m or 1h30m")]
pub struct InvalidDuration(pub String);

/// Parses a Go duration made of `<number><unit>` parts, units `ms`, `s`, `m`, `h`.
pub fn parse(input: &str) -> Result<Duration, InvalidDuration> {
    let err = || InvalidDuration(input.to_string());
    if input.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = input;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return Err(err());
        };
        total += value * unit;
        rest = &rest[len..];
    }
    if !total.is_finite() || total > 365.0 * 24.0 * 3600.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "5", "m", "5x", "-5s", "1h 2m", "99999999h"] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
