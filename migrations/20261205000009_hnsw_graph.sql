-- The density of the HNSW graph (HNSW_M, HNSW_EF_CONSTRUCTION): pgvector's
-- `m` and `ef_construction`, recorded beside the index's form so that an
-- index dropped by a bulk import is built again as it was. A database made
-- before this migration has pgvector's defaults (16, 64), which its index was
-- built with; `context-api migrate` rebuilds it beside the old one when asked
-- for another graph (src/store/vector_index.rs).
ALTER TABLE embedding_state
    ADD COLUMN hnsw_m integer NOT NULL DEFAULT 16 CHECK (hnsw_m BETWEEN 2 AND 100),
    ADD COLUMN hnsw_ef_construction integer NOT NULL DEFAULT 64
        CHECK (hnsw_ef_construction BETWEEN 4 AND 1000 AND hnsw_ef_construction >= 2 * hnsw_m);
