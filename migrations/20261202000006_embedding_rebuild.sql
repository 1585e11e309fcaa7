-- Re-embedding after a change of model (`context-api reembed`). One row:
--
-- - origin_dim, origin_text_search_config: the values the migrations were
--   first applied with. Every later `migrate` fills the templates with these,
--   whatever EMBEDDING_DIM says now, so that a database whose vectors were
--   rebuilt for another dimension still matches its migrations' checksums.
-- - active_model: the model of contexts.embedding since the last rebuild
--   (NULL before the first one: whatever the service was configured with).
-- - target_model, target_dim: the rebuild under way, if any: its vectors go
--   to contexts.embedding_next (a column that exists only meanwhile), and
--   switch places with contexts.embedding, in one transaction, when done.
-- - rows_done, rows_total: its progress, written after every batch.
CREATE TABLE embedding_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    origin_dim integer NOT NULL,
    origin_text_search_config text NOT NULL,
    active_model text,
    target_model text,
    target_dim integer,
    rows_done bigint NOT NULL DEFAULT 0,
    rows_total bigint NOT NULL DEFAULT 0,
    started_at timestamptz,
    switched_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((target_model IS NULL) = (target_dim IS NULL))
);

INSERT INTO embedding_state (origin_dim, origin_text_search_config)
VALUES ({{EMBEDDING_DIM}}, '{{TEXT_SEARCH_CONFIG}}');
