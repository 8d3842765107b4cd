"""The policy file's schema: what a hospital may declare, and what it may not.

Every model forbids unknown keys, so a misspelt key fails the load instead of
being silently ignored (an ignored ``retention`` typo would keep data for the
default period, which is exactly the silent fallback the policy must never
do). Cross-field rules -- the 72-hour cache maximum, identified originals at
or above ``identified_minimum_tier``, backup zones for ``backup_required`` --
are checked here too, so a ``Policy`` object cannot exist in a state the
loader would have rejected.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from imaging_lifecycle.policy.attributes import NARRATIVE
from imaging_lifecycle.policy.durations import parse_duration
from imaging_lifecycle.settings import ZONES

SCHEMA_VERSIONS = (1,)
#: The cache holds plaintext working copies; nothing may keep them longer.
CACHE_HARD_MAX = timedelta(hours=72)
#: What a person may ask for. Every one needs an approved access request (two people, or one emergency).
REQUEST_ACTIONS = ("working_copy", "restore", "export", "reidentify", "early_delete", "release_hold",
                   "policy_change")
#: Of those, the ones that act on objects (a tier's ``actions`` lists which its objects allow).
OBJECT_ACTIONS = REQUEST_ACTIONS[:-1]
#: No emergency access may outlast this, whatever the policy says.
EMERGENCY_HARD_MAX = timedelta(hours=12)
MAX_TIER_LEVEL = 5

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Zone = Literal[tuple(ZONES)]  # type: ignore[valid-type]
RequestAction = Literal[REQUEST_ACTIONS]  # type: ignore[valid-type]
ObjectAction = Literal[OBJECT_ACTIONS]  # type: ignore[valid-type]
UserId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]
Slug = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cache_problem(cache: timedelta) -> str | None:
    if cache > CACHE_HARD_MAX:
        hours = CACHE_HARD_MAX // timedelta(hours=1)
        return f"{cache / timedelta(hours=1):g}h exceeds the hard maximum of {hours}h for plaintext cache copies"
    return None


def _check_cache(retention: dict[str, timedelta]) -> dict[str, timedelta]:
    problem = _cache_problem(retention["cache"]) if "cache" in retention else None
    if problem:
        raise ValueError(f"cache: {problem}")
    return retention


class Handling(_Model):
    """What happens to objects of one tier."""

    deidentify: bool
    key_scope: Literal["study", "series", "object"] = "study"
    zones: list[Zone] = Field(min_length=1)
    retention: dict[Zone, Duration] = Field(default_factory=dict)
    backup_required: bool = False
    #: what may be requested for this tier's objects (each request still needs its approvals)
    actions: list[ObjectAction] = Field(default_factory=list)

    _cache = field_validator("retention")(_check_cache)

    @model_validator(mode="after")
    def _consistent(self) -> Handling:
        if len(set(self.zones)) != len(self.zones):
            raise ValueError("zones: lists a zone twice")
        stray = [z for z in self.retention if z not in self.zones]
        if stray:
            raise ValueError(f"retention: zone {stray[0]!r} is not one of this tier's zones {self.zones}")
        if self.backup_required and "backup" not in self.zones:
            raise ValueError("backup_required is true but 'backup' is not in zones")
        if "working_copy" in self.actions and "cache" not in self.zones:
            raise ValueError("actions: working_copy needs 'cache' in zones")
        return self


class Tier(_Model):
    level: int = Field(ge=1, le=MAX_TIER_LEVEL)
    name: str = Field(min_length=1)
    description: str = Field(min_length=1)
    handling: Handling


class RetentionDefaults(_Model):
    """Zone retention that applies to every tier unless the tier says otherwise."""

    cache: Duration = CACHE_HARD_MAX
    quarantine: Duration = timedelta(days=30)
    research: Duration

    @field_validator("cache")
    @classmethod
    def _cache_max(cls, v: timedelta) -> timedelta:
        problem = _cache_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("research")
    @classmethod
    def _whole_days(cls, v: timedelta) -> timedelta:
        if v % timedelta(days=1):
            raise ValueError("research retention is configured in whole days (e.g. 3650d)")
        return v


def _upper_list(v: object) -> object:
    if isinstance(v, list):
        return [x.strip().upper() if isinstance(x, str) else x for x in v]
    return v


UpperList = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_upper_list)]


class Match(_Model):
    """Conditions over one object. All given conditions must hold; a list matches if any entry does.

    ``keywords`` are whole words (case-insensitive) in StudyDescription or
    ProtocolName. ``procedure_codes`` are ``CODE`` or ``SCHEME:CODE`` found
    in the procedure code sequences. Ages are in years, from PatientAge or
    else from PatientBirthDate and the study date. ``sources`` are sending AE
    titles or source names given by the caller.
    """

    modality: UpperList | None = None
    body_part: UpperList | None = None
    sop_class: list[str] | None = None
    keywords: UpperList | None = None
    procedure_codes: list[str] | None = None
    image_type: UpperList | None = None
    age_below: float | None = Field(default=None, gt=0)
    age_at_least: float | None = Field(default=None, ge=0)
    burned_in_annotation: bool | None = None
    sources: list[str] | None = None
    deidentified: bool | None = None

    @field_validator("sop_class")
    @classmethod
    def _uids(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        from pydicom.uid import UID_dictionary

        by_keyword = {info[4]: uid for uid, info in UID_dictionary.items() if info[4]}
        out = []
        for item in v:
            item = item.strip()
            if _UID.match(item) and len(item) <= 64:
                out.append(item)
            elif item in by_keyword:
                out.append(by_keyword[item])
            else:
                raise ValueError(f"{item!r} is neither a UID nor a known SOP Class keyword")
        return out

    @field_validator("procedure_codes", "sources")
    @classmethod
    def _non_empty_strings(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not isinstance(x, str) or not x.strip() for x in v):
            raise ValueError("entries must be non-empty strings")
        return None if v is None else [x.strip() for x in v]

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not any(getattr(self, f) is not None for f in type(self).model_fields):
            raise ValueError("a rule needs at least one condition (a catch-all would defeat fail-closed)")
        for f in type(self).model_fields:
            if getattr(self, f) == []:
                raise ValueError(f"{f}: an empty list can never match; leave the condition out instead")
        if self.age_below is not None and self.age_at_least is not None and self.age_at_least >= self.age_below:
            raise ValueError("age_at_least must be below age_below")
        return self


class Rule(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)
    tier: int = Field(ge=1, le=MAX_TIER_LEVEL)
    description: str = ""
    match: Match


class Classification(_Model):
    """Ordered rules, first match wins; no match means the highest tier (fail closed)."""

    identified_minimum_tier: int = Field(default=3, ge=1, le=MAX_TIER_LEVEL)
    rules: list[Rule] = Field(min_length=1)


class DeidOptions(_Model):
    """PS3.15 Annex E options chosen by the hospital (names follow the standard's)."""

    retain_longitudinal_modified_dates: bool = True
    clean_descriptors: bool = True
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    #: dates move back by 1..date_shift_max_days days, per patient
    date_shift_max_days: int = Field(default=365, ge=1, le=3650)
    #: narrative attributes (deid.free_text.NARRATIVE) to keep, scrubbed by the detectors; all others are removed
    keep_narrative: list[str] = Field(default_factory=list)

    @field_validator("keep_narrative")
    @classmethod
    def _narrative(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in NARRATIVE]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a narrative attribute; they are {', '.join(NARRATIVE)}")
        return v


def _hex_int(v: object) -> object:
    if isinstance(v, str):
        s = v.strip().lower().removeprefix("0x")
        if not re.fullmatch(r"[0-9a-f]{1,4}", s):
            raise ValueError(f"{v!r} is not a hexadecimal number")
        return int(s, 16)
    return v


class SafePrivateTag(_Model):
    """A private element that is known not to carry identity: kept, by block owner, not by block number."""

    group: Annotated[int, BeforeValidator(_hex_int)]
    creator: str = Field(min_length=1, max_length=64)
    element: Annotated[int, BeforeValidator(_hex_int), Field(ge=0x00, le=0xFF)]
    name: str = ""

    @field_validator("group")
    @classmethod
    def _odd(cls, v: int) -> int:
        if not (v & 1) or v <= 0x0007 or v > 0xFFFF:
            raise ValueError("a private group is odd and above 0007")
        return v


class Region(_Model):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Mask(_Model):
    """Pixel regions to blank for images of one size (and optionally one modality)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    modality: str | None = None
    rows: int = Field(gt=0)
    columns: int = Field(gt=0)
    regions: list[Region] = Field(min_length=1)

    @model_validator(mode="after")
    def _inside(self) -> Mask:
        for i, r in enumerate(self.regions):
            if r.x + r.width > self.columns or r.y + r.height > self.rows:
                raise ValueError(f"regions[{i}] reaches outside the {self.columns}x{self.rows} image")
        return self


class BurnedInRule(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    match: Match


class BurnedIn(_Model):
    """Which images may carry text in their pixels, and what to do about it.

    An image is flagged if BurnedInAnnotation is YES, its modality or SOP
    class is listed, or a rule matches. A flagged image is masked with the
    first mask for its size and modality, otherwise held for review.
    """

    modalities: UpperList = Field(default_factory=list)
    sop_classes: list[str] = Field(default_factory=list)
    rules: list[BurnedInRule] = Field(default_factory=list)
    masks: list[Mask] = Field(default_factory=list)

    _uids = field_validator("sop_classes")(Match._uids.__func__)  # type: ignore[attr-defined]


class Review(_Model):
    """Who decides held images (Airflow user ids), and how long a decision may wait (then the task fails)."""

    reviewers: list[UserId] = Field(min_length=1)
    response_timeout: Duration = timedelta(days=7)


class Department(_Model):
    """A department: its heads (Airflow user ids) and the sending AE titles whose objects are its own."""

    id: Slug
    heads: list[UserId] = Field(min_length=1)
    sources: list[str] = Field(default_factory=list)


class Emergency(_Model):
    """Break-glass access: one person, a working copy only, for a short time; audited major, reviewed after."""

    users: list[UserId] = Field(default_factory=list)
    max_hours: Duration = timedelta(hours=4)

    @field_validator("max_hours")
    @classmethod
    def _short(cls, v: timedelta) -> timedelta:
        if v > EMERGENCY_HARD_MAX or v < timedelta(hours=1):
            raise ValueError(f"emergency access lasts 1 to {EMERGENCY_HARD_MAX // timedelta(hours=1)} hours")
        return v


class Access(_Model):
    """Who may see what: the roles of two-person approval, who may ask for what, and why.

    Every request is approved first by a data security officer and then by the
    head of each affected department; the two are different people and neither
    is the requester (enforced by :mod:`imaging_lifecycle.access`, Airflow does
    not check it). The people are users of Airflow's auth manager.
    """

    data_security_officers: list[UserId] = Field(min_length=1)
    departments: list[Department] = Field(min_length=1)
    #: the department of an object no department's ``sources`` claims
    default_department: Slug
    #: who may request which action (Airflow user ids)
    requesters: dict[RequestAction, list[UserId]] = Field(default_factory=dict)
    purposes: list[Slug] = Field(min_length=1)
    #: how long each approval may wait; no answer in time denies the request
    approval_timeout: Duration = timedelta(hours=24)
    #: how long an approved restore, re-identification or policy change stays usable
    approval_valid: Duration = timedelta(hours=72)
    emergency: Emergency = Field(default_factory=Emergency)
    #: who may record a data-sharing agreement directly (everyone else needs an approved policy_change)
    agreement_admins: list[UserId] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Access:
        ids = [d.id for d in self.departments]
        if len(set(ids)) != len(ids):
            raise ValueError("departments: two departments share an id")
        if self.default_department not in ids:
            raise ValueError(f"default_department: {self.default_department!r} is not one of {ids}")
        claimed: dict[str, str] = {}
        for d in self.departments:
            for src in d.sources:
                if src in claimed:
                    raise ValueError(f"departments: source {src!r} belongs to both {claimed[src]} and {d.id}")
                claimed[src] = d.id
        return self

    def department(self, dept_id: str) -> Department:
        return next(d for d in self.departments if d.id == dept_id)

    def department_of(self, source: str | None) -> str:
        """The department an object belongs to, by its source (``cstore:<AE title>``), else the default."""
        ae = (source or "").removeprefix("cstore:")
        return next((d.id for d in self.departments if ae and ae in d.sources), self.default_department)


class Notify(_Model):
    """Where incidents are sent: e-mail through an Airflow SMTP connection, and a webhook (JSON POST)."""

    smtp_to: list[str] = Field(default_factory=list)
    smtp_from: str = "imaging-lifecycle@localhost"
    smtp_conn_id: str = "smtp_default"
    #: an Airflow HTTP connection id whose host is the webhook URL (or none)
    webhook_conn_id: str | None = None
    #: the lowest level sent at once (emergency always is)
    min_level: Literal["warning", "major", "emergency"] = "warning"


class Monitoring(_Model):
    """Insider-threat detection and incidents: rules and thresholds (``anomalies.DEFAULT_RULES`` as the base),
    who answers each kind of incident, and where notifications go."""

    #: overrides of ``anomalies.DEFAULT_RULES``, rule by rule and key by key (unknown keys are refused)
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: the role that must act on each incident nature; ``default`` for the rest
    responsible: dict[str, Slug] = Field(default_factory=lambda: {"default": "data_security_officer"})
    #: who holds each responsible role (the data security officers always may act too)
    responders: dict[Slug, list[UserId]] = Field(default_factory=lambda: {"operator": ["operator", "admin"]})
    #: who may open the Lifecycle view (it names the people incidents are about: not everyone)
    viewers: list[UserId] = Field(default_factory=lambda: ["admin", "operator", "dso"])
    #: who may read the compliance reports (decrypted on download, audited)
    report_readers: list[UserId] = Field(default_factory=lambda: ["admin", "dso"])
    #: a deletion this long past its deadline (and not held) is overdue: an incident
    overdue_grace: Duration = timedelta(hours=1)
    #: this many rejected DICOM associations within ``association_window``: an incident
    association_burst: int = Field(default=20, ge=1)
    association_window: Duration = timedelta(hours=1)
    notify: Notify = Field(default_factory=Notify)


_DEFAULT_ACCESS = {"data_security_officers": ["dso"], "departments": [{"id": "radiology", "heads": ["radiology-head"]}],
                   "default_department": "radiology", "purposes": ["treatment"]}


class Policy(_Model):
    schema_version: int
    name: str = "unnamed"
    description: str = ""
    tiers: list[Tier] = Field(min_length=1)
    retention: RetentionDefaults
    classification: Classification
    deid_options: DeidOptions = Field(default_factory=DeidOptions)
    safe_private_tags: list[SafePrivateTag] = Field(default_factory=list)
    burned_in: BurnedIn = Field(default_factory=BurnedIn)
    review: Review = Field(default_factory=lambda: Review(reviewers=["admin"]))
    access: Access = Field(default_factory=lambda: Access(**_DEFAULT_ACCESS))
    monitoring: Monitoring = Field(default_factory=Monitoring)

    _by_level: dict[int, Tier] = PrivateAttr(default_factory=dict)
    _fingerprint: str = PrivateAttr(default="")
    _source: str = PrivateAttr(default="")

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v not in SCHEMA_VERSIONS:
            raise ValueError(f"unsupported schema_version {v}; this build reads {list(SCHEMA_VERSIONS)}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Policy:
        levels = [t.level for t in self.tiers]
        if sorted(levels) != list(range(1, len(levels) + 1)):
            raise ValueError(f"tiers: levels must be 1..N, each once; got {levels}")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError("tiers: two tiers share a name")
        top = max(levels)
        seen: set[str] = set()
        floor = self.classification.identified_minimum_tier
        if floor > top:
            raise ValueError(f"classification.identified_minimum_tier: {floor} is above the highest tier {top}")
        for i, rule in enumerate(self.classification.rules):
            where = f"classification.rules[{i}] ({rule.id})"
            if rule.id in seen:
                raise ValueError(f"{where}: duplicate rule id")
            seen.add(rule.id)
            if rule.id.startswith("fail-closed"):
                raise ValueError(f"{where}: ids starting 'fail-closed' are reserved for the classifier")
            if rule.tier > top:
                raise ValueError(f"{where}.tier: {rule.tier} is not a declared tier level")
            if rule.match.deidentified is not True and rule.tier < floor:
                raise ValueError(
                    f"{where}.tier: {rule.tier} is below identified_minimum_tier {floor}; "
                    "a rule that can match identified originals must add 'deidentified: true' or raise its tier"
                )
        ids = [r.id for r in self.burned_in.rules]
        if len(set(ids)) != len(ids):
            raise ValueError("burned_in.rules: duplicate rule id")
        keys = [(t.group, t.creator, t.element) for t in self.safe_private_tags]
        if len(set(keys)) != len(keys):
            raise ValueError("safe_private_tags: an entry is listed twice")
        return self

    def model_post_init(self, __context: object) -> None:
        self._by_level = {t.level: t for t in self.tiers}
        self._fingerprint = hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    # -- helpers others rely on -------------------------------------------------

    @property
    def highest_tier(self) -> int:
        """The most restrictive level: where anything unknown or unreadable goes."""
        return max(self._by_level)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the validated policy; audit records name the policy that decided."""
        return self._fingerprint

    @property
    def source(self) -> str:
        return self._source

    def tier(self, level: int) -> Tier:
        try:
            return self._by_level[level]
        except KeyError:
            raise KeyError(f"tier level {level} is not declared; levels are {sorted(self._by_level)}") from None

    def retention_for(self, tier: int, zone: str) -> timedelta:
        """Retention of ``zone`` copies of ``tier`` objects: the tier's own value, else the policy default."""
        if zone not in ZONES:
            raise KeyError(f"unknown zone {zone!r}; zones are {', '.join(ZONES)}")
        own = self.tier(tier).handling.retention.get(zone)
        if own is not None:
            return own
        default = getattr(self.retention, zone, None) if zone in RetentionDefaults.model_fields else None
        if default is None:
            raise KeyError(f"the policy sets no retention for zone {zone!r} of tier {tier}")
        return default
