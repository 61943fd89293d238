-- Idempotent answers are kept 24 hours; the sweeper deletes older ones by age.
CREATE INDEX idempotency_created ON idempotency (created_at);
