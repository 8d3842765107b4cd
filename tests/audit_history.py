"""Synthetic access histories for the anomaly tests: a normal department year, and planted insiders.

:func:`normal_department` makes a seeded, realistic year of one radiology
department in Asia/Shanghai: 20 clinicians taking working copies on working
days within working hours (light and heavy users, vacations, department-wide
busy weeks, some work until 18:55), 4 technicians restoring archives, 3 heads
who take a working copy now and then, and 3 data security officers. Every
request is approved by a DSO and then a head, picked in rotation from those
present (weighted: some approvers are busier), never the requester. A few
requests are denied, a few guarded calls refused, failed logins are scattered
(at most three in a row). There are no emergencies and nothing out of hours.

The planting helpers return a new, time-sorted list with the original events
plus those of one case; the request ids they make are unique per call.
Everything here is user names, counts and tiers: no patient appears.
"""

from __future__ import annotations

import datetime as dt
import math
import random

from imaging_lifecycle.anomalies import AccessEvent

UTC = dt.timezone.utc
TZ_NAME = "Asia/Shanghai"

CLINICIANS = [f"clin-{i:02d}" for i in range(1, 21)]
TECHNICIANS = [f"tech-{i}" for i in range(1, 5)]
HEADS = ["head-1", "head-2", "head-3"]
DSOS = ["dso-1", "dso-2", "dso-3"]
_DSO_WEIGHT = {"dso-1": 1.0, "dso-2": 0.9, "dso-3": 0.7}
_HEAD_WEIGHT = {"head-1": 1.0, "head-2": 0.8, "head-3": 0.8}


def _tz():
    from zoneinfo import ZoneInfo

    return ZoneInfo(TZ_NAME)


def peer_groups() -> dict[str, str]:
    """The department's peer mapping (user -> group), as the detector gets it."""
    groups = {u: "radiology-clinician" for u in CLINICIANS}
    groups |= {u: "radiology-technician" for u in TECHNICIANS}
    groups |= {u: "radiology-head" for u in HEADS}
    groups |= {u: "dso" for u in DSOS}
    return groups


def local(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    """A local wall-clock time in the hospital, as an aware UTC datetime."""
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=_tz()).astimezone(UTC)


def local_date(start: dt.datetime) -> dt.date:
    return start.astimezone(_tz()).date()


def is_workday(day: dt.date) -> bool:
    return day.isoweekday() <= 5


def _poisson(rng: random.Random, lam: float) -> int:
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class _Requests:
    """Emits request -> DSO approval -> head approval -> approved_request -> access, all before ``at``."""

    def __init__(self, rng: random.Random, prefix: str):
        self.rng, self.prefix, self.n, self.events = rng, prefix, 0, []

    def new_id(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n:06d}"

    def approved(self, user: str, at: dt.datetime, kind: str, objects: int, tiers: tuple[int, ...], dso: str,
                 head: str, download: bool = False) -> None:
        rid = self.new_id()
        since_eight = at.astimezone(_tz()).hour * 60 + at.astimezone(_tz()).minute - 8 * 60
        lead = dt.timedelta(minutes=self.rng.randint(min(6, since_eight), max(6, min(90, since_eight))))
        asked = at - lead
        ev = self.events
        ev.append(AccessEvent(asked, user, "request", 0, tiers, rid))
        ev.append(AccessEvent(asked + lead * 0.3, dso, "approval", 0, tiers, rid))
        ev.append(AccessEvent(asked + lead * 0.6, head, "approval", 0, tiers, rid))
        ev.append(AccessEvent(at - dt.timedelta(seconds=30), user, "approved_request", objects, tiers, rid,
                              (dso, head)))
        ev.append(AccessEvent(at, user, kind, objects, tiers, rid))
        if download:
            ev.append(AccessEvent(at + dt.timedelta(minutes=self.rng.randint(1, 4)), user, "download",
                                  self.rng.randint(1, objects), tiers, rid))

    def denied(self, user: str, at: dt.datetime, tiers: tuple[int, ...]) -> None:
        rid = self.new_id()
        self.events.append(AccessEvent(at - dt.timedelta(minutes=2), user, "request", 0, tiers, rid))
        self.events.append(AccessEvent(at, user, "denied", 0, tiers, rid))


def _work_time(rng: random.Random, day: dt.date, late: float = 0.05) -> dt.datetime:
    """A moment within working hours (08:00-19:00): mostly 08:40-18:00, sometimes until 18:55."""
    if rng.random() < late:
        minute = rng.randint(18 * 60, 18 * 60 + 55)
    else:
        minute = rng.randint(8 * 60 + 40, 18 * 60)
    return local(day, minute // 60, minute % 60)


def _tiers(rng: random.Random) -> tuple[int, ...]:
    r = rng.random()
    return (rng.choice((1, 2)),) if r < 0.45 else (3,) if r < 0.9 else (3, 4)


def _absences(rng: random.Random, days: list[dt.date], blocks: int, length: tuple[int, int]) -> set[dt.date]:
    out: set[dt.date] = set()
    for _ in range(blocks):
        first = rng.randrange(len(days))
        out.update(days[first:first + rng.randint(*length)])
    return out


def _pick(rng: random.Random, weights: dict[str, float], absent: dict[str, set], day: dt.date,
          exclude: str | None = None) -> str:
    names = [u for u in weights if u != exclude and day not in absent[u]] or [u for u in weights if u != exclude]
    return rng.choices(names, [weights[u] for u in names])[0]


def normal_department(start: dt.datetime, days: int = 365, seed: int = 1) -> tuple[list[AccessEvent], dict[str, str]]:
    """A normal year (or ``days``) of one department from ``start`` (local date), time-sorted; and its peers."""
    rng = random.Random(seed)
    first = local_date(start)
    calendar = [first + dt.timedelta(days=i) for i in range(days)]
    workdays = [d for d in calendar if is_workday(d)]
    busy = set()
    for _ in range(4):  # department-wide busy weeks (a screening campaign, a colleague's long leave)
        i = rng.randrange(len(workdays))
        busy.update(workdays[i:i + 5])
    absent = {u: _absences(rng, workdays, 2, (4, 10)) for u in [*CLINICIANS, *TECHNICIANS, *HEADS, *DSOS]}
    # requests a day and mean images per copy: most are light, three are heavy users
    profile = {u: (rng.uniform(0.8, 2.2), rng.uniform(3.5, 7.0)) for u in CLINICIANS}
    for u in rng.sample(CLINICIANS, 3):
        profile[u] = (rng.uniform(2.6, 3.4), rng.uniform(5.5, 7.5))
    own_busy = {u: set(workdays[(i := rng.randrange(len(workdays))):i + 5]) for u in CLINICIANS}
    req = _Requests(rng, f"req{seed}")

    def approvers(user: str, day: dt.date) -> tuple[str, str]:
        return _pick(rng, _DSO_WEIGHT, absent, day), _pick(rng, _HEAD_WEIGHT, absent, day, exclude=user)

    for day in workdays:
        for user in CLINICIANS:
            if day in absent[user] or rng.random() < 0.04:
                continue
            rate, size = profile[user]
            rate *= 1.5 if day in busy else 1.4 if day in own_busy[user] else 1.0
            for _ in range(_poisson(rng, rate)):
                objects = min(40, max(1, round(rng.lognormvariate(math.log(size), 0.5))))
                kind = "export" if rng.random() < 0.01 else "working_copy"
                req.approved(user, _work_time(rng, day), kind, objects, _tiers(rng), *approvers(user, day),
                             download=rng.random() < 0.06)
            if rng.random() < 0.012:
                req.denied(user, _work_time(rng, day), _tiers(rng))
        for user in TECHNICIANS:
            if day in absent[user]:
                continue
            for _ in range(_poisson(rng, 0.6)):
                req.approved(user, _work_time(rng, day), "restore", rng.randint(5, 30), (3,), *approvers(user, day))
        for user in HEADS:
            if day not in absent[user] and rng.random() < 0.05:
                req.approved(user, _work_time(rng, day), "working_copy", rng.randint(4, 20), _tiers(rng),
                             *approvers(user, day))
        for user in [*CLINICIANS, *TECHNICIANS]:
            if rng.random() < 0.003:  # a guarded call refused (no request)
                req.events.append(AccessEvent(_work_time(rng, day), user, "denied", 0))
    everyone = [*CLINICIANS, *TECHNICIANS, *HEADS, *DSOS]
    for day in calendar:
        for user in everyone:
            if rng.random() < 0.015:  # a mistyped password, once to three times in a row
                at = local(day, rng.randint(7, 21), rng.randint(0, 59))
                for k in range(rng.randint(1, 3)):
                    req.events.append(AccessEvent(at + dt.timedelta(seconds=20 * k), user, "login_failed", 0))
    return sorted(req.events, key=lambda e: e.at), peer_groups()


def _merged(events: list[AccessEvent], new: list[AccessEvent]) -> list[AccessEvent]:
    return sorted([*events, *new], key=lambda e: e.at)


def _on_duty(events: list[AccessEvent]) -> dict[dt.date, tuple[list[str], list[str]]]:
    """Local day -> (DSOs, heads) who approved something that day: a plant's approvers are the ones at work."""
    seen: dict[dt.date, tuple[set, set]] = {}
    tz = _tz()
    for e in events:
        if e.kind == "approval":
            dsos, heads = seen.setdefault(e.at.astimezone(tz).date(), (set(), set()))
            (dsos if e.user in DSOS else heads if e.user in HEADS else set()).add(e.user)
    return {day: (sorted(d), sorted(h)) for day, (d, h) in seen.items()}


def slow_insider(events: list[AccessEvent], user: str, start: dt.datetime, days: int, per_day: int = 110,
                 seed: int = 7) -> list[AccessEvent]:
    """``user`` (a head, himself an approver) takes ~per_day images a working day in batches of 5-15, in hours."""
    rng = random.Random(seed)
    req = _Requests(rng, f"ins{len(events)}")
    first = local_date(start)
    duty = _on_duty(events)
    for day in (first + dt.timedelta(days=i) for i in range(days)):
        if not is_workday(day):
            continue
        target, taken = round(per_day * rng.uniform(0.9, 1.1)), 0
        batches = []
        while taken < target:
            b = min(rng.randint(5, 15), target - taken)
            batches.append(b)
            taken += b
        minutes = sorted(rng.randint(8 * 60 + 30, 18 * 60 + 30) for _ in batches)
        for b, minute in zip(batches, minutes, strict=True):
            dsos, heads = duty.get(day, (DSOS, HEADS))
            dso = rng.choice(dsos or DSOS)
            head = rng.choice([h for h in heads if h != user] or [h for h in HEADS if h != user])
            req.approved(user, local(day, minute // 60, minute % 60), "working_copy", b, (3,), dso, head)
    return _merged(events, req.events)


def colluding_pair(events: list[AccessEvent], requester: str, dso: str, head: str, start: dt.datetime, days: int,
                   per_day: float = 3.0, share: float = 0.9, seed: int = 11) -> list[AccessEvent]:
    """``requester`` makes ~per_day extra requests a working day, approved by (dso, head) ``share`` of the time."""
    rng = random.Random(seed)
    req = _Requests(rng, f"col{len(events)}")
    first = local_date(start)
    duty = _on_duty(events)
    for day in (first + dt.timedelta(days=i) for i in range(days)):
        if not is_workday(day):
            continue
        dsos, heads = duty.get(day, (DSOS, HEADS))
        for _ in range(_poisson(rng, per_day)):
            pair = (dso, head) if rng.random() < share else (rng.choice(dsos or DSOS), rng.choice(heads or HEADS))
            req.approved(requester, _work_time(rng, day, late=0.0), "working_copy", rng.randint(3, 12), (3,), *pair)
    return _merged(events, req.events)


def off_hours(events: list[AccessEvent], user: str, at: dt.datetime, objects: int = 40) -> list[AccessEvent]:
    """One working copy of ``objects`` images at ``at`` (e.g. 02:30 local on a Sunday)."""
    rid = f"off{len(events)}"
    return _merged(events, [AccessEvent(at - dt.timedelta(minutes=1), user, "approved_request", objects, (3,), rid,
                                        ("dso-1", "head-1")),
                            AccessEvent(at, user, "working_copy", objects, (3,), rid)])


def spike(events: list[AccessEvent], user: str, at: dt.datetime, objects: int = 400) -> list[AccessEvent]:
    """``objects`` images in eight working copies within the 50 minutes after ``at``."""
    per, new = objects // 8, []
    for i in range(8):
        rid = f"spk{len(events)}-{i}"
        n = per if i < 7 else objects - 7 * per
        when = at + dt.timedelta(minutes=7 * i)
        new.append(AccessEvent(when - dt.timedelta(seconds=30), user, "approved_request", n, (2, 3), rid,
                               ("dso-2", "head-2")))
        new.append(AccessEvent(when, user, "working_copy", n, (2, 3), rid))
    return _merged(events, new)


def emergency(events: list[AccessEvent], user: str, at: dt.datetime, objects: int = 12) -> list[AccessEvent]:
    """One emergency (break-glass) working copy."""
    return _merged(events, [AccessEvent(at, user, "emergency", objects, (4,), f"emg{len(events)}")])


def burst(events: list[AccessEvent], user: str, at: dt.datetime, kind: str, n: int,
          every: dt.timedelta) -> list[AccessEvent]:
    """``n`` events of ``kind`` ("denied", "login_failed") for ``user``, one every ``every`` from ``at``."""
    return _merged(events, [AccessEvent(at + every * i, user, kind, 0) for i in range(n)])


def rogue_approver(events: list[AccessEvent], approver: str, start: dt.datetime, days: int,
                   per_day: int) -> list[AccessEvent]:
    """``approver`` gives ``per_day`` extra approvals a working day (requests of clinicians, in hours)."""
    rng = random.Random(13)
    new, first = [], local_date(start)
    for i, day in enumerate(first + dt.timedelta(days=k) for k in range(days)):
        if not is_workday(day):
            continue
        for j in range(per_day):
            new.append(AccessEvent(_work_time(rng, day, late=0.0), approver, "approval", 0, (3,),
                                   f"rog{len(events)}-{i}-{j}"))
    return _merged(events, new)
