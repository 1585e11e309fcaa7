-- The form of the HNSW index on contexts.embedding (VECTOR_INDEX): `vector`
-- (the index of migration 1), `halfvec` or `bit` (expression indexes). The
-- table keeps the full vectors whatever the index. `context-api migrate`
-- switches it, building the new index beside the old one
-- (src/store/vector_index.rs); a database made before this migration keeps
-- its `vector` index until asked.
ALTER TABLE embedding_state
    ADD COLUMN vector_index text NOT NULL DEFAULT 'vector'
        CHECK (vector_index IN ('vector', 'halfvec', 'bit'));
