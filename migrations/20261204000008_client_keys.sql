-- A client's own name for a context (`key`), unique among a user's live
-- contexts: `PUT /contexts` creates or replaces the context of a key, as a
-- memory store's put(namespace, key, value) does. The column is nullable
-- with no default, so adding it rewrites nothing; the partial unique index
-- holds only the rows that have a key (none, on an existing database), so
-- it builds at once whatever the table's size.
ALTER TABLE contexts ADD COLUMN client_key text;
CREATE UNIQUE INDEX contexts_user_key_idx ON contexts (user_id, client_key)
    WHERE client_key IS NOT NULL AND is_active;
