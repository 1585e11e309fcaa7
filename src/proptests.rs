//! Property tests of every parser at the edge: whatever a client or an
//! operator sends, each parser answers with a value or its own error, never
//! a panic, and what the service itself writes parses back to the same thing.

use proptest::prelude::*;

use crate::auth::{key_entry, ApiKeys, Scope};
use crate::domain::{ContextId, Cursor, UserId};
use crate::error::ApiError;
use crate::routes::extract::{check_json, if_match, MAX_JSON_DEPTH};

/// JSON values of bounded size, strings drawn from all of Unicode but NUL.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(serde_json::Value::from),
        "[^\u{0}]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[^\u{0}]{0,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Bodies: any bytes get an answer; JSON without NUL within the depth
    /// limit always passes; anything after a value makes it not JSON (400).
    #[test]
    fn bodies(bytes in prop::collection::vec(any::<u8>(), 0..256), v in json_value(), tail in "[a-z\\]}{,]{1,4}") {
        let _ = check_json(&bytes);
        let text = v.to_string();
        prop_assert_eq!(depth(&v) <= MAX_JSON_DEPTH, check_json(text.as_bytes()).is_ok());
        let spoiled = format!("{text} {tail}");
        prop_assert!(matches!(check_json(spoiled.as_bytes()), Err(ApiError::BadRequest(_))));
    }

    /// A NUL anywhere in a string or key is refused as input (422), not as syntax.
    #[test]
    fn nul_in_any_string_is_refused(v in json_value(), key in "[a-z]{0,4}") {
        let with_nul = serde_json::json!({ format!("{key}\u{0}"): v.clone() });
        prop_assert!(matches!(check_json(with_nul.to_string().as_bytes()), Err(ApiError::Validation(_))));
        let in_value = serde_json::json!([v, "a\u{0}b"]);
        prop_assert!(matches!(check_json(in_value.to_string().as_bytes()), Err(ApiError::Validation(_))));
    }

    /// Cursors: the service's own round-trip for every instant the grammar
    /// covers; any other text parses exactly when it matches the pattern the
    /// OpenAPI document states, and then to an instant Postgres can hold.
    #[test]
    fn cursors(
        micros in -9_999_999_999_999_999i64..=99_999_999_999_999_999i64,
        s in ".{0,60}",
        n in any::<i64>(),
        shaped in "-?[0-9]{1,19}_[0-9a-fA-F-]{30,36}",
    ) {
        use chrono::Datelike;
        let at = chrono::DateTime::from_timestamp_micros(micros).unwrap();
        let c = Cursor { created_at: at, id: ContextId::new() };
        prop_assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        let pattern = regex::Regex::new(Cursor::PATTERN).unwrap();
        for text in [s, shaped, format!("{n}_0193b3c400007000800000000000000a")] {
            let parsed = Cursor::parse(&text);
            prop_assert_eq!(parsed.is_ok(), pattern.is_match(&text), "{}", text);
            if let Ok(c) = parsed {
                prop_assert!((1..=9999).contains(&c.created_at.year()), "{}", text);
            }
        }
    }

    /// If-Match: any header value is a list of versions, "none" or a 400, never a panic;
    /// every version written as an ETag reads back.
    #[test]
    fn if_match_values(version in any::<i32>(), weak in any::<bool>(), s in "[ -~]{0,40}") {
        use axum::http::{header, HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        let tag = format!("{}\"{version}\"", if weak { "W/" } else { "" });
        h.insert(header::IF_MATCH, HeaderValue::from_str(&tag).unwrap());
        prop_assert_eq!(if_match(&h).unwrap().map(|m| m.0), Some(vec![version]));
        if let Ok(v) = HeaderValue::from_str(&s) {
            h.insert(header::IF_MATCH, v);
            let _ = if_match(&h);
        }
    }

    /// Key lines: any text parses or names the bad entry; entries written by
    /// key_entry admit exactly their key, with its scope.
    #[test]
    fn key_lines(text in ".{0,200}", key in "[ -~]{1,40}", other in "[ -~]{1,40}", admin in any::<bool>()) {
        let _ = ApiKeys::parse(&text);
        let user = uuid::Uuid::now_v7();
        let scope = if admin { "admin".to_string() } else { user.to_string() };
        let keys = ApiKeys::parse(&format!("# comment\n{}\n", key_entry(&scope, &key))).unwrap();
        let want = if admin { Scope::Admin } else { Scope::User(UserId(user)) };
        prop_assert_eq!(keys.lookup(&key), Some(want));
        if other != key {
            prop_assert_eq!(keys.lookup(&other), None);
        }
    }

    /// Configuration values: any text for a numeric or boolean setting is
    /// accepted or refused with one line that names the variable.
    #[test]
    fn config_values(value in ".{0,24}", which in 0usize..6) {
        let key = ["db_pool_max", "embedding_dim", "max_body_bytes", "redis_optional", "request_timeout_ms", "log_format"][which];
        let fig = figment::Figment::new()
            .merge(figment::providers::Serialized::default("database_url", "postgres://db/app"))
            .merge(figment::providers::Serialized::default("embedding_service_url", "http://e"))
            .merge(figment::providers::Serialized::default("auth_disabled", true))
            .merge(figment::providers::Serialized::default(key, value.as_str()));
        if let Err(e) = crate::config::Settings::from_figment(fig) {
            let e = e.to_string();
            prop_assert!(e.contains(&key.to_ascii_uppercase()), "{e}");
            prop_assert!(!e.contains('\n'), "{e}");
        }
    }
}
