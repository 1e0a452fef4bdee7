"""Byte-bounded LRU caches for scene encodings (model replicas) and sampled frames (ingress).

A model replica keeps the ``SceneEncoding`` of recently used scenes so that follow-up questions skip the video
encoder; the ingress keeps each registered scene's sampled ``uint8`` frames so that a replica that evicted (or
never saw) a scene can recompute its encoding transparently. Both are bounded by bytes, not entries, because
entry sizes vary with the model and the sampling settings.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np
import torch

V = TypeVar("V")


def nbytes_of(value: Any) -> int:
    """Bytes held by tensors/arrays inside ``value`` (dataclasses, dicts, lists and tuples are walked)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes_of(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes_of(v) for v in value)
    return 0


class ByteLRU(Generic[V]):
    """A thread-safe LRU mapping whose total size (as measured by ``sizer``) stays under ``capacity_bytes``.

    An item larger than the whole capacity is not stored (``put`` returns False) rather than evicting everything.

    Args:
        capacity_bytes: upper bound on the sum of item sizes.
        sizer: returns an item's size in bytes.
    """

    def __init__(self, capacity_bytes: int, sizer: Callable[[V], int] = nbytes_of):
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._sizer = sizer
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: str, value: V) -> bool:
        """Insert or refresh ``key``; evict least-recently-used items until it fits. Returns whether it was stored."""
        size = int(self._sizer(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.capacity_bytes:
                return False
            while self._items and self._bytes + size > self.capacity_bytes:
                _, (_, evicted_size) = self._items.popitem(last=False)
                self._bytes -= evicted_size
                self.evictions += 1
            self._items[key] = (value, size)
            self._bytes += size
            return True

    def pop(self, key: str) -> V | None:
        with self._lock:
            entry = self._items.pop(key, None)
            if entry is None:
                return None
            self._bytes -= entry[1]
            return entry[0]

    def items(self) -> list[tuple[str, V]]:
        """A snapshot of ``(key, value)`` pairs, most recently used first (does not count as a use)."""
        with self._lock:
            return [(key, value) for key, (value, _) in reversed(self._items.items())]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._items), "bytes": self._bytes, "capacity_bytes": self.capacity_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions,
            }
