"""PostgreSQL as a change source: the walsender connection (conn), the
CopyBoth framing (walstream), the pgoutput decoder (pgoutput) and its column
loaders (values), the live source (source), when it logs a restart point for
its slot (restartpoint), and the replay of recorded pgoutput bytes (replay).
Nothing is imported here, so a MySQL wrapper never loads psycopg's
replication pieces."""
