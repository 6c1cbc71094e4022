-- imgate message store on MariaDB/MySQL, version 4: the groups' mode indexed. A store shared by several
-- processes asks at each login whether any read-mode group exists (im.groups); without the index that
-- question reads every group's row while none does.
-- Each statement may run again after a crash between it and the version update: all are idempotent.

CREATE INDEX IF NOT EXISTS groups_mode ON `groups` (mode);
