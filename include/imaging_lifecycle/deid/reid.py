"""The re-identification map: which pseudonym stands for which original, for one object.

It exists only in memory between the engine and the caller, who encrypts it
(``to_bytes``) under the highest tier; reading it back is a two-person
approval action. To keep it out of logs, tracebacks and XCom by accident, it
prints as a count, compares by identity and refuses to be pickled or copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, repr=False)
class ReidEntry:
    kind: str  # e.g. PatientID, StudyInstanceUID, DateShiftDays
    pseudonym: str
    original: str

    def __repr__(self) -> str:
        return f"<ReidEntry {self.kind} (redacted)>"


class ReidMap:
    FORMAT = "il-reid-v1"

    __slots__ = ("_entries",)

    def __init__(self, entries: list[ReidEntry] | tuple[ReidEntry, ...] = ()):
        self._entries = tuple(entries)

    @property
    def entries(self) -> tuple[ReidEntry, ...]:
        return self._entries

    def original(self, kind: str) -> str | None:
        for e in self._entries:
            if e.kind == kind:
                return e.original
        return None

    def pseudonym(self, kind: str) -> str | None:
        for e in self._entries:
            if e.kind == kind:
                return e.pseudonym
        return None

    def to_bytes(self) -> bytes:
        """Canonical JSON, for encryption by the caller. Never store or log these bytes in the clear."""
        return json.dumps(
            {"format": self.FORMAT, "entries": [[e.kind, e.pseudonym, e.original] for e in self._entries]},
            separators=(",", ":"),
            sort_keys=True,
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> ReidMap:
        doc = json.loads(data)
        if doc.get("format") != cls.FORMAT:
            raise ValueError("not an imaging-lifecycle re-identification map")
        return cls(tuple(ReidEntry(*e) for e in doc["entries"]))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<ReidMap: {len(self._entries)} entries (redacted)>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol):  # pickle, copy and Airflow's XCom serialisers all come through here
        raise TypeError("ReidMap is never pickled or copied; encrypt ReidMap.to_bytes() instead")
