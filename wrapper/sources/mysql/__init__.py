"""MySQL and MariaDB as a change source: the DSN, the server checks, GTID
state, the binlog decoder and reader thread, the live source and the replay
of recorded binlog events. Nothing is imported here, so a PostgreSQL wrapper
never needs the MySQL libraries."""
