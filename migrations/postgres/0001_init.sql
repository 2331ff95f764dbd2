-- The PostgreSQL schema, table for table the same as the SQLite one. Tenantless users have
-- tenant ''. Times are milliseconds since the Unix epoch, set by the server's clock.

-- Notifications, listed newest first per user. `id` sorts bytewise (COLLATE "C"), as SQLite
-- compares text, so the list cursor `(created_at, id)` pages the same on every database
-- whatever its default collation. `data` is the publisher's JSON object as text, kept as given.
CREATE TABLE notifications (
    id          TEXT COLLATE "C" PRIMARY KEY,
    tenant      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    title       TEXT NOT NULL,
    message     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT,
    status      TEXT NOT NULL CHECK (status IN ('unread', 'read')),
    created_at  BIGINT NOT NULL,
    read_at     BIGINT
);
CREATE INDEX notifications_by_user ON notifications (tenant, user_id, created_at DESC, id DESC);
CREATE INDEX notifications_unread ON notifications (tenant, user_id, status);

-- The last event position handed out per room. The store bumps it in the transaction that
-- writes the event, and the row lock it takes there lasts until commit, so positions of a
-- room become visible in order. Pruning never deletes these rows, so positions never repeat.
CREATE TABLE room_heads (
    room  TEXT PRIMARY KEY,
    seq   BIGINT NOT NULL
);

-- Every event sent to a room, kept for resume until the pruner deletes it.
CREATE TABLE events (
    room        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    name        TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
);
-- Lets the pruner find events older than the retention age without a full scan.
CREATE INDEX events_by_time ON events (created_at);
