-- imgate message store, version 1 (docs/im.md "Store schema").
-- Applied in one transaction by imgate.im.sqlite; PRAGMA user_version records the version.

-- One row per user with an inbox: the newest seq handed out and the oldest one still kept.
CREATE TABLE users (
    uid      INTEGER PRIMARY KEY,
    max_seq  INTEGER NOT NULL DEFAULT 0,
    min_seq  INTEGER NOT NULL DEFAULT 1,   -- entries below it were removed by retention
    created  INTEGER NOT NULL
);

-- One row per message, whatever the number of inboxes it is in.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY,        -- msg_id
    sender      INTEGER NOT NULL,
    cmid        TEXT    NOT NULL,
    conv        TEXT    NOT NULL,
    receiver    INTEGER,                    -- single chat
    grp         INTEGER,                    -- group of a group message (none yet)
    type        TEXT    NOT NULL,
    content     TEXT,                       -- JSON text; NULL once retention dropped it
    digest      BLOB    NOT NULL,           -- identifies the request body: a resend must match
    sender_seq  INTEGER NOT NULL,           -- the sender's seq, answered again to a resend
    ts          INTEGER NOT NULL,           -- ms since the epoch
    UNIQUE (sender, cmid)                   -- a resend finds its original here, forever
);

-- One entry per inbox owner: the owner's gapless seq.
CREATE TABLE inbox (
    owner   INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    msg_id  INTEGER NOT NULL,
    conv    TEXT    NOT NULL,
    unread  INTEGER NOT NULL,               -- 1 if it counts as unread for its owner
    ts      INTEGER NOT NULL,
    PRIMARY KEY (owner, seq)
) WITHOUT ROWID;
CREATE INDEX inbox_conv ON inbox (owner, conv, seq);

-- The conversation list: one row per (owner, conversation).
CREATE TABLE conversations (
    owner        INTEGER NOT NULL,
    conv         TEXT    NOT NULL,
    peer         INTEGER NOT NULL,          -- the other user (single chat) or the group
    last_seq     INTEGER NOT NULL,          -- the owner's seq of the last message
    last_msg_id  INTEGER NOT NULL,
    read_seq     INTEGER NOT NULL DEFAULT 0,
    unread       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, conv)
) WITHOUT ROWID;
-- No index on last_seq: it changes with every message (two index writes each), while listing one
-- owner's conversations newest first sorts that owner's rows, found by the primary key.
