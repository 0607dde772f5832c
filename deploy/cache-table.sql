-- PrismCache's shared tier: one table per tenant, replicated by prism-wrapper
-- to that tenant's app nodes only (README, "The shared tier").
--
-- Run as a superuser (or the table's owner) in the replicated database, once per
-- tenant, with the tenant's name in the table's: here tenant "shop" and the
-- wrapper's role "prism". The same statements for any tenant:
--   python -c "from prism.cache.shared import TableSpec; print(TableSpec('shop', role='prism').ddl())"
--
-- Columns: key is a digest of the tenant, the scope and the normalized question
-- (every node derives the same key, so concurrent misses write one row); scope is
-- the digest of model, system prompt and generation parameters; query is the
-- (PII-scrubbed) question; response the answer as JSON text; embedding the
-- question's MiniLM vector (384-d), the column the wrapper replicates as the
-- table's vector so every node's index answers paraphrases; tags for
-- invalidate(tag=...); created_at / expires_at in unix seconds (NULL: no expiry);
-- token counts for metrics; node_id the writing node; version tells a node's own
-- copy from a newer answer.
--
-- pgvector ships with pgserver; elsewhere install it (Debian:
-- postgresql-16-pgvector). The wrapper's role writes the rows (drivers never
-- reach the database) and reads them for the initial copy.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS public.prism_cache_shop (
    key text PRIMARY KEY,
    scope text NOT NULL,
    query text NOT NULL,
    response text NOT NULL,
    embedding vector(384) NOT NULL,
    tags text[] NOT NULL DEFAULT '{}',
    created_at double precision NOT NULL,
    expires_at double precision,
    prompt_tokens integer NOT NULL,
    completion_tokens integer NOT NULL,
    tokens_estimated boolean NOT NULL,
    node_id text NOT NULL,
    version text NOT NULL
);
CREATE INDEX IF NOT EXISTS prism_cache_shop_expires ON public.prism_cache_shop (expires_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.prism_cache_shop TO prism;

-- And in the wrapper's config (deploy/config.example.toml):
--
-- [[tables]]
-- name = "public.prism_cache_shop"
-- tenant = "shop"
-- vector_column = "embedding"
-- vector_dim = 384
-- vector_in_rows = false      # the index holds the vector; rows need not
-- writable = true
-- writable_columns = ["scope", "query", "response", "embedding", "tags", "created_at",
--                     "expires_at", "prompt_tokens", "completion_tokens",
--                     "tokens_estimated", "node_id", "version"]
