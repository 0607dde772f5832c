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


def switch_value(text: str) -> bool | None:
    """True for one of ON_WORDS, False for one of OFF_WORDS, in any case and
    around blanks; None for any other text."""
    word = text.strip().lower()
    if word in ON_WORDS:
        return True
    if word in OFF_WORDS:
        return False
    return None


def is_on(text: str) -> bool:
    """Whether `text` is one of ON_WORDS (switch_value)."""
    return switch_value(text) is True
