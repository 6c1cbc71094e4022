-- imgate message store on MariaDB/MySQL, version 1: the tables of ../0001_init.sql (docs/im.md
-- "Store schema") in InnoDB. Applied by imgate.im.mysql; the schema_version table records the version.
-- Galera replicates only InnoDB tables with a primary key: every table has one.

CREATE TABLE IF NOT EXISTS users (
    uid      BIGINT  NOT NULL PRIMARY KEY,
    max_seq  BIGINT  NOT NULL DEFAULT 0,
    min_seq  BIGINT  NOT NULL DEFAULT 1,   -- entries below it were removed by retention
    created  BIGINT  NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS messages (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,   -- msg_id (Galera spaces ids per node)
    sender      BIGINT       NOT NULL,
    cmid        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    conv        VARCHAR(64)  CHARACTER SET ascii NOT NULL,
    receiver    BIGINT,
    grp         BIGINT,
    type        VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    content     MEDIUMTEXT   CHARACTER SET utf8mb4,    -- JSON text; NULL once retention dropped it
    digest      VARBINARY(32) NOT NULL,                -- identifies the request body: a resend must match
    sender_seq  BIGINT       NOT NULL,
    ts          BIGINT       NOT NULL,
    UNIQUE KEY sender_cmid (sender, cmid)             -- a resend finds its original here, forever
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS inbox (
    owner   BIGINT      NOT NULL,
    seq     BIGINT      NOT NULL,
    msg_id  BIGINT      NOT NULL,
    conv    VARCHAR(64) CHARACTER SET ascii NOT NULL,
    unread  TINYINT     NOT NULL,
    ts      BIGINT      NOT NULL,
    PRIMARY KEY (owner, seq),                         -- the last guard: a seq is never given twice
    KEY inbox_conv (owner, conv, seq),
    KEY inbox_msg (msg_id),
    KEY inbox_ts (ts)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS conversations (
    owner        BIGINT      NOT NULL,
    conv         VARCHAR(64) CHARACTER SET ascii NOT NULL,
    peer         BIGINT      NOT NULL,
    last_seq     BIGINT      NOT NULL,
    last_msg_id  BIGINT      NOT NULL,
    read_seq     BIGINT      NOT NULL DEFAULT 0,
    unread       BIGINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, conv)
) ENGINE=InnoDB;
