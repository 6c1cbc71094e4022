-- imgate message store, version 2: groups (docs/im.md "Groups").

-- Every group message is in the group's timeline (gseq, gapless per group) whatever the mode; in
-- write mode it is also copied into each member's inbox by the fan-out consumer.
ALTER TABLE messages ADD COLUMN gseq INTEGER;
CREATE UNIQUE INDEX messages_gseq ON messages (grp, gseq) WHERE grp IS NOT NULL;

CREATE TABLE groups (
    id        INTEGER PRIMARY KEY,
    name      TEXT    NOT NULL,
    owner     INTEGER NOT NULL,
    members   INTEGER NOT NULL,              -- the member count
    mode      TEXT    NOT NULL,              -- 'write' (fan-out to inboxes) or 'read' (one timeline)
    max_gseq  INTEGER NOT NULL DEFAULT 0,    -- the newest gseq handed out
    read_from INTEGER NOT NULL DEFAULT 0,    -- the gseq of the last switch to read mode: up to it, in inboxes
    read_until INTEGER NOT NULL DEFAULT 0,   -- back in write mode: the last gseq that is in the timeline only
    created   INTEGER NOT NULL
);

-- role: 'owner', 'admin' or 'member'. joined_gseq: the member sees group messages after it.
CREATE TABLE group_members (
    grp          INTEGER NOT NULL,
    uid          INTEGER NOT NULL,
    role         TEXT    NOT NULL,
    joined_gseq  INTEGER NOT NULL,
    read_gseq    INTEGER NOT NULL DEFAULT 0, -- read position in a read-mode group (op 30)
    PRIMARY KEY (grp, uid)
) WITHOUT ROWID;
CREATE INDEX group_members_uid ON group_members (uid, grp);

-- The write fan-out jobs (the outbox): written in the transaction that stores the group message,
-- deleted in the transaction that writes every member's inbox entry, so a job is done once.
-- owners: the members at send time (JSON array), so a later join or removal does not change them.
CREATE TABLE group_outbox (
    id      INTEGER PRIMARY KEY,
    msg_id  INTEGER NOT NULL,
    owners  TEXT    NOT NULL
);
