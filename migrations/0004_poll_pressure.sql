-- Auth0 signalled pressure on the tenant's request budget (a 429, a nearly empty bucket, an api_limit or
-- api_limit_warning entry in its log): until when idle polling uses half its share, and why. Kept in the
-- state so that `status` and `metrics` can show it without the daemon, and a restart does not forget it.
ALTER TABLE tenant ADD COLUMN pressure_until TEXT;
ALTER TABLE tenant ADD COLUMN pressure_reason TEXT;
