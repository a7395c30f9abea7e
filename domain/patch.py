"""JSON merge patch (RFC 7396), the meaning of every PATCH body: a member left out stays, a
member set to null is removed (the field falls back to its default), and an object is merged
into the object it replaces, member by member."""

from __future__ import annotations

from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """`target` with `patch` applied; null members of `patch` remove that member."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
