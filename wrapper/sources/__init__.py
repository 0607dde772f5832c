"""Change sources: where row changes come from (PostgreSQL, replay)."""
