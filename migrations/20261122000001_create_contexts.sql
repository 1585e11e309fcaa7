-- The contexts table of the deployment docs, plus what the service needs:
-- the text that was embedded and whether its embedding is ready.
-- {{EMBEDDING_DIM}} is filled in by `context-api migrate` from EMBEDDING_DIM;
-- the dimension is fixed once this has run (the checksum includes it).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE contexts (
    id               UUID PRIMARY KEY,
    user_id          UUID NOT NULL,
    context_type     VARCHAR(50) NOT NULL,
    content          JSONB NOT NULL,
    embedding        vector({{EMBEDDING_DIM}}),
    embedding_text   TEXT NOT NULL,
    embedding_status VARCHAR(16) NOT NULL DEFAULT 'pending'
                     CHECK (embedding_status IN ('pending', 'ready')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at       TIMESTAMPTZ,
    metadata         JSONB NOT NULL DEFAULT '{}'::jsonb,
    is_active        BOOLEAN NOT NULL DEFAULT true,
    version          INTEGER NOT NULL DEFAULT 1,
    CHECK ((embedding_status = 'ready') = (embedding IS NOT NULL))
);

CREATE INDEX contexts_user_id_context_type_idx ON contexts (user_id, context_type);
-- Keyset pagination: newest first.
CREATE INDEX contexts_user_created_idx ON contexts (user_id, created_at DESC, id DESC) WHERE is_active;
CREATE INDEX contexts_created_idx ON contexts (created_at DESC, id DESC) WHERE is_active;
CREATE INDEX contexts_embedding_hnsw_idx ON contexts USING hnsw (embedding vector_cosine_ops);
CREATE INDEX contexts_metadata_idx ON contexts USING gin (metadata jsonb_path_ops);
CREATE INDEX contexts_pending_idx ON contexts (updated_at) WHERE embedding_status = 'pending' AND is_active;
CREATE INDEX contexts_expires_at_idx ON contexts (expires_at) WHERE expires_at IS NOT NULL;
