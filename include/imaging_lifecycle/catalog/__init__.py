"""The lifecycle catalog: one row per object, per physical copy and per ingest batch.

Every stage of the pipeline records what it did here, and every change goes
through :class:`Catalog`, which (1) checks it against the state machine in
:mod:`imaging_lifecycle.catalog.states`, (2) validates the values, and (3)
appends the matching audit record *in the same database transaction*, so
the audit trail can never miss a catalog change.

Objects are named by their catalog id (uuid4 hex) everywhere outside the
catalog. UIDs of the original enter only as keyed digests
(:meth:`Catalog.uid_key`); exception messages name catalog ids, states and
field names, never values.

Concurrency: many Airflow worker processes may use one catalog at once; write
transactions are serialized (see :mod:`imaging_lifecycle.catalog.db`), so a
check-then-insert like duplicate detection in :meth:`Catalog.register` is
race-free across processes.

Import everything from here (``from imaging_lifecycle.catalog import Catalog,
ObjectRecord, ...``); the modules behind it are:

* ``states``: the state machine, as data; ``schema``: the tables;
  ``db``: engine and transactions; ``audit``: the hash-chained audit log.
* ``records``: the records handed back (``ObjectRecord``, ...) and the exceptions.
* ``checks``: the value checks applied to what callers pass in.
* ``base``: ``CatalogBase``, which owns the database, the audit log,
  transactions and the UID digests.
* One mixin per responsibility, each a ``CatalogBase`` subclass:
  ``objects`` (registration, transitions, hold, flags, deadlines, object reads),
  ``copies`` (physical copies), ``batches``, ``data_keys`` (DEKs and KEK
  rotation), ``grants`` (cache grants), ``certificates`` (deletion certificates),
  ``platform_policy`` (the policy fingerprint the platform runs under),
  ``access_requests`` (access requests, approval decisions, agreements),
  ``incidents`` (incidents and their timeline), ``summaries`` (read-only aggregates for the
  operator's view and the compliance report; the report records), ``staging`` (originals staged in the
  ``staging`` zone by a claim, waiting for their chunk on any worker).

:class:`Catalog` below is just those mixins combined.
"""

from __future__ import annotations

from imaging_lifecycle.catalog import audit, states  # noqa: F401  (audit: re-exported submodule)
from imaging_lifecycle.catalog.access_requests import AccessRequestsMixin, NotApproved, RequestStateError
from imaging_lifecycle.catalog.base import UID_PURPOSES, CatalogBase
from imaging_lifecycle.catalog.batches import BatchesMixin
from imaging_lifecycle.catalog.certificates import CertificatesMixin
from imaging_lifecycle.catalog.checks import FIELD_CHECKS  # noqa: F401
from imaging_lifecycle.catalog.copies import CopiesMixin
from imaging_lifecycle.catalog.data_keys import DataKeysMixin
from imaging_lifecycle.catalog.db import Database, DatabaseUsageError  # noqa: F401
from imaging_lifecycle.catalog.grants import GrantsMixin
from imaging_lifecycle.catalog.incidents import IncidentsMixin, IncidentStateError
from imaging_lifecycle.catalog.objects import DEFAULT_OUTCOMES, ObjectsMixin  # noqa: F401
from imaging_lifecycle.catalog.platform_policy import PlatformPolicyMixin
from imaging_lifecycle.catalog.records import (
    BatchRecord,
    CatalogError,
    CopyRecord,
    Expired,
    IllegalTransition,
    LegalHoldActive,
    ObjectRecord,
    Registration,
    UnknownObject,
)
from imaging_lifecycle.catalog.staging import StagedFile, StagingMixin  # noqa: F401
from imaging_lifecycle.catalog.summaries import SummariesMixin

__all__ = [
    "Catalog", "ObjectRecord", "CopyRecord", "BatchRecord", "Registration", "Expired",
    "CatalogError", "UnknownObject", "IllegalTransition", "LegalHoldActive", "DatabaseUsageError",
    "states", "UID_PURPOSES", "RequestStateError", "NotApproved", "IncidentStateError",
]

# Also importable from here, as before: audit, Database, FIELD_CHECKS, DEFAULT_OUTCOMES.


class Catalog(ObjectsMixin, CopiesMixin, BatchesMixin, DataKeysMixin, GrantsMixin, CertificatesMixin,
              PlatformPolicyMixin, AccessRequestsMixin, IncidentsMixin, SummariesMixin, StagingMixin, CatalogBase):
    """The catalog database at ``url`` (``Services.open(settings).catalog`` opens the settings' one).

    Creates missing tables on construction. Every method that writes takes
    ``actor`` (a user name or ``dag_id/task_id/run_id``) for its audit record,
    and an optional ``session``: a connection from :meth:`transaction`, to
    make several changes (and their audit records) commit together.
    """
