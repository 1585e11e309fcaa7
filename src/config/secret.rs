//! Values that must never be printed.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never be printed: Debug and Serialize redact it (a URL
/// keeps its scheme, host, port and path), and only [`Secret::expose`]
/// gives the plaintext to the code that uses it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// What may be shown: a URL with its password replaced, else a
    /// placeholder; each of a comma-separated list on its own.
    pub fn redacted(&self) -> String {
        self.0
            .split(',')
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A TOML file may give a number (`password = 123`): accept any scalar and
/// keep its text. (The environment's secrets arrive as strings: see
/// `SecretsFromEnv`.)
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Secret(match Scalar::deserialize(d)? {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::F(x) => x.to_string(),
            Scalar::B(b) => b.to_string(),
        }))
    }
}

/// Serializes the redacted form: what `context-api config` prints.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Keeps scheme, host, port and path; hides the password. Anything that is
/// not a URL with a host is hidden whole.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        _ => "[redacted]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_never_shows_the_value() {
        let s = Secret::new("postgres://app:hunter2@db:5432/contexts");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"postgres://app:redacted@db:5432/contexts\"");
        let key =
            Secret::new("admin:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"[redacted]\"");
        let list = Secret::new("postgres://a:one@r1/db,postgres://b:two@r2/db");
        assert_eq!(
            list.redacted(),
            "postgres://a:redacted@r1/db,postgres://b:redacted@r2/db"
        );
    }
}
