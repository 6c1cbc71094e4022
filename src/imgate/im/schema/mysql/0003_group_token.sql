-- imgate message store on MariaDB/MySQL, version 3: a group remembers the request that created it, so a
-- create_group re-run after a connection lost during its COMMIT finds the group instead of making a second.
-- Each statement may run again after a crash between it and the version update: all are idempotent.

ALTER TABLE `groups` ADD COLUMN IF NOT EXISTS create_token BINARY(16);
CREATE UNIQUE INDEX IF NOT EXISTS groups_create_token ON `groups` (create_token);   -- NULLs repeat freely
