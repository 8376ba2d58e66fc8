"""The pure, costly computations the tests repeat on the same photos, each done once.

SIFT on a sample photo and the k-means of a visual vocabulary give the same answer for the same input every
time; dozens of tests ingest the same sample photos, so without this most of a quick run would be spent
computing the same keypoints again. Answers are keyed by the exact input bytes and arguments and by the source
of the module that computes them and the versions of OpenCV and NumPy, so a test that feeds anything new, or a
change to that code, gets them computed for real. They are kept in memory, and keypoints (small) also on disk
in pytest's cache folder (``.pytest_cache``; ``pytest --cache-clear`` or ``-p no:cacheprovider`` to do without)
so that the next run and the other xdist worker find them too."""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _digest(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return hashlib.blake2b(f"{data.dtype.str}{data.shape}".encode() + data.tobytes(), digest_size=16).digest()
    return repr(value).encode()


def code_version(function: Callable[..., Any]) -> bytes:
    """What an answer of ``function`` depends on besides its arguments: its module's source and the libraries."""
    import cv2

    source = Path(inspect.getsourcefile(function) or "").read_bytes()
    return hashlib.blake2b(source + cv2.__version__.encode() + np.__version__.encode(), digest_size=16).digest()


def once_per_input(
    function: Callable[..., Any],
    to_arrays: Callable[[Any], dict[str, np.ndarray]],
    from_arrays: Callable[[dict[str, np.ndarray]], Any],
    folder: Path | None = None,
) -> Callable[..., Any]:
    """``function`` answered from a cache keyed by its arguments (arrays by their bytes). An answer is kept as
    arrays (``to_arrays``), in memory and, when ``folder`` is given, in a file there; every caller gets a new
    object (``from_arrays``), so that nobody can change what the next caller gets."""
    cache: dict[str, dict[str, np.ndarray]] = {}
    lock = threading.Lock()
    version = code_version(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        parts = [version, *(_digest(a) for a in args), *(k.encode() + _digest(v) for k, v in sorted(kwargs.items()))]
        key = hashlib.blake2b(b"\0".join(parts), digest_size=20).hexdigest()
        with lock:
            arrays = cache.get(key)
        path = folder / f"{key}.npz" if folder is not None else None
        if arrays is None and path is not None and path.exists():
            with np.load(path) as stored:
                arrays = {name: stored[name] for name in stored.files}
        if arrays is None:
            arrays = to_arrays(function(*args, **kwargs))
            if path is not None:
                buffer = io.BytesIO()
                np.savez(buffer, **arrays)
                partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
                partial.write_bytes(buffer.getvalue())
                partial.replace(path)  # whole or not at all, whichever process writes it
        with lock:
            cache[key] = arrays
        return from_arrays({name: array.copy() for name, array in arrays.items()})

    return wrapper
