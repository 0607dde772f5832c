"""PostgreSQL as a change source: the walsender connection (conn), the
CopyBoth framing (walstream), the pgoutput decoder, the live source and the
replay of recorded pgoutput bytes. Nothing is imported here, so a MySQL
wrapper never loads psycopg's replication pieces."""
