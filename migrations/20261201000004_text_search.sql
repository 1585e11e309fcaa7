-- Full-text search over the embedded text, for search modes `text` and
-- `hybrid`. {{TEXT_SEARCH_CONFIG}} is filled in by `context-api migrate` from
-- TEXT_SEARCH_CONFIG (a Postgres text-search configuration, `english` by
-- default); like the dimension, it is fixed once this has run. The column is
-- generated, so every write path keeps it current without code. Only the
-- first 250,000 characters are indexed: at most 1,000,000 bytes of lexemes,
-- under a tsvector's limit of 1 MiB, so no text is too long to store.
ALTER TABLE contexts
    ADD COLUMN embedding_tsv tsvector
    GENERATED ALWAYS AS (
        to_tsvector('{{TEXT_SEARCH_CONFIG}}'::regconfig, left(embedding_text, 250000))
    ) STORED;

CREATE INDEX contexts_embedding_tsv_idx ON contexts USING gin (embedding_tsv);
