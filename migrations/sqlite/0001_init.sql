-- Notifications, newest first per user. Tenantless users have tenant ''.
CREATE TABLE notifications (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant      TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    title       TEXT NOT NULL,
    message     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT,
    status      TEXT NOT NULL CHECK (status IN ('unread', 'read')),
    created_at  INTEGER NOT NULL, -- milliseconds since the Unix epoch
    read_at     INTEGER
);
CREATE INDEX notifications_by_user ON notifications (tenant, user_id, created_at DESC, id DESC);
CREATE INDEX notifications_unread ON notifications (tenant, user_id, status);

-- The last event position handed out per room. It is bumped inside the transaction that
-- writes the event, so positions become visible in commit order.
CREATE TABLE room_heads (
    room  TEXT PRIMARY KEY NOT NULL,
    seq   INTEGER NOT NULL
) WITHOUT ROWID;

-- Every event sent to a room, kept for resume.
CREATE TABLE events (
    room        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  INTEGER NOT NULL, -- milliseconds since the Unix epoch
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
