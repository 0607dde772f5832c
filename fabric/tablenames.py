"""Table names as they travel between wrapper and driver: schema-qualified.

Frames, Hello's schemas and write operations name a table "schema.table".
Config entries and callers may give a bare name; both nodes qualify it the
same way, here, before comparing or sending it.
"""

from __future__ import annotations


def qualify(table: str) -> str:
    """A table's name as rows travel under it: schema-qualified, with an
    unqualified name taken to be in schema public (as PostgreSQL's default
    search_path has it)."""
    return table if "." in table else f"public.{table}"
