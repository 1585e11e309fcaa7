//! Bearer-key authentication. Keys are configured as `SCOPE:SHA256HEX`; the
//! server keeps only the hashes and compares the hash of the presented key
//! with every one of them in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::UserId;

/// What a key may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every user.
    Admin,
    /// One user's contexts only.
    User(UserId),
}

impl Scope {
    /// Whether this caller may see or change `user`'s contexts.
    pub fn allows(&self, user: UserId) -> bool {
        match self {
            Scope::Admin => true,
            Scope::User(own) => *own == user,
        }
    }

    /// The user a list or search is confined to, given the one asked for.
    /// `Err` when a user key asks for somebody else.
    pub fn confine(&self, requested: Option<UserId>) -> Result<Option<UserId>, OutOfScope> {
        match (self, requested) {
            (Scope::Admin, r) => Ok(r),
            (Scope::User(own), None) => Ok(Some(*own)),
            (Scope::User(own), Some(r)) if *own == r => Ok(Some(r)),
            (Scope::User(_), Some(_)) => Err(OutOfScope),
        }
    }
}

/// A user key asked for another user's contexts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfScope;

#[derive(Clone, Default)]
pub struct ApiKeys {
    /// Hash and scope of each key; a hash given twice keeps its last scope.
    keys: Vec<([u8; 32], Scope)>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyParseError {
    #[error("entry {0} is not SCOPE:SHA256HEX (SCOPE is admin or a user UUID)")]
    Shape(usize),
    #[error("entry {0}: scope must be admin or a user UUID")]
    Scope(usize),
    #[error("entry {0}: hash must be 64 hex characters (sha256 of the key)")]
    Hash(usize),
}

impl ApiKeys {
    /// Entries separated by commas, whitespace or newlines (so a secrets file
    /// may hold one per line). Lines starting with `#` are comments.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        let mut keys: Vec<([u8; 32], Scope)> = Vec::new();
        let entries = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|e| !e.is_empty());
        for (i, entry) in entries.enumerate() {
            let n = i + 1;
            let (scope, hash) = entry.rsplit_once(':').ok_or(KeyParseError::Shape(n))?;
            let scope = if scope.eq_ignore_ascii_case("admin") {
                Scope::Admin
            } else {
                Scope::User(UserId(
                    Uuid::parse_str(scope).map_err(|_| KeyParseError::Scope(n))?,
                ))
            };
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes).map_err(|_| KeyParseError::Hash(n))?;
            keys.retain(|(h, _)| *h != bytes);
            keys.push((bytes, scope));
        }
        Ok(Self { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The scope of a presented key, if it is one of ours. Every stored hash
    /// is compared, each in constant time, whether or not one matched: the
    /// time taken says nothing about which key, or how much of one, matched.
    pub fn lookup(&self, presented: &str) -> Option<Scope> {
        self.identify(presented).map(|(scope, _)| scope)
    }

    /// [`Self::lookup`], and a name for the key that is safe to log or use
    /// as a Redis key: the first 8 bytes of its SHA-256, in hex (the config
    /// holds the whole hash already).
    pub fn identify(&self, presented: &str) -> Option<(Scope, String)> {
        let presented = hash_key(presented);
        let mut found = None;
        for (hash, scope) in &self.keys {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(*scope);
            }
        }
        found.map(|scope| (scope, hex::encode(&presented[..8])))
    }
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The config entry for a key: what an operator puts in API_KEYS.
pub fn key_entry(scope: &str, key: &str) -> String {
    format!("{scope}:{}", hex::encode(hash_key(key)))
}

/// A new key for `scope` (`admin` or a user UUID): 32 random bytes as hex,
/// and its API_KEYS entry.
pub fn new_key(scope: &str) -> Result<(String, String), KeyParseError> {
    let scope = if scope.eq_ignore_ascii_case("admin") {
        "admin".to_string()
    } else {
        Uuid::parse_str(scope)
            .map_err(|_| KeyParseError::Scope(1))?
            .to_string()
    };
    let key = hex::encode(rand::random::<[u8; 32]>());
    let entry = key_entry(&scope, &key);
    Ok((key, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_user_keys_resolve_to_their_scopes() {
        let user = Uuid::now_v7();
        let text = format!(
            "{}\n# a comment\n{}",
            key_entry("admin", "root-key"),
            key_entry(&user.to_string(), "u-key")
        );
        let keys = ApiKeys::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.lookup("root-key"), Some(Scope::Admin));
        assert_eq!(keys.lookup("u-key"), Some(Scope::User(UserId(user))));
        assert_eq!(keys.lookup("other"), None);
    }

    #[test]
    fn a_new_key_is_random_and_its_entry_resolves_to_its_scope() {
        let user = Uuid::now_v7();
        let (key, entry) = new_key(&user.to_string()).unwrap();
        assert_eq!(key.len(), 64);
        let keys = ApiKeys::parse(&entry).unwrap();
        assert_eq!(keys.lookup(&key), Some(Scope::User(UserId(user))));
        let (other, admin) = new_key("ADMIN").unwrap();
        assert_ne!(key, other);
        assert!(admin.starts_with("admin:"), "{admin}");
        assert!(new_key("bob").is_err());
    }

    #[test]
    fn malformed_entries_are_rejected_with_their_position() {
        assert_eq!(
            ApiKeys::parse("admin").unwrap_err(),
            KeyParseError::Shape(1)
        );
        assert_eq!(
            ApiKeys::parse(&format!(
                "{},bob:{}",
                key_entry("admin", "k"),
                "ab".repeat(32)
            ))
            .unwrap_err(),
            KeyParseError::Scope(2)
        );
        assert_eq!(
            ApiKeys::parse("admin:xyz").unwrap_err(),
            KeyParseError::Hash(1)
        );
    }

    #[test]
    fn a_user_scope_confines_lists_to_itself() {
        let me = UserId(Uuid::now_v7());
        let other = UserId(Uuid::now_v7());
        let s = Scope::User(me);
        assert_eq!(s.confine(None), Ok(Some(me)));
        assert_eq!(s.confine(Some(me)), Ok(Some(me)));
        assert!(s.confine(Some(other)).is_err());
        assert_eq!(Scope::Admin.confine(None), Ok(None));
        assert!(Scope::Admin.allows(other) && !s.allows(other));
    }
}
