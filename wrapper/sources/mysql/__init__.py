"""MySQL and MariaDB as a change source: the DSN (dsn), the server checks
(check, preflight), GTID state (gtid), binlog positions (positions), column
kinds and values (columns), the catalog (catalog), the binlog decoder
(binlog) and reader thread (binlogreader), the live source (source) and the
replay of recorded binlog events (replay). Nothing is imported here, so a
PostgreSQL wrapper never needs the MySQL libraries."""
