-- The state of one or more Auth0 tenants: checkpoint, outbox, dead letters and gaps.
-- Counters live on the tenant row and are updated in the same transaction as the rows they count, so
-- `status` and the fetcher's back-pressure check read them in O(1).

-- Marks the file as ours ("A0RS"), so a foreign SQLite database is never mistaken for one of our files.
PRAGMA application_id = 1093685843;

CREATE TABLE tenant (
    domain           TEXT PRIMARY KEY NOT NULL,
    cursor_log_id    TEXT,
    cursor_date      TEXT,
    last_fetch_at    TEXT,
    last_delivery_at TEXT,
    delivered_total  INTEGER NOT NULL DEFAULT 0 CHECK (delivered_total >= 0),
    filtered_total   INTEGER NOT NULL DEFAULT 0 CHECK (filtered_total >= 0),
    outbox_count     INTEGER NOT NULL DEFAULT 0 CHECK (outbox_count >= 0),
    stopped          INTEGER NOT NULL DEFAULT 0 CHECK (stopped IN (0, 1))
) STRICT;

-- AUTOINCREMENT: a seq is never reused, so a late completion for a deleted row can never hit a newer one.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL REFERENCES tenant (domain),
    log_id     TEXT NOT NULL,
    raw        TEXT NOT NULL,
    fetched_at TEXT NOT NULL
) STRICT;
CREATE INDEX outbox_by_tenant ON outbox (tenant, seq);

-- A dead letter always says why: an empty reason is a bug and must fail the whole transaction.
CREATE TABLE dead_letter (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL REFERENCES tenant (domain),
    log_id     TEXT,
    raw        TEXT NOT NULL,
    reason     TEXT NOT NULL CHECK (length(reason) > 0),
    created_at TEXT NOT NULL
) STRICT;
CREATE INDEX dead_letter_by_tenant ON dead_letter (tenant, id);

-- Every detected gap (expired checkpoint), kept for the record; `status` shows the latest and the count.
CREATE TABLE gap (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       TEXT NOT NULL REFERENCES tenant (domain),
    detected_at  TEXT NOT NULL,
    from_log_id  TEXT NOT NULL,
    from_date    TEXT,
    to_log_id    TEXT,
    to_date      TEXT,
    detail       TEXT NOT NULL,
    stopped      INTEGER NOT NULL CHECK (stopped IN (0, 1))
) STRICT;
CREATE INDEX gap_by_tenant ON gap (tenant, id);
