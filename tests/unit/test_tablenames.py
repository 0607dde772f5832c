"""Table names qualify the same way on both nodes (prism.fabric.tablenames)."""

from __future__ import annotations

from prism.fabric.tablenames import qualify


def test_bare_names_are_in_public_and_qualified_ones_stay() -> None:
    assert qualify("items") == "public.items"
    assert qualify("shop.items") == "shop.items"
    assert qualify(qualify("items")) == "public.items"
