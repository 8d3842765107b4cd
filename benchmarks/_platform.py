"""Benchmarks run against real embedded services in their own state dir and ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def object_stores(offset: int = 300):
    state = Path(tempfile.mkdtemp(prefix="il-bench-"))
    os.environ["IL_STATE_DIR"] = str(state)
    os.environ["IL_PORT_OFFSET"] = str(offset)
    from imaging_lifecycle import embedded

    settings = embedded.start_object_stores(embedded.load_settings())
    try:
        yield settings
    finally:
        embedded.down(settings)
        shutil.rmtree(state, ignore_errors=True)  # a large run's data would shrink the next weed's volume cap
