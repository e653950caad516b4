"""What differs between two nested settings documents (a campaign's config, a training job), key by key."""

from __future__ import annotations


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every dotted key whose value differs."""
    differences = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences
