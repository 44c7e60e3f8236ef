"""Deterministic train / validation / test splits from a hash of each row's stable id.

Every id maps to a number ``u`` in [0, 1). The test split takes the lowest ``u`` values, the
validation split the next ones, train the rest. A size below 1 is a fraction: a fixed interval of
``u``, so a row's split depends on its id alone and adding rows never moves an earlier row. A size
of 1 or more is a row count: the rows with the lowest ``u`` are taken. Adding rows can then only
move earlier rows *out* of validation/test into train (new rows may take their places), never a
trained-on row into an evaluation split.
"""

from __future__ import annotations

import hashlib

SPLIT_ORDER = ("test", "validation")  # carved from the low end of [0, 1); train is the rest


def unit_hash(row_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) from ``salt`` and ``row_id`` (SHA-256, stable across machines)."""
    digest = hashlib.sha256(f"{salt}\x00{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(ids: list[str], sizes: dict[str, float], salt: str = "") -> list[str]:
    """The split name of each id. ``sizes`` maps 'test' / 'validation' to a fraction or a count."""
    unknown = set(sizes) - set(SPLIT_ORDER)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; use {list(SPLIT_ORDER)}")
    u = [unit_hash(i, salt) for i in ids]
    order = sorted(range(len(ids)), key=u.__getitem__)
    out = ["train"] * len(ids)
    pos, start = 0, 0.0  # next row in hash order, and the hash value where the next split begins
    for name in SPLIT_ORDER:
        size = sizes.get(name, 0)
        if size <= 0:
            continue
        if size < 1:
            end = start + size
            while pos < len(order) and u[order[pos]] < end:
                out[order[pos]] = name
                pos += 1
            start = end
        else:
            count = int(size)
            if count > len(ids) - pos:
                raise ValueError(f"{name} size {count} asks for more rows than the {len(ids) - pos} left")
            for k in order[pos:pos + count]:
                out[k] = name
            pos += count
            start = u[order[pos - 1]] if count else start
    return out
