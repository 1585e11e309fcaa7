//! Idempotency keys: the first answer to a write, by (owner, key).

use std::time::Duration;

use sqlx::types::Json;

use super::{Store, StoreError};

/// A reserved or answered key.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub fingerprint: Vec<u8>,
    /// `None` while the first request still runs.
    pub answer: Option<Answer>,
}

/// A response as it was sent: status, the headers worth repeating, the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Store {
    /// Takes the key for a first request; `false` when it is already taken.
    /// An expired key, or one reserved longer than `abandoned` ago and never
    /// answered, is taken over in the same statement.
    pub async fn reserve_key(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &[u8],
        ttl: Duration,
        abandoned: Duration,
    ) -> Result<bool, StoreError> {
        let reserved = sqlx::query_scalar!(
            r#"INSERT INTO idempotency_keys (owner, key, fingerprint, expires_at)
               VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8))
               ON CONFLICT (owner, key) DO UPDATE
                  SET fingerprint = EXCLUDED.fingerprint, status = NULL, headers = NULL,
                      body = NULL, created_at = now(), expires_at = EXCLUDED.expires_at
                WHERE idempotency_keys.expires_at <= now()
                   OR (idempotency_keys.status IS NULL
                       AND idempotency_keys.created_at < now() - make_interval(secs => $5::float8))
               RETURNING true AS "reserved!""#,
            owner,
            key,
            fingerprint,
            ttl.as_secs_f64(),
            abandoned.as_secs_f64()
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(reserved.is_some())
    }

    /// The key's record, unless absent or expired.
    pub async fn recorded_key(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<Recorded>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT fingerprint, status, headers AS "headers: Json<Vec<(String, String)>>", body
               FROM idempotency_keys
               WHERE owner = $1 AND key = $2 AND expires_at > now()"#,
            owner,
            key
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Recorded {
            fingerprint: r.fingerprint,
            answer: r.status.map(|status| Answer {
                status: status as u16,
                headers: r.headers.map(|h| h.0).unwrap_or_default(),
                body: r.body.unwrap_or_default(),
            }),
        }))
    }

    /// Records the first answer.
    pub async fn answer_key(
        &self,
        owner: &str,
        key: &str,
        answer: &Answer,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5
             WHERE owner = $1 AND key = $2",
            owner,
            key,
            answer.status as i16,
            Json(&answer.headers) as _,
            &answer.body
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Frees a key whose first request wrote nothing (a retry may run it again).
    pub async fn release_key(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query!(
            "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND status IS NULL",
            owner,
            key
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
