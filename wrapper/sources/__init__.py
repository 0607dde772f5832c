"""Change sources: where row changes come from.

base.py holds the change model and the ChangeSource interface every source
implements; postgres/ and mysql/ hold one database each (live source, pure
decoder, replay of recorded bytes); flavor.py picks one by database.flavor.
Nothing is imported here, so config code may use a source's pure helpers
(e.g. mysql.dsn) without loading any source.
"""
