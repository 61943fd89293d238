-- The relay is no longer woken by NOTIFY: NOTIFY takes Postgres's cluster-wide notify-queue lock
-- at COMMIT and holds it through the WAL flush, so every transaction that added an outbox row, in
-- every schema of the cluster, committed one at a time. The process that commits events now wakes
-- its own relay (OutboxWake in libs/platform/src/events/outbox.rs); every relay still polls.
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
