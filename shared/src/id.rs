//! Validated names of tenants (apps) and rooms.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name must be 1 to {max} characters, got {len}")]
    Length {
        kind: &'static str,
        max: usize,
        len: usize,
    },
    #[error("{kind} name may only contain a-z, 0-9 and '-', got {found:?}")]
    Charset { kind: &'static str, found: char },
}

fn validate(kind: &'static str, s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() || s.len() > max {
        return Err(NameError::Length {
            kind,
            max,
            len: s.len(),
        });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::Charset { kind, found });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest accepted name.
            pub const MAX_LEN: usize = $max;

            /// Checks `s` against `[a-z0-9-]{1,MAX_LEN}`.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                validate($kind, &s, $max)?;
                Ok(Self(s))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// The name of an app (tenant): `[a-z0-9-]{1,32}`.
    AppName,
    "app",
    32
);
name_type!(
    /// The name of a room inside an app: `[a-z0-9-]{1,64}`.
    RoomName,
    "room",
    64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        assert_eq!(AppName::new("live-1").unwrap().as_str(), "live-1");
        assert!(AppName::new("a".repeat(32)).is_ok());
    }

    #[test]
    fn refuses_bad_names() {
        assert!(matches!(AppName::new(""), Err(NameError::Length { .. })));
        assert!(matches!(
            AppName::new("a".repeat(33)),
            Err(NameError::Length { .. })
        ));
        assert!(matches!(
            AppName::new("Live"),
            Err(NameError::Charset { found: 'L', .. })
        ));
        assert!(AppName::new("../etc").is_err());
        assert!(RoomName::new("a/b").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: AppName = serde_json::from_str("\"demo\"").unwrap();
        assert_eq!(ok.as_str(), "demo");
        assert!(serde_json::from_str::<AppName>("\"NO\"").is_err());
    }
}
