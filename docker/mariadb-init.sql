-- Run once by the MariaDB image on a fresh volume (mariadb1; mariadb2 gets it by state transfer):
-- the user the tests use (tests/services.py: user test, no password, may create databases).
CREATE USER IF NOT EXISTS 'test'@'%';
GRANT ALL ON *.* TO 'test'@'%';
