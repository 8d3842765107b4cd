"""The landing folder: where files arrive, and how we tell a batch is complete.

A batch is complete when nothing in the folder has changed for a quiet
period, as Orthanc's "stable study" works. Files still being written are
ignored by name (``*.part``, ``*.tmp``, dot-files): writers (our C-STORE
receiver, ``make demo``, rsync) write under such a name and rename when done.

This module only looks at the folder; it never reads file content, so the
trigger that polls it stays cheap.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

IN_PROGRESS_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")


def _in_progress(name: str) -> bool:
    return name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES)


@dataclass(frozen=True)
class Snapshot:
    count: int
    total_size: int
    digest: str  # changes whenever any name, size or mtime changes

    @property
    def empty(self) -> bool:
        return self.count == 0


def entries(landing: Path) -> list[os.DirEntry]:
    """Every complete entry under ``landing`` (recursively), symlinks included but not followed."""
    out: list[os.DirEntry] = []
    stack = [str(landing)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:  # vanished or unreadable: skip; never raise with a path that may name a patient
            continue
        with it:
            for e in it:
                if _in_progress(e.name):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    out.append(e)
    return out


def snapshot(landing: Path) -> Snapshot:
    h = hashlib.sha256()
    count = total = 0
    for e in sorted(entries(landing), key=lambda e: e.path):
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        count += 1
        total += st.st_size
        h.update(f"{e.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return Snapshot(count, total, h.hexdigest())


def settled_files(landing: Path, quiet_seconds: float, now: float | None = None) -> list[Path]:
    """Files whose last change is at least ``quiet_seconds`` old: safe to ingest."""
    now = time.time() if now is None else now
    out = []
    for e in entries(landing):
        try:
            if now - e.stat(follow_symlinks=False).st_mtime >= quiet_seconds:
                out.append(Path(e.path))
        except FileNotFoundError:
            continue
    return sorted(out)


def remove_empty_dirs(landing: Path, *, keep_younger_than: float = 60.0) -> None:
    """Tidy study folders left empty after ingest; the landing root itself stays.

    The receiver's ``cstore/<AE>`` folders stay, and so does any folder changed
    recently: a writer may be about to create a file in it.
    """
    now = time.time()
    for dirpath, dirnames, filenames in os.walk(landing, topdown=False):
        rel = Path(dirpath).relative_to(landing).parts
        if rel[:1] == ("cstore",) and len(rel) <= 2:
            continue
        try:
            recent = now - os.stat(dirpath).st_mtime < keep_younger_than
        except OSError:
            continue
        if Path(dirpath) != landing and not dirnames and not filenames and not recent:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


# -- which landing folder this is --------------------------------------------------

#: A dot-file (so never taken for an arriving file) holding the landing folder's identity.
IDENTITY_FILE = ".landing-id"


def identity(landing: Path) -> str | None:
    """The identity of the landing folder at ``landing``, or None if this host has none there.

    A folder gets one when something that belongs on the landing host first uses it: the trigger
    that watches it, the DICOM receiver, ``platform up``, ``init`` or the ``ingest`` command. A
    worker on another host has an empty folder without one, which is how its claim knows it is
    not where the files are.
    """
    try:
        text = (Path(landing) / IDENTITY_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def ensure_identity(landing: Path) -> str:
    """The folder's identity, made (``l`` + 24 hex digits, written once, atomically) if it has none."""
    landing = Path(landing)
    found = identity(landing)
    if found:
        return found
    import secrets

    landing.mkdir(parents=True, exist_ok=True)
    tmp = landing / f".landing-id.{secrets.token_hex(4)}.tmp"
    tmp.write_text("l" + secrets.token_hex(12) + "\n")
    try:
        os.link(tmp, landing / IDENTITY_FILE)  # the first writer wins; a racing one reads theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return identity(landing) or ""
