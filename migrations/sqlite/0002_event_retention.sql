-- Lets the pruner find events older than the retention age without a full scan.
CREATE INDEX events_by_time ON events (created_at);
