-- Many tenants in one file, a token that survives restarts, dead letters set aside once, imports that resume.

-- Entries put into the outbox by fetching, all time (metrics: fetched_entries_total).
ALTER TABLE tenant ADD COLUMN fetched_total INTEGER NOT NULL DEFAULT 0 CHECK (fetched_total >= 0);
-- Entries Auth0 served again (equal to the cursor, or twice in one page), skipped and counted.
ALTER TABLE tenant ADD COLUMN repeated_total INTEGER NOT NULL DEFAULT 0 CHECK (repeated_total >= 0);
-- Why fetching cannot advance right now (a page without any valid log_id); NULL while it can.
ALTER TABLE tenant ADD COLUMN stall TEXT;
-- The last error of this tenant's loops and when it happened; cleared by the next success.
ALTER TABLE tenant ADD COLUMN last_error TEXT;
ALTER TABLE tenant ADD COLUMN last_error_at TEXT;
-- The access token, encrypted with a key derived from the client secret (so the file alone does not give
-- it away, and a rotated secret simply makes it unreadable), and when it must be replaced (Unix seconds).
-- `token_for` identifies the client and audience it was minted for.
ALTER TABLE tenant ADD COLUMN token_sealed BLOB;
ALTER TABLE tenant ADD COLUMN token_refresh_at INTEGER;
ALTER TABLE tenant ADD COLUMN token_for TEXT;

-- A raw entry is set aside at most once: its SHA-256 is unique per tenant.
ALTER TABLE dead_letter ADD COLUMN raw_sha256 BLOB;
CREATE UNIQUE INDEX dead_letter_once ON dead_letter (tenant, raw_sha256) WHERE raw_sha256 IS NOT NULL;

-- `import` never enqueues an entry twice while it waits in the outbox.
CREATE INDEX outbox_by_log_id ON outbox (tenant, log_id);

-- Archive files being imported, identified by content (a hash of the first MiB and the size). `entries`
-- counts the entries read and settled so far, committed with the rows they produced, so an interrupted
-- import resumes after them.
CREATE TABLE import_file (
    tenant      TEXT NOT NULL REFERENCES tenant (domain),
    file_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    entries     INTEGER NOT NULL DEFAULT 0 CHECK (entries >= 0),
    enqueued    INTEGER NOT NULL DEFAULT 0 CHECK (enqueued >= 0),
    complete    INTEGER NOT NULL DEFAULT 0 CHECK (complete IN (0, 1)),
    started_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant, file_id)
) STRICT;
