-- Run once by the postgres image on a fresh data directory, as the superuser:
-- the migrations then find the extension already installed.
CREATE EXTENSION IF NOT EXISTS vector;
