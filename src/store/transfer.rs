//! Export and import: every visible context as it is stored, and rows put
//! back with their ids, times and versions.

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use pgvector::Vector;
use sqlx::types::Json;
use uuid::Uuid;

use super::contexts::{Columns, Row};
use super::{Store, StoreError};
use crate::domain::{Context, ContextType, JsonObject, NewContext, UserId};

/// A stored context with the text its embedding comes from.
pub struct Stored {
    pub context: Context,
    pub text: String,
}

/// A context to put back as it was exported.
pub struct Restored {
    pub new: NewContext,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i32,
}

impl Store {
    /// How many contexts [`Store::export`] will give.
    pub async fn count_visible(
        &self,
        user: Option<UserId>,
        context_type: Option<&ContextType>,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM contexts
               WHERE is_active AND (expires_at IS NULL OR expires_at > now())
                 AND ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR context_type = $2)"#,
            user.map(|u| u.0),
            context_type.map(|t| t.as_str()),
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Every visible context (of `user`, of `context_type`), oldest first,
    /// with its vector and text, streamed from one statement.
    pub fn export(
        &self,
        user: Option<UserId>,
        context_type: Option<&ContextType>,
    ) -> BoxStream<'_, Result<Stored, StoreError>> {
        row_query!(
            "SELECT",
            r#"embedding AS "embedding?: Vector", embedding_text AS "embedding_text?"
               FROM contexts
               WHERE is_active AND (expires_at IS NULL OR expires_at > now())
                 AND ($1::uuid IS NULL OR user_id = $1) AND ($2::text IS NULL OR context_type = $2)
               ORDER BY created_at, id"#,
            user.map(|u| u.0),
            context_type.map(|t| t.as_str().to_owned()),
        )
        .fetch(&self.pool)
        .map(|r| {
            let (context, text) = r?.with_text();
            Ok(Stored { context, text })
        })
        .boxed()
    }

    /// Of `ids`, those already stored (active or not).
    pub async fn existing_ids(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar!("SELECT id FROM contexts WHERE id = ANY($1)", ids)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Inserts every item in one statement (all or none); an id already
    /// stored is skipped, so a repeated import writes nothing twice, and so
    /// is a key that a live context of the user already holds. Returns
    /// how many rows were written.
    pub async fn restore_many(&self, items: &[Restored]) -> Result<u64, StoreError> {
        let Columns {
            ids,
            users,
            types,
            contents,
            metadata,
            expiries,
            texts,
            vectors,
            statuses,
            models,
            keys,
        } = Columns::of(items.iter().map(|r| &r.new));
        let created: Vec<DateTime<Utc>> = items.iter().map(|r| r.created_at).collect();
        let updated: Vec<DateTime<Utc>> = items.iter().map(|r| r.updated_at).collect();
        let versions: Vec<i32> = items.iter().map(|r| r.version).collect();
        let done = sqlx::query!(
            "INSERT INTO contexts (id, user_id, context_type, content, metadata, expires_at,
                                   embedding_text, embedding, embedding_status,
                                   created_at, updated_at, version, embedding_model, client_key)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[],
                                  $6::timestamptz[], $7::text[], $8::vector[], $9::text[],
                                  $10::timestamptz[], $11::timestamptz[], $12::int4[], $13::text[],
                                  $14::text[])
             ON CONFLICT DO NOTHING",
            &ids,
            &users,
            &types as _,
            &contents as _,
            &metadata as _,
            &expiries as _,
            &texts as _,
            &vectors as _,
            &statuses as _,
            &created,
            &updated,
            &versions,
            &models as _,
            &keys as _,
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
