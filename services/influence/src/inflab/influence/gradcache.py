"""Per-example gradient matrices, computed once per (checkpoint, examples) and reused.

A run that asks for several methods (TracIn and DataInf both need the training gradients at
the final checkpoint; every method needs the evaluation gradients) pays for each gradient
matrix once: the influence worker keeps a process-wide :class:`GradientCache` (jobs of one
run land on the same Ray worker process one after another), keyed by *content*: the
adapter's bytes, the base model and the exact token ids. A key never matches a different
model, checkpoint or tokenisation, so reuse is always safe.

Memory stays bounded whatever N: a matrix that fits the cache's RAM budget lives in RAM;
a larger one is written row-chunk by row-chunk to a memory-mapped file on local disk
(reading it back is far cheaper than recomputing a forward+backward), and consumers walk it
in row chunks (:meth:`GradientMatrix.chunks`). The least recently used entries are evicted
first.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inflab.influence.gradients import (
    DEFAULT_BATCH_SIZE,
    Example,
    gradient_blocks,
    iter_example_gradients,
    num_parameters,
)

#: Rows handed to a consumer at once: bounds the working set of a chunked pass
#: (256 rows x 460,800 LoRA parameters of the default model = 470 MB).
DEFAULT_CHUNK_ROWS = 256


class GradientMatrix:
    """``[N, P]`` float32 per-example gradients, in RAM or memory-mapped from disk."""

    def __init__(self, rows: int, cols: int, *, path: Path | None = None) -> None:
        self.shape = (rows, cols)
        self.path = path
        if path is None:
            self._data: np.ndarray = np.zeros((rows, cols), dtype=np.float32)
        else:
            self._data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, cols))
            # The mapping keeps the data; the name goes now, so the disk space is returned
            # when the last reference to the matrix goes, and nothing is left behind after a crash.
            path.unlink()

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * 4

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def write(self, indices: Sequence[int], grads: torch.Tensor) -> None:
        self._data[np.asarray(indices)] = grads.detach().cpu().numpy()

    def chunks(self, rows: int = DEFAULT_CHUNK_ROWS, start_row: int = 0) -> Iterator[tuple[slice, torch.Tensor]]:
        """``(row slice, rows as a float32 tensor)`` in order, from ``start_row`` (a multiple
        of ``rows`` keeps the slices aligned with a full walk); zero-copy when in RAM."""
        for start in range(start_row, self.shape[0], rows):
            part = slice(start, min(start + rows, self.shape[0]))
            yield part, torch.from_numpy(np.ascontiguousarray(self._data[part]))

    def tensor(self) -> torch.Tensor:
        """The whole matrix (read into RAM if it lives on disk): for small sets only."""
        return torch.from_numpy(np.ascontiguousarray(self._data))



class GradientCache:
    """Gradient matrices by key, least recently used evicted beyond ``ram_bytes`` (RAM) and
    ``disk_bytes`` (spilled matrices). Thread-safe; ``None`` budgets mean "never keep"."""

    def __init__(self, ram_bytes: int = 1 << 30, disk_bytes: int = 8 << 30, spill_dir: Path | None = None) -> None:
        self.ram_bytes = ram_bytes
        self.disk_bytes = disk_bytes
        self._spill_dir = spill_dir
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def spill_dir(self) -> Path:
        if self._spill_dir is None:
            # Spilled files are unlinked as soon as they are mapped: nothing accumulates here.
            self._spill_dir = Path(tempfile.gettempdir())
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        return self._spill_dir

    def new_matrix(self, rows: int, cols: int) -> GradientMatrix:
        """A RAM matrix when it fits the RAM budget, else a memory-mapped file."""
        if rows * cols * 4 <= self.ram_bytes:
            return GradientMatrix(rows, cols)
        fd, name = tempfile.mkstemp(prefix="inflab-gradients-", suffix=".npy", dir=self.spill_dir())
        os.close(fd)
        Path(name).unlink()
        return GradientMatrix(rows, cols, path=Path(name))

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            self._evict()

    def _evict(self) -> None:
        def used(disk: bool) -> int:
            return sum(v.nbytes for v in self._entries.values() if isinstance(v, GradientMatrix) and v.on_disk == disk)

        for disk, budget in ((False, self.ram_bytes), (True, self.disk_bytes)):
            while used(disk) > budget:
                victim = next(k for k, v in self._entries.items() if isinstance(v, GradientMatrix) and v.on_disk == disk)
                # A consumer still holding the matrix keeps it; the memory (or the unlinked
                # file's space) is returned when the last reference goes.
                self._entries.pop(victim)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def fingerprint(*parts: Any) -> str:
    """A content hash of JSON-able parts (token ids, adapter digests, names)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def examples_fingerprint(examples: Sequence[Example]) -> str:
    return fingerprint([[list(e.input_ids), list(e.labels)] for e in examples])


def gradient_matrix(
    model: torch.nn.Module,
    examples: Sequence[Example],
    *,
    pad_id: int,
    key: Hashable | None,
    cache: GradientCache | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
    lookup: bool = True,
) -> GradientMatrix:
    """The per-example gradients of ``examples`` under ``model``'s current adapter:
    from ``cache`` when ``key`` is there, else computed micro-batch by micro-batch (each
    written out at once, so only one micro-batch of gradients is in flight) and cached.
    ``on_batch(n)`` is called after each micro-batch of ``n`` examples (not on a hit)."""
    if lookup and cache is not None and key is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    store = cache or GradientCache(ram_bytes=1 << 62)
    matrix = store.new_matrix(len(examples), num_parameters(gradient_blocks(model)))
    for indices, grads in iter_example_gradients(model, examples, pad_id=pad_id, batch_size=batch_size):
        matrix.write(indices, grads)
        if on_batch is not None:
            on_batch(len(indices))
    if cache is not None and key is not None:
        cache.put(key, matrix)
    return matrix
