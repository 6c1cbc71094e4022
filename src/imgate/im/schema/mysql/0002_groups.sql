-- imgate message store on MariaDB/MySQL, version 2: groups (../0002_groups.sql, docs/im.md "Groups").
-- Each statement may run again after a crash between it and the version update: all are idempotent.

ALTER TABLE messages ADD COLUMN IF NOT EXISTS gseq BIGINT;
CREATE UNIQUE INDEX IF NOT EXISTS messages_gseq ON messages (grp, gseq);   -- NULLs repeat freely

CREATE TABLE IF NOT EXISTS `groups` (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name       VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    owner      BIGINT       NOT NULL,
    members    BIGINT       NOT NULL,              -- the member count
    mode       VARCHAR(8)   CHARACTER SET ascii NOT NULL,   -- 'write' or 'read'
    max_gseq   BIGINT       NOT NULL DEFAULT 0,    -- the newest gseq handed out (the row lock orders senders)
    read_from  BIGINT       NOT NULL DEFAULT 0,    -- the gseq of the last switch to read mode
    read_until BIGINT       NOT NULL DEFAULT 0,    -- back in write mode: the last gseq in the timeline only
    created    BIGINT       NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS group_members (
    grp          BIGINT     NOT NULL,
    uid          BIGINT     NOT NULL,
    role         VARCHAR(8) CHARACTER SET ascii NOT NULL,   -- 'owner', 'admin' or 'member'
    joined_gseq  BIGINT     NOT NULL,              -- the member sees group messages after it
    read_gseq    BIGINT     NOT NULL DEFAULT 0,    -- read position in a read-mode group (op 30)
    PRIMARY KEY (grp, uid),
    KEY group_members_uid (uid, grp)
) ENGINE=InnoDB;

-- The write fan-out jobs (the outbox), written with the group message and deleted with the members'
-- entries. Galera hands out ids per node (interleaved), so one group's jobs are ordered by gseq.
CREATE TABLE IF NOT EXISTS group_outbox (
    id       BIGINT     NOT NULL AUTO_INCREMENT PRIMARY KEY,
    msg_id   BIGINT     NOT NULL,
    grp      BIGINT     NOT NULL,
    gseq     BIGINT     NOT NULL,
    owners   MEDIUMTEXT CHARACTER SET ascii NOT NULL,   -- JSON array: the members at send time
    created  BIGINT     NOT NULL,                       -- ms: the consumers' sweep takes old ones
    KEY outbox_grp (grp, gseq),
    KEY outbox_created (created)
) ENGINE=InnoDB;
