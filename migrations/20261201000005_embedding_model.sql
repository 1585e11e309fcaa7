-- The model that made each row's vector (the embedding service's model id),
-- so that a change of model can find the rows to embed again, and an export
-- says what its vectors are. NULL: a vector the client gave, or one stored
-- before this column existed.
ALTER TABLE contexts ADD COLUMN embedding_model text;
