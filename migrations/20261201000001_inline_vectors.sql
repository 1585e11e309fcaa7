-- Store vectors inline in the heap instead of out of line (TOAST).
--
-- pgvector's type defaults to EXTERNAL storage, so every vector over about
-- 2 kB (512 dimensions and up) lives in the TOAST table. The planner costs a
-- sequential scan by the heap's pages only, which then look few and cheap,
-- and it chose exact scans over the HNSW index on small and medium tables,
-- though each scanned row costs a TOAST fetch. Inline, the heap holds the
-- vectors' real size and the planner's costs are true (pgvector's README
-- recommends the same). PLAIN keeps a row within one 8 kB page, which fits
-- any HNSW-indexable dimension up to about 1,900; above that, MAIN keeps
-- vectors inline when they fit and moves them out only as a last resort.
DO $$
BEGIN
    IF {{EMBEDDING_DIM}} <= 1900 THEN
        ALTER TABLE contexts ALTER COLUMN embedding SET STORAGE PLAIN;
    ELSE
        ALTER TABLE contexts ALTER COLUMN embedding SET STORAGE MAIN;
    END IF;
END
$$;

-- A storage change applies to new values only: rewrite the stored vectors
-- (a fresh value, not the old TOAST pointer) so existing rows move inline too.
UPDATE contexts SET embedding = embedding::real[]::vector WHERE embedding IS NOT NULL;
ANALYZE contexts;
