"""The words prism reads as on and off where a switch is given as text: a
wrapper config value from a TOML string or a PRISM_* variable
(prism.wrapper.config_keys, prism.wrapper.config) and the environment
switches read before anything else loads (prism.fabric.grpc_engine).

One list, so that a word one of them takes is taken by all. Pure
declarations, no imports: grpc_engine reads it before gRPC is imported.
"""

from __future__ import annotations

ON_WORDS = ("1", "true", "yes", "on")
OFF_WORDS = ("0", "false", "no", "off")


def is_on(text: str) -> bool:
    """Whether `text` is one of ON_WORDS, in any case, around blanks."""
    return text.strip().lower() in ON_WORDS
