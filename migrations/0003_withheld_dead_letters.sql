-- A dead letter may keep its entry without the entry's text: one the privacy rules could not read (its
-- clear values must never be stored), or one too large to hold. It then keeps the size and the SHA-256 of the
-- original text (in raw_sha256, so it is still set aside only once), and in `raw` at most an excerpt that
-- holds no clear value. `dead-letter retry` fetches such an entry again from Auth0 by its log_id.
ALTER TABLE dead_letter ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0 CHECK (withheld IN (0, 1));
-- Bytes of the original entry (NULL for letters written before this column existed: their raw is whole).
ALTER TABLE dead_letter ADD COLUMN size INTEGER CHECK (size >= 0);
