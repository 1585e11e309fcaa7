-- The embedding worker claims pending rows with a lease instead of holding a
-- transaction (and its row locks and pooled connection) open across the call
-- to the embedding service. A claim is a token and the time it lapses; the
-- vectors are stored only where the token still holds, and a write that
-- changes a row's text clears its claim.
ALTER TABLE contexts
    ADD COLUMN embedding_claim uuid,
    ADD COLUMN embedding_claimed_until timestamptz;
