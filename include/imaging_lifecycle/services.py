"""The composition root: the one place that builds what the stages talk to.

``Services.open(settings)`` hands every stage function, DAG task and command
the same set of collaborators, built from one :class:`Settings`:

* ``policy``: the policy in force, loaded once per process from
  ``IL_POLICY_FILE`` (the packaged default when unset);
* ``catalog``: the lifecycle catalog (objects, copies, keys, audit trail);
* ``store``: the object store (the only code that talks to S3);
* ``keystore``: the key-encryption keys;
* ``encrypted``: the encrypt-and-store layer over ``store`` and ``keystore``
  (the only way plaintext goes into or out of a bucket);
* ``airflow_api``: Airflow's REST API, for what a task needs of Airflow's own
  records (a task never touches the metadata database).

Each is built on first use, so a command that only classifies a file never
needs object-store credentials. Nothing else in the package constructs these.

The policy is part of what the platform *is*: the catalog records the
fingerprint of the policy the platform runs under, and each object records the
fingerprint it was classified under. :meth:`Services.guard` refuses a guarded
action in a process whose policy differs from the platform's, so a worker
started with another policy file cannot classify, hand out, restore or delete
anything under rules nobody agreed to.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from imaging_lifecycle.settings import Settings, load_settings

if TYPE_CHECKING:
    from imaging_lifecycle.airflow_api import AirflowApi
    from imaging_lifecycle.catalog import Catalog
    from imaging_lifecycle.encrypted_store import EncryptedStore
    from imaging_lifecycle.keystore import KeyStore
    from imaging_lifecycle.policy import Policy
    from imaging_lifecycle.storage import ObjectStore


#: Objects a stage works on at once within one task (``IL_IO_THREADS``): their S3 and database round
#: trips release the GIL, so a task keeps both cores and the network busy instead of waiting on each.
IO_THREADS = int(os.environ.get("IL_IO_THREADS") or 4)
#: Instances of one mapped stage task that run at once in a DAG run (the DAGs' ``max_active_tis_per_dagrun``).
TASK_SLOTS = 2


def even_chunks(items: list, most: int, slots: int = TASK_SLOTS) -> list[list]:
    """``items`` in order, in chunks of at most ``most`` whose sizes differ by one at most and whose number
    is a multiple of ``slots`` when there is more than one: 300 items at most 100 each make 4 chunks of
    75, so no slot idles through a last round of one chunk."""
    n = len(items)
    if n <= most:
        return [list(items)] if items else []
    chunks = -(-n // most)
    chunks = min(n, chunks + -chunks % slots)
    bounds = [k * n // chunks for k in range(chunks + 1)]
    return [list(items[bounds[k]:bounds[k + 1]]) for k in range(chunks)]


def io_map(fn: Callable, items: Iterable, *, threads: int = IO_THREADS) -> list:
    """``fn`` over ``items`` on up to ``threads`` threads; the results in order. The first exception
    is raised once every item has been tried (each step is idempotent: a retry redoes only the rest)."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        futures = [pool.submit(fn, i) for i in items]
    return [f.result() for f in futures]


class PolicyMismatch(RuntimeError):
    """This process runs under another policy than the one the platform recorded; guarded actions refuse."""


@cache
def _load_policy(path: str | None, mtime_ns: int | None):  # noqa: ARG001 (mtime_ns is the cache key)
    from imaging_lifecycle.policy import load_policy

    return load_policy(path)


def policy_in_force(settings: Settings) -> Policy:
    """The policy of ``settings`` (``IL_POLICY_FILE``, else the packaged default), loaded once per process.

    A file edited while the process runs is read again (the cache key holds its
    modification time); a broken file raises :class:`~imaging_lifecycle.policy.PolicyError`.
    """
    path = settings.policy_file
    if path is None:
        return _load_policy(None, None)
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError:
        mtime = None  # load_policy names the problem
    return _load_policy(str(path), mtime)


@dataclass
class Services:
    """What the stages talk to, built from one :class:`Settings`. Open it once per task or command."""

    settings: Settings

    @classmethod
    def open(cls, settings: Settings | None = None) -> Services:
        return cls(settings or load_settings())

    @cached_property
    def policy(self) -> Policy:
        return policy_in_force(self.settings)

    @cached_property
    def catalog(self) -> Catalog:
        from imaging_lifecycle.catalog import Catalog

        return Catalog(self.settings.catalog_url)

    @cached_property
    def store(self) -> ObjectStore:
        from imaging_lifecycle.storage import ObjectStore

        return ObjectStore(self.settings)

    @cached_property
    def keystore(self) -> KeyStore:
        from imaging_lifecycle.keystore import open_default_keystore

        return open_default_keystore(self.settings)

    @cached_property
    def airflow_api(self) -> AirflowApi:
        from imaging_lifecycle.airflow_api import AirflowApi

        return AirflowApi.from_settings(self.settings)

    @cached_property
    def encrypted(self) -> EncryptedStore:
        from imaging_lifecycle.encrypted_store import EncryptedStore

        return EncryptedStore(self.store, self.keystore)

    def map(self, fn: Callable, items: Iterable, *, threads: int = IO_THREADS) -> list:
        """:func:`io_map`, with every collaborator built first so the threads share one of each."""
        for name in ("policy", "catalog", "store", "keystore", "encrypted"):
            getattr(self, name)
        if self.settings.kmip is not None and self.settings.catalog_url.startswith("sqlite"):
            # The key store is a row of this same SQLite file: one thread's catalog write would wait on
            # another's key store write for the whole busy timeout. Several hosts use PostgreSQL anyway.
            threads = 1
        return io_map(fn, items, threads=threads)

    # -- the policy the platform runs under --------------------------------------

    def guard(self, action: str, *, actor: str) -> None:
        """Refuse ``action`` unless this process's policy is the one recorded for the platform.

        The first process to ask on a new catalog records its policy (audited
        ``policy.adopt``). A refusal is audited too (``security.alert`` with
        both fingerprints) and raises :class:`PolicyMismatch`.
        """
        ours = self.policy.fingerprint
        recorded = self.catalog.platform_policy(adopt=ours, actor=actor)
        if recorded != ours:
            self.catalog.audit.append(actor, "security.alert", outcome="major_failure",
                                      detail={"reason": "POLICY_MISMATCH", "action": action,
                                              "platform_policy": recorded, "process_policy": ours})
            raise PolicyMismatch(
                f"refusing {action}: this process runs policy {ours[:12]} ({self.policy.source}) but the "
                f"platform runs policy {recorded[:12]}; set IL_POLICY_FILE to the platform's policy, or adopt "
                "this one with 'imaging-lifecycle policy adopt'")

    def adopt_policy(self, *, request_id: str | None, actor: str) -> None:
        """Make this process's policy the platform's: only under an APPROVED ``policy_change`` request of
        ``actor`` whose target is this very policy (raises :class:`~imaging_lifecycle.catalog.NotApproved`)."""
        from imaging_lifecycle.catalog import NotApproved
        from imaging_lifecycle.catalog.access_requests import FULFILLED

        req = self.catalog.approved_request(request_id, action="policy_change", actor=actor)
        if req["policy_target"] != self.policy.fingerprint:
            self.catalog.audit.append(actor, "access.denied", outcome="failure",
                                      detail={"request": req["id"], "action": "policy_change",
                                              "reason": "NOT_THE_APPROVED_POLICY"})
            raise NotApproved(f"request {req['id']} approved another policy than this process runs",
                              "NOT_THE_APPROVED_POLICY")
        self.catalog.adopt_policy(self.policy.fingerprint, actor=actor, source=self.policy.source)
        self.catalog.set_request_state(req["id"], FULFILLED, actor=actor)
