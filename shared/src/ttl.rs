//! Durations as users write them in token requests: `"1h"`, `"30m"`, `"45s"`, `"2d"` or seconds.

use std::time::Duration;

/// Why a TTL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("ttl {0:?} is not a number of seconds or a number followed by s, m, h or d")]
    Syntax(String),
    #[error("ttl must be between 1 second and {max_days} days")]
    Range { max_days: u64 },
}

/// Longest TTL a token may have.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses `"1h"`, `"30m"`, `"90s"`, `"1d"` or a bare number of seconds.
pub fn parse_ttl(s: &str) -> Result<Duration, TtlError> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| TtlError::Syntax(s.to_string()))?;
    let secs = n.checked_mul(mult).ok_or(TtlError::Range {
        max_days: MAX_TTL.as_secs() / 86400,
    })?;
    let d = Duration::from_secs(secs);
    if secs == 0 || d > MAX_TTL {
        return Err(TtlError::Range {
            max_days: MAX_TTL.as_secs() / 86400,
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("45s").unwrap(), Duration::from_secs(45));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_ttl("600").unwrap(), Duration::from_secs(600));
    }

    #[test]
    fn refuses_garbage_and_range() {
        assert!(matches!(parse_ttl("abc"), Err(TtlError::Syntax(_))));
        assert!(matches!(parse_ttl("1x"), Err(TtlError::Syntax(_))));
        assert!(matches!(parse_ttl(""), Err(TtlError::Syntax(_))));
        assert!(matches!(parse_ttl("0"), Err(TtlError::Range { .. })));
        assert!(matches!(parse_ttl("31d"), Err(TtlError::Range { .. })));
        assert!(parse_ttl("99999999999999999999h").is_err());
    }
}
