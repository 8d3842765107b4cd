"""Insider-threat detection over an access history: who takes more than they should, when, and with whom.

The case that started the project: a department head took 120,000 chest films
over three years, about 110 a day, in small batches during working hours, and
he was one of the two approvers of requests. No single request looked wrong;
only the *totals* did. This module reads a plain list of :class:`AccessEvent`
(the audit trail reduced to who / when / what kind / how many images / which
tiers) and returns :class:`Finding` s. It is pure: no I/O, no clock, no imports
from the rest of the package, and every threshold is data (:data:`DEFAULT_RULES`,
later a section of the hospital's policy YAML). A finding carries user names,
counts, tiers, windows and a few numbers only: the input has no patient data
and no free text, and nothing from an event other than those is copied out.

How it works: one pass buckets the events by user and *local* day (and clock
hour) in the hospital time zone; every rule then works on those buckets with
prefix sums, never event against event. A year of a 30-person department
(~45k events) takes about 0.3 s of CPU; time grows linearly with events.
Only events with ``at <= now`` count. Rolling-window rules are evaluated for
every *complete* local day (a day whose end is <= ``now``), so a run at 09:00
and one at 17:00 agree about yesterday.

Stable keys: a finding's :attr:`Finding.key` is ``rule:user:start:end``. Its
window is fixed by the first evidence (a local day, a clock hour, the first
event of a burst, the first day a rolling total crossed its threshold), never
by ``now``, so an hourly or weekly detector raises an ongoing case once; later
runs return the same key with up-to-date counts in ``detail``. Flagged days
with gaps of at most ``calendar.episode_gap_days`` (7) are one episode, one
finding (``detail["flagged_days"]`` says how long it has lasted).

The defaults were set against a synthetic but realistic department year
(``tests/audit_history.py``: light and heavy clinicians, vacations, busy
weeks, a weighted approver rotation) with a margin over the worst of 20
seeded years, all of which raise no finding. The rules (defaults in
:data:`DEFAULT_RULES`; "access" = the kinds in :data:`ACCESS_KINDS`, counted in
images, ``objects``):

``off_hours`` (warning; major from 200 images)
    Access outside working hours (08:00-19:00, Monday-Friday, holidays by ISO
    date, time zone Asia/Shanghai), one finding per user and local day.
    Emergency access is excluded: it has its own rule and is expected at night.
``spike_hour`` / ``spike_day`` (major)
    A user's images in one local clock hour / local day above
    ``max(floor, factor x own baseline)``, the baseline being the mean of the
    user's *active* hours / days over the trailing 30 days. Floors 150 / 200:
    a normal busy day peaks at about 115 images and a busy hour at about 85,
    so 400 images in an hour stands out; the factor (5 / 4) raises the bar
    for users who routinely work with large series. With no history the floor
    alone applies.
``accumulation`` (major)
    The slow insider. Rolling 30-, 90- and 365-day image totals, each checked
    against (a) the user's own earlier rate (the up to 180 days *before* the
    window; only when the user was seen at least 60 days before it; scaled to
    the window) and (b) the median of the user's peer group for the same
    window, the user excluded. Flagged when the total exceeds ``max(floor,
    factor x reference)`` for either reference: the floor is the absolute
    "nobody takes this much without a look", the factors lift the bar for a
    busy department (peer) or a habitually heavy user (own). Floors 40 / 30 /
    25 images per calendar day of the window (1,200 / 2,700 / 9,125): the
    heaviest normal clinician reached 34, 25 and 19 a day over those windows
    in the worst of the 20 years; the insider's 110 per working day is about
    78 a calendar day, so he crosses the 30-day floor after 11 working days,
    with or without an own baseline. It is the floors that keep heavy users
    quiet: they sit at up to 7.6x / 5.4x / 4x their group's median (the
    median clinician takes ~7 images a working day), above the peer factors
    5 / 4 / 4, which matter once a department's median is high. Own factors
    4 / 3 / 3: normal users peak at about 2x their own past. Small groups:
    with fewer than ``min_peers`` (2) other members the median is over
    everyone in the history ("all"); users missing from ``peers`` form the
    group ``"unknown"``; members listed in ``peers`` without events count as
    zero.
``approver_accumulation`` (major) / ``approver_spike`` (warning)
    The same two checks on approvals given: rolling 30/90-day approval counts
    (floor 10 a day) against the approver's own earlier rate (3x / 2.5x) and
    the median of the other approvers of the group (4x / 2.5x); in a weighted
    rotation of three a normal approver reaches 3.4x / 1.8x the others over a
    month / a quarter (someone's leave shifts work to the others) and 2.3x /
    1.7x his own past. Approvals in one local day above ``max(100, 4 x own
    active-day mean)``; the normal peak is about 70.
``colluding_pair`` (major)
    One requester approved by the same two approvers far more often than the
    rotation predicts. The prediction is made per day: on each day a request
    of his was approved, the pair's share among the *other* requests approved
    that day (smoothed towards its share over the window) is what the
    rotation gave everyone that day, who was on duty and who was away; requests
    the requester approved himself are left out, since a head is never his own
    approver. Over the trailing 30 days the expected count ``e`` is the sum of
    those shares; flagged when the pair's count ``k`` is at least 12, at
    least 30 % of his requests, at least 3 x ``e`` and the binomial tail
    ``P[X >= k]`` (n = his requests, p = e / n) is below 1e-6. That is tiny
    because it is tested for every requester, pair and day of the year; the
    smallest normal value in 20 years was 8e-6.
``approver_requests`` (warning)
    A user who approved anything in the last 90 days and also took more than
    100 images or made more than 10 requests in the last 30 days: approvers
    should rarely be takers (normal heads take at most ~70 images a month),
    and this is the fastest signal for a head like the one above (it fires
    after his first or second full day).
``denied_burst`` / ``login_failed_burst`` (warning)
    At least 5 refusals within 60 minutes / at least 10 failed logins for one
    user name within 15 minutes: someone probing the guards or a password.
    One finding per burst, window = first event + the rule's minutes.
``emergency`` (emergency)
    Every emergency access is a finding, for the DSO's review.

Known limits:

- The defaults fit a department like the synthetic one; a hospital sets its
  own in the policy (a department that works with 1,000-image CT series
  needs higher floors).
- Everything is counted in events' ``objects``: re-downloading the same
  images counts again, and an approved request that is never used counts
  nothing. The rules see what the audit trail records, nothing else (a
  screen photographed, a shared account, images taken outside the platform).
- ``accumulation`` cannot see an insider who stays below the floors (about 40
  images a calendar day for a month, 25 over a year: ~9,000 a year) and
  within the factors of his peers, nor a whole peer group doing the same
  (the median moves with them, the floor still applies), nor theft split
  across several accounts. Someone who has been taking data since before the
  history starts has a "normal" own baseline; only the peer check and the
  floor find them, so the peer mapping matters. The 365-day window never has
  an own baseline in a history shorter than two years.
- Own baselines absorb what happened before: an insider who ramps up slowly
  over months raises his own baseline with him (the peer check remains).
- ``colluding_pair`` needs enough other requests to know the rotation; a
  requester whose pair is forced by the rota (one head per sub-department)
  looks like collusion and needs a higher ``min_share`` or his own rota. It
  does not see approvers approving each other's requests in turn.
- Keys are stable as long as the history given only grows at its end; a
  caller who trims the start changes own baselines and may move episodes.
- Clock hours and local days are buckets: 400 images straddling two clock
  hours are two halves (the day rule still sees the whole).
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, chain, combinations
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc

#: Kinds that are data access (counted in images).
ACCESS_KINDS = frozenset({"working_copy", "download", "restore", "export", "reidentify", "emergency"})
#: Every kind an event may have.
KINDS = ACCESS_KINDS | {"approved_request", "approval", "request", "denied", "login_failed"}
#: Every rule name a finding may carry, in report order.
RULES = ("off_hours", "spike_hour", "spike_day", "accumulation", "approver_accumulation", "approver_spike",
         "colluding_pair", "approver_requests", "denied_burst", "login_failed_burst", "emergency")
LEVELS = ("warning", "major", "emergency")
TIERS = range(1, 6)

DEFAULT_RULES: dict = {
    # How local days, clock hours and working hours are reckoned.
    "calendar": {
        "timezone": "Asia/Shanghai",  # IANA name of the hospital's time zone; days and hours are local
        "work_start": "08:00",  # start of working hours, local, inclusive
        "work_end": "19:00",  # end of working hours, local, exclusive (18:59 is in hours)
        "workdays": [1, 2, 3, 4, 5],  # ISO weekdays that are working days (Monday = 1)
        "holidays": [],  # ISO dates ("2025-10-01") that are not working days
        "episode_gap_days": 7,  # rolling rules: flagged days at most this many days apart are one episode, one finding
    },
    # Access outside working hours, one finding per user and local day.
    "off_hours": {
        "enabled": True,  # run this rule
        "level": "warning",  # level of an off-hours day
        "major_objects": 200,  # images in one off-hours day from which the level is "major"
    },
    # Images in one local clock hour.
    "spike_hour": {
        "enabled": True,  # run this rule
        "level": "major",  # level of a finding
        "floor": 150,  # images in an hour that are never a spike at or below this
        "factor": 5.0,  # ... nor at or below factor x the user's mean active hour
        "baseline_days": 30,  # trailing days (before the hour's day) the mean is taken over
    },
    # Images in one local day.
    "spike_day": {
        "enabled": True,  # run this rule
        "level": "major",  # level of a finding
        "floor": 200,  # images in a day that are never a spike at or below this
        "factor": 4.0,  # ... nor at or below factor x the user's mean active day
        "baseline_days": 30,  # trailing days the mean is taken over
    },
    # Rolling image totals against the user's own earlier rate and the peer group's median.
    "accumulation": {
        "enabled": True,  # run this rule
        "level": "major",  # level of a finding
        # each window: days, floor per day of the window (floor = days x floor_per_day), factors over the
        # user's own earlier rate (scaled to the window) and over the peer median for the same window
        "windows": [
            {"days": 30, "floor_per_day": 40.0, "own_factor": 4.0, "peer_factor": 5.0},
            {"days": 90, "floor_per_day": 30.0, "own_factor": 3.0, "peer_factor": 4.0},
            {"days": 365, "floor_per_day": 25.0, "own_factor": 3.0, "peer_factor": 4.0},
        ],
        "baseline_days": 180,  # own rate: at most this many days before the window
        "min_baseline_days": 60,  # own rate only if the user was seen at least this long before the window
        "min_peers": 2,  # fewer other members in the group: compare with everyone ("all") instead
    },
    # Rolling approval counts of an approver against their own earlier rate and the other approvers in the group.
    "approver_accumulation": {
        "enabled": True,  # run this rule
        "level": "major",  # level of a finding
        "windows": [  # as for accumulation, counted in approvals
            {"days": 30, "floor_per_day": 10.0, "own_factor": 3.0, "peer_factor": 4.0},
            {"days": 90, "floor_per_day": 10.0, "own_factor": 2.5, "peer_factor": 2.5},
        ],
        "baseline_days": 180,  # own rate: at most this many days before the window
        "min_baseline_days": 60,  # own rate only if the approver was seen at least this long before the window
        "min_peers": 2,  # fewer other approvers in the group: compare with all approvers instead
    },
    # Approvals given in one local day.
    "approver_spike": {
        "enabled": True,  # run this rule
        "level": "warning",  # level of a finding
        "floor": 100,  # approvals in a day that are never a spike at or below this
        "factor": 4.0,  # ... nor at or below factor x the approver's mean active day
        "baseline_days": 30,  # trailing days the mean is taken over
    },
    # One requester approved by the same two approvers far more often than the rotation predicts.
    "colluding_pair": {
        "enabled": True,  # run this rule
        "level": "major",  # level of a finding
        "days": 30,  # trailing window of approved requests
        "min_count": 12,  # the pair approved at least this many of the requester's requests in the window
        "min_share": 0.3,  # ... and at least this share of them
        "factor": 3.0,  # ... and at least factor x what the department's pair frequency predicts
        "max_p_value": 1e-6,  # ... and the binomial tail P[X >= count] is below this
    },
    # An approver who also takes data.
    "approver_requests": {
        "enabled": True,  # run this rule
        "level": "warning",  # level of a finding
        "lookback_days": 90,  # a user is an approver with approvals in this many trailing days
        "min_approvals": 1,  # ... at least this many
        "days": 30,  # trailing window of the approver's own access and requests
        "max_objects": 100,  # more images than this in the window is flagged
        "max_requests": 10,  # more requests than this in the window is flagged
    },
    # Refusals of one user in a short time.
    "denied_burst": {
        "enabled": True,  # run this rule
        "level": "warning",  # level of a finding
        "count": 5,  # at least this many refusals ...
        "minutes": 60,  # ... within this many minutes
    },
    # Failed logins for one user name in a short time.
    "login_failed_burst": {
        "enabled": True,  # run this rule
        "level": "warning",  # level of a finding
        "count": 10,  # at least this many failed logins ...
        "minutes": 15,  # ... within this many minutes
    },
    # Every emergency access.
    "emergency": {
        "enabled": True,  # run this rule
        "level": "emergency",  # level of a finding
    },
}

_POSITIVE = {"days", "minutes", "count", "baseline_days", "lookback_days", "min_count"}


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """One line of the access history, reduced to what detection needs (no patient data, no free text)."""

    at: dt.datetime  # timezone-aware
    user: str  # the person (Airflow user name); never a patient
    kind: str  # one of KINDS
    objects: int = 1  # images the event touched
    tiers: tuple[int, ...] = ()  # sensitivity tiers touched (1..5)
    request_id: str | None = None
    approvers: tuple[str, ...] = ()  # for "approved_request": who approved it (DSO first, then heads)

    def __post_init__(self):
        _validate(self)  # frozen: checked once here, so detect() trusts AccessEvent instances


@dataclass(frozen=True)
class Finding:
    """One suspicion: a rule, a person, a window and the numbers that made it fire."""

    rule: str
    level: str
    user: str  # for colluding_pair: the requester (the pair is in detail)
    window_start: dt.datetime  # UTC
    window_end: dt.datetime  # UTC
    count: int  # images or events in the window, per rule
    baseline: float | None  # what was expected, if the rule has an expectation
    tiers: tuple[int, ...]
    detail: dict = field(default_factory=dict, hash=False)  # small, JSON-safe

    @property
    def key(self) -> str:
        """Stable id: the same case seen by a later run has the same key."""
        return f"{self.rule}:{self.user}:{self.window_start.isoformat()}:{self.window_end.isoformat()}"


# --- rules: merge and check ------------------------------------------------------------------------------------


def resolve_rules(rules: Mapping | None = None) -> dict:
    """DEFAULT_RULES with ``rules`` laid over it (rule by rule, key by key), checked; ValueError names the key."""
    merged = copy.deepcopy(DEFAULT_RULES)
    if rules is None:
        rules = {}
    if not isinstance(rules, Mapping):
        raise ValueError("rules must be a mapping of rule name to settings")
    for section, settings in rules.items():
        if section not in DEFAULT_RULES:
            raise ValueError(f"rules: unknown rule {section!r} (known: {', '.join(DEFAULT_RULES)})")
        if not isinstance(settings, Mapping):
            raise ValueError(f"rules.{section} must be a mapping")
        for key, value in settings.items():
            if key not in DEFAULT_RULES[section]:
                raise ValueError(f"rules: unknown key {section}.{key}")
            merged[section][key] = _checked(f"{section}.{key}", key, DEFAULT_RULES[section][key], value)
    return merged


def _checked(name: str, key: str, default, value):
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"rules.{name} must be true or false")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"rules.{name} must be a string")
        if key == "level" and value not in LEVELS:
            raise ValueError(f"rules.{name} must be one of {', '.join(LEVELS)}")
        return value
    if isinstance(default, int | float):
        ok = isinstance(value, int) if isinstance(default, int) else isinstance(value, int | float)
        if not ok or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise ValueError(f"rules.{name} must be {kind} >= 0")
        if key in _POSITIVE and value <= 0:
            raise ValueError(f"rules.{name} must be > 0")
        if key == "max_p_value" and value > 1:
            raise ValueError(f"rules.{name} must be between 0 and 1")
        return value
    if key == "windows":
        if not isinstance(value, list) or not value:
            raise ValueError(f"rules.{name} must be a non-empty list of windows")
        template = default[0]
        out = []
        for i, window in enumerate(value):
            if not isinstance(window, Mapping) or set(window) != set(template):
                raise ValueError(f"rules.{name}[{i}] must have exactly the keys {', '.join(template)}")
            out.append({k: _checked(f"{name}[{i}].{k}", k, template[k], window[k]) for k in template})
        if len({w["days"] for w in out}) != len(out):
            raise ValueError(f"rules.{name}: two windows of the same length")
        return out
    if key == "workdays":
        if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7
                                                  for d in value):
            raise ValueError(f"rules.{name} must be a list of ISO weekdays 1..7")
        return list(value)
    if key == "holidays":
        if not isinstance(value, list):
            raise ValueError(f"rules.{name} must be a list of ISO dates")
        for d in value:
            try:
                dt.date.fromisoformat(d)
            except (TypeError, ValueError):
                raise ValueError(f"rules.{name} must be a list of ISO dates (YYYY-MM-DD)") from None
        return list(value)
    raise ValueError(f"rules.{name} has an unsupported value")  # pragma: no cover - every default is covered


@dataclass(frozen=True)
class _Calendar:
    tz: ZoneInfo
    start: dt.time
    end: dt.time
    workdays: frozenset
    holidays: frozenset  # ordinals
    gap: int

    @classmethod
    def of(cls, cal: dict) -> _Calendar:
        try:
            tz = ZoneInfo(cal["timezone"])
        except Exception:
            raise ValueError("rules.calendar.timezone is not a known IANA time zone") from None
        times = []
        for key in ("work_start", "work_end"):
            try:
                times.append(dt.time.fromisoformat(cal[key]))
            except ValueError:
                raise ValueError(f"rules.calendar.{key} must be HH:MM") from None
        if times[0] >= times[1]:
            raise ValueError("rules.calendar.work_start must be before work_end")
        holidays = frozenset(dt.date.fromisoformat(d).toordinal() for d in cal["holidays"])
        return cls(tz, times[0], times[1], frozenset(cal["workdays"]), holidays, int(cal["episode_gap_days"]))

    def in_hours(self, local: dt.datetime) -> bool:
        return (local.isoweekday() in self.workdays and local.toordinal() not in self.holidays
                and self.start <= local.time() < self.end)

    def day_start(self, ordinal: int) -> dt.datetime:
        return dt.datetime.combine(dt.date.fromordinal(ordinal), dt.time(), tzinfo=self.tz).astimezone(UTC)

    def hour_start(self, ordinal: int, hour: int) -> dt.datetime:
        return dt.datetime.combine(dt.date.fromordinal(ordinal), dt.time(hour), tzinfo=self.tz).astimezone(UTC)


# --- the history, bucketed once -------------------------------------------------------------------------------


def _mask(tiers) -> int:
    if not isinstance(tiers, tuple | list):
        raise ValueError("AccessEvent.tiers must be a tuple of tiers 1..5")
    m = 0
    for t in tiers:
        if not isinstance(t, int) or isinstance(t, bool) or t not in TIERS:
            raise ValueError("AccessEvent.tiers must be a tuple of tiers 1..5")
        m |= 1 << t
    return m


def _validate(ev) -> None:
    """ValueError naming the field, never quoting its value (an event's content stays out of logs)."""
    at = getattr(ev, "at", None)
    if not isinstance(at, dt.datetime) or at.utcoffset() is None:
        raise ValueError("AccessEvent.at must be a timezone-aware datetime")
    kind = getattr(ev, "kind", None)
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"AccessEvent.kind is not a known kind (expected one of: {', '.join(sorted(KINDS))})")
    user = getattr(ev, "user", None)
    if not isinstance(user, str) or not user:
        raise ValueError("AccessEvent.user must be a non-empty string")
    objects = getattr(ev, "objects", None)
    if not isinstance(objects, int) or isinstance(objects, bool) or objects < 0:
        raise ValueError("AccessEvent.objects must be a whole number >= 0")
    _mask(getattr(ev, "tiers", None))
    rid = getattr(ev, "request_id", None)
    if rid is not None and not isinstance(rid, str):
        raise ValueError("AccessEvent.request_id must be a string or None")
    approvers = getattr(ev, "approvers", ())
    if not isinstance(approvers, tuple | list) or not all(isinstance(a, str) and a for a in approvers):
        raise ValueError("AccessEvent.approvers must be a tuple of user names")


def _tiers(mask: int) -> tuple[int, ...]:
    return tuple(t for t in TIERS if mask >> t & 1)


class _History:
    """Events at or before ``now``, bucketed by user and local day (days are proleptic ordinals)."""

    def __init__(self, events: Iterable[AccessEvent], now: dt.datetime, cal: _Calendar):
        tz = cal.tz
        self.first_seen: dict[str, int] = {}
        self.off_hours: dict[tuple[str, int], list[int]] = {}  # (user, day) -> [objects, events, mask]
        self.emergencies: dict[tuple[str, dt.datetime], list[int]] = {}  # (user, at) -> [objects, events, mask]
        self.denied: dict[str, list[tuple[dt.datetime, int]]] = defaultdict(list)  # user -> [(at, day)]
        self.login_failed: dict[str, list[tuple[dt.datetime, int]]] = defaultdict(list)
        first_seen = self.first_seen
        access: dict[tuple[str, int], list[int]] = {}  # (user, day) -> [objects, mask]
        hours: dict[tuple[str, int, int], list[int]] = {}  # (user, day, local hour) -> [objects, mask]
        approvals: dict[tuple, tuple[int, int]] = {}  # (request id, approver) -> (day, mask)
        requests: dict[tuple, int] = {}  # (user, request id) -> first day
        approved: list[tuple[str, int, tuple[str, ...], int, object]] = []
        masks: dict = {(): 0}
        anonymous = 0  # events without a request id each stand for their own request
        in_hours = cal.in_hours
        emergencies, off_hours, denied, login_failed = self.emergencies, self.off_hours, self.denied, self.login_failed
        for ev in events:
            if type(ev) is not AccessEvent:
                _validate(ev)  # anything shaped like an event (a DB row, a namespace) is checked here
            at = ev.at
            if at > now:
                continue
            kind, user, tiers, rid = ev.kind, ev.user, ev.tiers, ev.request_id
            if not tiers:
                mask = 0
            else:
                mask = masks.get(tiers) if type(tiers) is tuple else None
                if mask is None:
                    mask = _mask(tiers)
                    if type(tiers) is tuple:
                        masks[tiers] = mask
            local = at.astimezone(tz)
            day = local.toordinal()
            if kind == "approval":
                if rid is None:
                    anonymous += 1
                    rid = ("anonymous", anonymous)
                key = (rid, user)
                old = approvals.get(key)
                if old is None:
                    approvals[key] = (day, mask)
                elif day < old[0]:
                    approvals[key] = (day, mask | old[1])
            elif kind in ACCESS_KINDS:
                objects = ev.objects
                key = (user, day)
                acc = access.get(key)
                if acc is None:
                    access[key] = [objects, mask]
                else:
                    acc[0] += objects
                    acc[1] |= mask
                key = (user, day, local.hour)
                acc = hours.get(key)
                if acc is None:
                    hours[key] = [objects, mask]
                else:
                    acc[0] += objects
                    acc[1] |= mask
                if kind == "emergency":
                    acc = emergencies.setdefault((user, at.astimezone(UTC)), [0, 0, 0])
                elif not in_hours(local):
                    acc = off_hours.setdefault((user, day), [0, 0, 0])
                else:
                    continue
                acc[0] += objects
                acc[1] += 1
                acc[2] |= mask
            elif kind == "request" or kind == "approved_request":
                if rid is None:
                    anonymous += 1
                    rid = ("anonymous", anonymous)
                key = (user, rid)
                if day < requests.get(key, day + 1):
                    requests[key] = day
                if kind == "approved_request":
                    approved.append((user, day, tuple(ev.approvers), mask, rid))
            elif kind == "denied":
                denied[user].append((at, day))
            else:  # login_failed
                login_failed[user].append((at, day))
        # First day each user appears in any event (own baselines start there).
        for user, day in chain(access, ((u, d) for (u, _), d in requests.items()),
                               ((u, d) for (_, u), (d, _) in approvals.items()),
                               ((u, d) for u, ts in chain(self.denied.items(), self.login_failed.items())
                                for _, d in ts)):
            if day < first_seen.get(user, day + 1):
                first_seen[user] = day
        self.access_day: dict[str, dict[int, int]] = defaultdict(dict)
        self.access_mask: dict[str, dict[int, int]] = defaultdict(dict)
        for (user, day), (objects, mask) in access.items():
            self.access_day[user][day] = objects
            self.access_mask[user][day] = mask
        self.access_hour: dict[str, dict[int, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
        self.hour_mask: dict[tuple[str, int, int], int] = {}
        for (user, day, hour), (objects, mask) in hours.items():
            self.access_hour[user][day][hour] = objects
            self.hour_mask[(user, day, hour)] = mask
        # An approved request names its approvers: count those not already seen as "approval" events.
        for _, day, approvers, mask, rid in approved:
            for a in approvers:
                if (rid, a) not in approvals:
                    approvals[(rid, a)] = (day, mask)
                    if day < self.first_seen.get(a, day + 1):
                        self.first_seen[a] = day
        self.approval_day: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.approval_mask: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for (_, approver), (day, mask) in approvals.items():
            self.approval_day[approver][day] += 1
            self.approval_mask[approver][day] |= mask
        self.request_day: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for (user, _), day in requests.items():
            self.request_day[user][day] += 1
        self.approved = [(user, day, approvers, mask) for user, day, approvers, mask, _ in approved]
        self.first_day = min(first_seen.values(), default=None)
        self.today = now.astimezone(tz).toordinal()
        self.last_complete = self.today - 1  # the last local day whose end is <= now


def _prefix(days: dict[int, int], first: int, n: int) -> list[int]:
    series = [0] * n
    for day, value in days.items():
        series[day - first] += value
    return [0, *accumulate(series)]


def _windowed(prefix: list[int], days: int, count: int) -> list[int]:
    """Rolling sums over ``days`` days ending at each index < count (days before the history count 0)."""
    return [prefix[i] - prefix[i - days if i > days else 0] for i in range(1, count + 1)]


def _window_mask(masks: dict[int, int], first_day: int, last_day: int) -> int:
    m = 0
    for day, mask in masks.items():
        if first_day <= day <= last_day:
            m |= mask
    return m


def _episodes(flagged: list[tuple[int, dict]], gap: int) -> list[tuple[dict, int, int]]:
    """Flagged (day index, info) in day order -> (info of the first day, number of flagged days, last index)."""
    out: list[tuple[dict, int, int]] = []
    prev = None
    for index, info in flagged:
        if prev is None or index - prev > gap:
            out.append((info, 0, index))
        first, n, _ = out[-1]
        out[-1] = (first, n + 1, index)
        prev = index
    return out


def _num(x: float) -> float:
    return round(float(x), 2)


# --- the rules ------------------------------------------------------------------------------------------------


def _off_hours(h: _History, spec: dict, cal: _Calendar) -> list[Finding]:
    out = []
    for (user, day), (objects, n, mask) in h.off_hours.items():
        level = "major" if objects >= spec["major_objects"] else spec["level"]
        out.append(Finding("off_hours", level, user, cal.day_start(day), cal.day_start(day + 1), objects, None,
                           _tiers(mask), {"events": n, "date": dt.date.fromordinal(day).isoformat()}))
    return out


def _spikes(rule: str, per_day: dict[str, dict[int, int]], spec: dict, cal: _Calendar,
            masks: Mapping[str, Mapping[int, int]]) -> list[Finding]:
    """Images (or approvals) per local day above max(floor, factor x mean of the trailing active days)."""
    out = []
    floor, factor, back = spec["floor"], spec["factor"], spec["baseline_days"]
    for user, days in per_day.items():
        for day, total in days.items():
            if total <= floor:
                continue
            prior = [days[d] for d in range(day - back, day) if days.get(d)]
            baseline = statistics.fmean(prior) if prior else None
            if baseline is not None and total <= factor * baseline:
                continue
            detail = {"floor": floor, "baseline_days": back, "date": dt.date.fromordinal(day).isoformat()}
            out.append(Finding(rule, spec["level"], user, cal.day_start(day), cal.day_start(day + 1), total,
                               None if baseline is None else _num(baseline),
                               _tiers(masks.get(user, {}).get(day, 0)), detail))
    return out


def _spike_hour(h: _History, spec: dict, cal: _Calendar) -> list[Finding]:
    out = []
    floor, factor, back = spec["floor"], spec["factor"], spec["baseline_days"]
    for user, days in h.access_hour.items():
        for day, hours in days.items():
            for hour, total in hours.items():
                if total <= floor:
                    continue
                prior = [v for d in range(day - back, day) if d in days for v in days[d].values() if v]
                baseline = statistics.fmean(prior) if prior else None
                if baseline is not None and total <= factor * baseline:
                    continue
                start = cal.hour_start(day, hour)
                detail = {"floor": floor, "baseline_days": back, "local_hour": hour}
                out.append(Finding("spike_hour", spec["level"], user, start, start + dt.timedelta(hours=1), total,
                                   None if baseline is None else _num(baseline),
                                   _tiers(h.hour_mask[(user, day, hour)]), detail))
    return out


def _rolling(rule: str, per_day: Mapping[str, Mapping[int, int]], masks: Mapping[str, Mapping[int, int]],
             population: set[str], group_of: Mapping[str, str], spec: dict, h: _History,
             cal: _Calendar) -> list[Finding]:
    """Rolling totals against the user's own earlier rate and the median of their peers (accumulation rules)."""
    first, n = h.first_day, h.today - h.first_day + 1
    last = h.last_complete - first
    if last < 0 or not population:
        return []
    windows = sorted(spec["windows"], key=lambda w: w["days"])
    prefix = {u: _prefix(per_day[u], first, n) for u in population if u in per_day}
    zero = [0] * (last + 1)
    sums = {w["days"]: {u: _windowed(prefix[u], w["days"], last + 1) if u in prefix else zero for u in population}
            for w in windows}
    members: dict[str, list[str]] = defaultdict(list)
    for u in sorted(population):
        members[group_of.get(u, "unknown")].append(u)
    everyone = sorted(population)
    out = []
    for user in sorted(set(prefix)):
        p = prefix[user]
        group = group_of.get(user, "unknown")
        others = [o for o in members[group] if o != user]
        basis = group
        if len(others) < spec["min_peers"]:
            others, basis = [o for o in everyone if o != user], "all"
        seen = h.first_seen.get(user, first) - first
        flagged: list[tuple[int, dict]] = []
        for i in range(last + 1):
            for w in windows:
                days = w["days"]
                window = sums[days]
                total = window[user][i]
                floor = w["floor_per_day"] * days
                if total <= floor:
                    continue
                info: dict = {"index": i, "days": days, "total": total, "floor": _num(floor)}
                hit = []
                if others:
                    median = statistics.median([window[o][i] for o in others])
                    info.update(peer_group=basis, peers=len(others), peer_median=_num(median))
                    if total > w["peer_factor"] * median:
                        hit.append("peer")
                base_end = i - days
                base_start = max(seen, base_end - spec["baseline_days"] + 1)
                length = base_end - base_start + 1
                if length >= max(1, spec["min_baseline_days"]):
                    expected = (p[base_end + 1] - p[base_start]) / length * days
                    info["own_expected"] = _num(expected)
                    if total > w["own_factor"] * expected:
                        hit.append("own")
                if hit:
                    info["basis"] = "+".join(hit)
                    flagged.append((i, info))
                    break
        user_masks = masks.get(user, {})
        for info, n_flagged, last_index in _episodes(flagged, cal.gap):
            i, days = info.pop("index"), info["days"]
            end_day = first + i
            start_day = end_day - days + 1
            baseline = info.get("peer_median") if "peer" in info["basis"] else info.get("own_expected")
            info.update(flagged_days=n_flagged, last_flagged=dt.date.fromordinal(first + last_index).isoformat())
            out.append(Finding(rule, spec["level"], user, cal.day_start(start_day), cal.day_start(end_day + 1),
                               info.pop("total"), baseline, _tiers(_window_mask(user_masks, start_day, end_day)),
                               info))
    return out


def _binom_sf(k: int, n: int, p: float) -> float:
    """P[X >= k] for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq, ln = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    terms = [ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


_DAY_PRIOR = 5  # colluding_pair: a day's pair share is smoothed with this many pseudo-requests at the window's share


def _expected(mine_day, pair_day, dept, dept_pair_day, approved_day, first, n, count, dept_w,
              dept_pair_w, mine_w, approved_w, pair_w, days) -> list[float]:
    """Rolling sum of what the rotation predicts for ``user``'s requests carrying ``pair``, day by day.

    Each day a request of the user's is approved, the pair's share among the *other* requests of that day that the
    user did not approve himself (a head is never his own approver) is what the rotation gave everyone that day
    (who was on duty, who was away); it is smoothed towards the share over the trailing window.
    """
    contrib = [0.0] * n
    for day, mine in mine_day.items():
        i = day - first
        if i >= count:
            continue
        window_n = dept_w[i] - mine_w[i] - approved_w[i]
        window_share = (dept_pair_w[i] - pair_w[i] + 1) / (window_n + 2)
        others_n = dept.get(day, 0) - mine - approved_day.get(day, 0)
        others_k = dept_pair_day.get(day, 0) - pair_day.get(day, 0)
        contrib[i] = mine * (others_k + _DAY_PRIOR * window_share) / (max(0, others_n) + _DAY_PRIOR)
    prefix = [0.0, *accumulate(contrib)]
    return [prefix[i] - prefix[i - days if i > days else 0] for i in range(1, count + 1)]


def _colluding_pair(h: _History, spec: dict, cal: _Calendar) -> list[Finding]:
    first, n = h.first_day, h.today - h.first_day + 1
    last = h.last_complete - first
    if last < 0 or not h.approved:
        return []
    per_user: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    per_pair: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    dept: dict[int, int] = defaultdict(int)
    dept_pair: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    as_approver: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))  # requests a user approved
    masks: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for user, day, approvers, mask, in h.approved:
        per_user[user][day] += 1
        dept[day] += 1
        masks[user][day] |= mask
        for a in set(approvers):
            as_approver[a][day] += 1
        for pair in {tuple(sorted(c)) for c in combinations(approvers, 2) if c[0] != c[1]}:
            per_pair[(user, pair)][day] += 1
            dept_pair[pair][day] += 1
    days, min_count, min_share = spec["days"], spec["min_count"], spec["min_share"]
    factor, max_p = spec["factor"], spec["max_p_value"]
    count = last + 1
    dept_w = _windowed(_prefix(dept, first, n), days, count)
    dept_pair_w = {pair: _windowed(_prefix(d, first, n), days, count) for pair, d in dept_pair.items()}
    pairs_of: dict[str, list[tuple]] = defaultdict(list)
    for user, pair in sorted(per_pair):
        pairs_of[user].append(pair)
    out = []
    for user in sorted(per_user):
        if sum(per_user[user].values()) < min_count:
            continue
        mine_w = _windowed(_prefix(per_user[user], first, n), days, count)
        # the requester cannot approve his own requests: the rotation he sees is the others' requests he did not
        # approve himself (a head's requests never go to him, so his pairs are naturally more concentrated)
        approved_w = _windowed(_prefix(as_approver.get(user, {}), first, n), days, count)
        pair_w = {pair: _windowed(_prefix(per_pair[(user, pair)], first, n), days, count) for pair in pairs_of[user]}
        expected_w: dict[tuple, list[float]] = {}  # computed for the pairs that pass the cheap checks only
        flagged: list[tuple[int, dict]] = []
        for i in range(count):
            mine = mine_w[i]
            if mine < min_count:
                continue
            best = None
            for pair, pw in pair_w.items():
                k = pw[i]
                if k < min_count or k < min_share * mine:
                    continue
                if pair not in expected_w:
                    expected_w[pair] = _expected(per_user[user], per_pair[(user, pair)], dept, dept_pair[pair],
                                                 as_approver.get(user, {}), first, n, count, dept_w,
                                                 dept_pair_w[pair], mine_w, approved_w, pw, days)
                expected = expected_w[pair][i]
                if k < factor * expected:
                    continue
                pv = _binom_sf(k, mine, min(1.0, expected / mine))
                if pv < max_p and (best is None or pv < best[0]):
                    best = (pv, pair, k, expected)
            if best is not None:
                pv, pair, k, expected = best
                flagged.append((i, {"index": i, "count": k, "expected": expected, "pair": list(pair),
                                    "requests": mine, "p_value": float(f"{pv:.3g}")}))
        for info, n_flagged, last_index in _episodes(flagged, cal.gap):
            end_day = first + info["index"]
            start_day = end_day - days + 1
            detail = {"days": days, "pair": info["pair"], "requests": info["requests"],
                      "share": _num(info["count"] / info["requests"]), "p_value": info["p_value"],
                      "flagged_days": n_flagged, "last_flagged": dt.date.fromordinal(first + last_index).isoformat()}
            out.append(Finding("colluding_pair", spec["level"], user, cal.day_start(start_day),
                               cal.day_start(end_day + 1), info["count"], _num(info["expected"]),
                               _tiers(_window_mask(masks[user], start_day, end_day)), detail))
    return out


def _approver_requests(h: _History, spec: dict, cal: _Calendar) -> list[Finding]:
    first, n = h.first_day, h.today - h.first_day + 1
    last = h.last_complete - first
    if last < 0:
        return []
    lookback, min_approvals, days = spec["lookback_days"], max(1, spec["min_approvals"]), spec["days"]
    max_objects, max_requests = spec["max_objects"], spec["max_requests"]
    empty: dict[int, int] = {}
    out = []
    for user in sorted(h.approval_day):
        if user not in h.access_day and user not in h.request_day:
            continue
        count = last + 1
        approvals_w = _windowed(_prefix(h.approval_day[user], first, n), lookback, count)
        objects_w = _windowed(_prefix(h.access_day.get(user, empty), first, n), days, count)
        requests_w = _windowed(_prefix(h.request_day.get(user, empty), first, n), days, count)
        flagged: list[tuple[int, dict]] = []
        for i in range(count):
            approvals, objects, requests = approvals_w[i], objects_w[i], requests_w[i]
            if approvals >= min_approvals and (objects > max_objects or requests > max_requests):
                flagged.append((i, {"index": i, "objects": objects, "requests": requests, "approvals": approvals}))
        for info, n_flagged, last_index in _episodes(flagged, cal.gap):
            end_day = first + info["index"]
            start_day = end_day - days + 1
            detail = {"days": days, "requests": info["requests"], "approvals": info["approvals"],
                      "lookback_days": lookback, "max_objects": max_objects, "max_requests": max_requests,
                      "flagged_days": n_flagged, "last_flagged": dt.date.fromordinal(first + last_index).isoformat()}
            out.append(Finding("approver_requests", spec["level"], user, cal.day_start(start_day),
                               cal.day_start(end_day + 1), info["objects"], None,
                               _tiers(_window_mask(h.access_mask.get(user, empty), start_day, end_day)), detail))
    return out


def _bursts(rule: str, times_of: Mapping[str, list[tuple[dt.datetime, int]]], spec: dict) -> list[Finding]:
    """At least ``count`` events within ``minutes``: one finding per burst, window = first event + minutes."""
    out = []
    count, span = spec["count"], dt.timedelta(minutes=spec["minutes"])
    for user, times in times_of.items():
        times = sorted(t.astimezone(UTC) for t, _ in times)
        lo, blocked_until = 0, None
        for j, t in enumerate(times):
            if blocked_until is not None and t < blocked_until:
                continue
            while times[lo] <= t - span or (blocked_until is not None and times[lo] < blocked_until):
                lo += 1
            if j - lo + 1 >= count:
                start = times[lo]
                end = start + span
                n = bisect.bisect_left(times, end) - lo
                out.append(Finding(rule, spec["level"], user, start, end, n, None, (),
                                   {"minutes": spec["minutes"], "threshold": count}))
                blocked_until = end
    return out


def _emergency(h: _History, spec: dict) -> list[Finding]:
    return [Finding("emergency", spec["level"], user, at, at, objects, None, _tiers(mask), {"events": n})
            for (user, at), (objects, n, mask) in h.emergencies.items()]


def detect(events: Iterable[AccessEvent], *, now: dt.datetime, rules: Mapping | None = None,
           peers: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings over the events at or before ``now``, sorted by (rule, user, window_start); deterministic.

    ``rules`` overrides :data:`DEFAULT_RULES` rule by rule and key by key; ``peers`` maps a user to their peer
    group (users missing from it are in the group ``"unknown"``). Raises ValueError, naming the field or rules
    key, on a naive datetime, an unknown kind or an unknown or ill-typed rule setting.
    """
    if not isinstance(now, dt.datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    cfg = resolve_rules(rules)
    cal = _Calendar.of(cfg["calendar"])
    group_of = dict(peers or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in group_of.items()):
        raise ValueError("peers must map user names to group names")
    h = _History(events, now, cal)
    if h.first_day is None:
        return []
    on = {rule: cfg[rule] for rule in RULES if cfg[rule]["enabled"]}
    found: list[Finding] = []
    if "off_hours" in on:
        found += _off_hours(h, on["off_hours"], cal)
    if "spike_hour" in on:
        found += _spike_hour(h, on["spike_hour"], cal)
    if "spike_day" in on:
        found += _spikes("spike_day", h.access_day, on["spike_day"], cal, h.access_mask)
    if "accumulation" in on:
        population = set(group_of) | set(h.first_seen)
        found += _rolling("accumulation", h.access_day, h.access_mask, population, group_of, on["accumulation"], h,
                          cal)
    if "approver_accumulation" in on:
        found += _rolling("approver_accumulation", h.approval_day, h.approval_mask, set(h.approval_day), group_of,
                          on["approver_accumulation"], h, cal)
    if "approver_spike" in on:
        found += _spikes("approver_spike", h.approval_day, on["approver_spike"], cal, h.approval_mask)
    if "colluding_pair" in on:
        found += _colluding_pair(h, on["colluding_pair"], cal)
    if "approver_requests" in on:
        found += _approver_requests(h, on["approver_requests"], cal)
    if "denied_burst" in on:
        found += _bursts("denied_burst", h.denied, on["denied_burst"])
    if "login_failed_burst" in on:
        found += _bursts("login_failed_burst", h.login_failed, on["login_failed_burst"])
    if "emergency" in on:
        found += _emergency(h, on["emergency"])
    found.sort(key=lambda f: (f.rule, f.user, f.window_start, f.window_end))
    return found
