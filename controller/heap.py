"""Keep CPython's full garbage collections out of the way of a large run.

A run at a million devices builds tens of millions of objects that live until it ends and hold
no garbage cycles, and CPython walks every one of them in a full (generation 2) collection each
time the long-lived objects have grown by a quarter: a quarter of the CPU time of planning a
million devices. Within `long_lived()` no full collection starts on its own; the young
generations are collected as ever, so short-lived cycles still go at once. Blocks of concurrent
runs in one process (the operator's namespaces) nest: the last to end restores the threshold,
and one that ends while others go on collects in full once, so that runs overlapping without
end (a busy operator) still free what finished runs left.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

FULL_COLLECTION_NEVER = 1 << 30  # generation 2's threshold within the block

_lock = threading.Lock()
_depth = 0
_saved = gc.get_threshold()


@contextmanager
def long_lived() -> Iterator[None]:
    """No full collection within (usable as a decorator too)."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            gc.set_threshold(_saved[0], _saved[1], FULL_COLLECTION_NEVER)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            others = _depth > 0
            if not others:
                gc.set_threshold(*_saved)
        if others:
            gc.collect()
