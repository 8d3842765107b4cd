"""Insider-threat detection: quiet on a normal department year, loud on every planted case, rules as data.

The history is synthetic (``audit_history.py``): a seeded normal year of one
radiology department, and helpers that plant one case each. A detector runs
on "the log so far" (events at or before ``now``), as the hourly/daily DAG
will; time to detection is measured by running it daily from the start of a
plant until the rule fires.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import datetime as dt
import json
from types import SimpleNamespace

import pytest

import audit_history as hist
from imaging_lifecycle.anomalies import DEFAULT_RULES, AccessEvent, Finding, detect

UTC = dt.timezone.utc
START = hist.local(dt.date(2025, 1, 1), 0)  # 2025-01-01 00:00 in Shanghai, a Wednesday
YEAR_END = START + dt.timedelta(days=365)


@pytest.fixture(scope="module")
def year():
    return hist.normal_department(START, seed=1)


def _so_far(events: list[AccessEvent], now: dt.datetime) -> list[AccessEvent]:
    """The log a detector running at ``now`` has read (events are time-sorted)."""
    return events[:bisect.bisect_right([e.at for e in events], now)]


def _days_to_detect(events, peers, start, rule, user, limit=30):
    """Run detect daily from ``start``: (days until ``rule`` fires for ``user``, that run's findings)."""
    times = [e.at for e in events]
    for day in range(1, limit + 1):
        now = start + dt.timedelta(days=day)
        found = detect(events[:bisect.bisect_right(times, now)], now=now, peers=peers)
        if any(f.rule == rule and f.user == user for f in found):
            return day, found
    return None, found


def _by(found, rule=None, user=None):
    return [f for f in found if (rule is None or f.rule == rule) and (user is None or f.user == user)]


# --- a normal year is quiet ------------------------------------------------------------------------------------


def test_a_normal_year_raises_nothing_at_its_end_nor_in_weekly_runs(year):
    events, peers = year
    assert len(events) > 30_000 and not any(e.kind == "emergency" for e in events)
    at_end = detect(events, now=YEAR_END, peers=peers)
    weekly: dict[str, Finding] = {}
    for week in range(1, 53):
        now = START + dt.timedelta(weeks=week)
        weekly |= {f.key: f for f in detect(_so_far(events, now), now=now, peers=peers)}
    print(f"normal year: {len(events)} events, false positives at the end {len(at_end)}, "
          f"in 52 weekly runs {len(weekly)}")
    assert at_end == [], [(f.rule, f.user, f.count) for f in at_end]
    assert weekly == {}, sorted(weekly)


def test_a_normal_year_is_quiet_without_a_peer_mapping_too(year):
    events, _ = year
    assert detect(events, now=YEAR_END) == []


# --- the slow insider ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_day", [0, 200])
def test_the_slow_insider_is_found_by_accumulation_within_30_days(year, start_day):
    events, peers = year
    start = START + dt.timedelta(days=start_day)
    planted = hist.slow_insider(events, "head-1", start, days=120)
    days, found = _days_to_detect(planted, peers, start, "accumulation", "head-1")
    print(f"slow insider from day {start_day}: found by accumulation after {days} days")
    assert days is not None and days <= 30
    (acc,) = _by(found, "accumulation")
    assert acc.level == "major" and acc.user == "head-1" and acc.count > 1000
    assert acc.detail["days"] == 30 and acc.detail["peer_group"] == "radiology-head" and acc.detail["peers"] == 2
    if start_day == 0:  # no own history yet: the peers (and the floor) alone find him
        assert acc.detail["basis"] == "peer" and "own_expected" not in acc.detail
    else:  # a normal own baseline before: both references fire
        assert acc.detail["basis"] == "peer+own" and acc.detail["own_expected"] < 100
    # He approves in the rotation and takes data himself: the faster, softer signal comes first.
    (conflict,) = _by(found, "approver_requests")
    assert conflict.user == "head-1" and conflict.level == "warning"
    assert conflict.window_end <= acc.window_end
    # Small batches in working hours: no spike, no off-hours; nobody else is suspected.
    assert {f.user for f in found} == {"head-1"}
    assert {f.rule for f in found} == {"accumulation", "approver_requests"}


def test_the_slow_insider_over_his_whole_plant_is_one_case_per_rule(year):
    events, peers = year
    planted = hist.slow_insider(events, "head-1", START + dt.timedelta(days=60), days=200)
    found = detect(planted, now=YEAR_END, peers=peers)
    assert {(f.rule, f.user) for f in found} == {("accumulation", "head-1"), ("approver_requests", "head-1")}
    assert len(found) == 2  # a 200-day episode is one finding per rule, not one per day
    (acc,) = _by(found, "accumulation")
    assert acc.detail["flagged_days"] > 150


@pytest.mark.parametrize("mapping", ["none", "pair"])
def test_the_slow_insider_is_found_without_peers_or_in_a_group_too_small(year, mapping):
    events, peers = year
    if mapping == "none":
        peers, basis = None, "unknown"  # everyone is "unknown": one group of the whole department
    else:
        peers, basis = {**peers, "head-3": "radiology-clinician"}, "all"  # head-1's group: himself and head-2
    # From day 0: no own baseline either, the fallback peer median (and the floor) must do it alone.
    days, found = _days_to_detect(hist.slow_insider(events, "head-1", START, days=40), peers, START,
                                  "accumulation", "head-1")
    assert days is not None and days <= 30
    assert _by(found, "accumulation")[0].detail["peer_group"] == basis
    assert {f.user for f in found} == {"head-1"}


# --- the colluding pair ----------------------------------------------------------------------------------------


def test_a_colluding_pair_is_found_within_30_days(year):
    events, peers = year
    start = START + dt.timedelta(days=150)
    planted = hist.colluding_pair(events, "clin-05", "dso-2", "head-3", start, days=60)
    days, found = _days_to_detect(planted, peers, start, "colluding_pair", "clin-05")
    print(f"colluding pair: found after {days} days")
    assert days is not None and days <= 30
    (pair,) = _by(found, "colluding_pair")
    assert pair.level == "major" and pair.detail["pair"] == ["dso-2", "head-3"]
    assert pair.count >= 12 and pair.count >= 3 * pair.baseline and pair.detail["p_value"] < 1e-6
    assert {f.user for f in found} <= {"clin-05", "dso-2", "head-3"}
    assert {f.rule for f in _by(found, user="clin-05")} <= {"colluding_pair", "accumulation"}


def test_an_even_rotation_for_the_same_extra_volume_is_not_collusion(year):
    events, peers = year
    start = START + dt.timedelta(days=150)
    spread = hist.colluding_pair(events, "clin-05", "dso-2", "head-3", start, days=60, share=0.0)
    assert _by(detect(spread, now=start + dt.timedelta(days=60), peers=peers), "colluding_pair") == []


# --- the quick cases -------------------------------------------------------------------------------------------


def test_off_hours_access_is_one_warning_for_the_local_day(year):
    events, peers = year
    sunday_night = hist.local(dt.date(2025, 3, 9), 2, 30)  # a Sunday, 02:30 in Shanghai
    now = sunday_night + dt.timedelta(days=10)
    found = detect(_so_far(hist.off_hours(events, "clin-03", sunday_night), now), now=now, peers=peers)
    assert [(f.rule, f.user, f.level, f.count) for f in found] == [("off_hours", "clin-03", "warning", 40)]
    (f,) = found
    assert f.window_start == hist.local(dt.date(2025, 3, 9), 0) and f.window_end == hist.local(dt.date(2025, 3, 10), 0)
    assert f.tiers == (3,) and f.detail == {"events": 1, "date": "2025-03-09"}


def test_a_holiday_from_the_rules_makes_a_daytime_access_off_hours(year):
    events, peers = year
    labour_day = hist.local(dt.date(2025, 5, 1), 10)  # a Thursday, a working day in the generated year
    now = labour_day + dt.timedelta(days=1)
    planted = _so_far(hist.off_hours(events, "clin-03", labour_day, objects=120), now)
    assert detect(planted, now=now, peers=peers) == []
    worked = {e.user for e in planted if e.kind in ("working_copy", "download", "restore", "export")
              and labour_day - dt.timedelta(hours=10) <= e.at < labour_day + dt.timedelta(hours=14)}
    holiday = {"calendar": {"holidays": ["2025-05-01"]}}
    found = detect(planted, now=now, peers=peers, rules=holiday)
    assert {f.rule for f in found} == {"off_hours"} and {f.user for f in found} == worked  # all of that day's work
    (mine,) = _by(found, user="clin-03")
    assert mine.count >= 120 and mine.level == "warning" and mine.detail["date"] == "2025-05-01"
    found = detect(planted, now=now, peers=peers, rules={**holiday, "off_hours": {"major_objects": 100}})
    assert _by(found, user="clin-03")[0].level == "major"


def test_400_images_in_an_hour_are_a_spike_and_raising_the_floors_silences_it(year):
    events, peers = year
    at = hist.local(dt.date(2025, 4, 15), 10, 5)  # a Tuesday
    now = at + dt.timedelta(days=7)
    planted = _so_far(hist.spike(events, "clin-08", at), now)
    found = detect(planted, now=now, peers=peers)
    (hour,) = _by(found, "spike_hour")
    assert hour.user == "clin-08" and hour.count >= 400 and hour.level == "major"
    assert hour.window_start == hist.local(dt.date(2025, 4, 15), 10) and hour.detail["local_hour"] == 10
    assert {f.user for f in found} == {"clin-08"}
    assert {f.rule for f in found} <= {"spike_hour", "spike_day", "accumulation"}
    rules = copy.deepcopy(DEFAULT_RULES)
    rules["spike_hour"]["floor"] = rules["spike_day"]["floor"] = 1000
    quiet = detect(planted, now=now, peers=peers, rules=rules)
    assert not _by(quiet, "spike_hour") and not _by(quiet, "spike_day")


def test_every_emergency_access_is_an_emergency_finding(year):
    events, peers = year
    late = hist.local(dt.date(2025, 5, 5), 23, 40)
    now = late + dt.timedelta(hours=1)
    found = detect(_so_far(hist.emergency(events, "clin-02", late), now), now=now, peers=peers)
    assert [(f.rule, f.user, f.level, f.count) for f in found] == [("emergency", "clin-02", "emergency", 12)]
    assert found[0].window_start == found[0].window_end == late and found[0].tiers == (4,)


def test_bursts_of_refusals_and_failed_logins(year):
    events, peers = year
    at = hist.local(dt.date(2025, 6, 3), 14)
    planted = hist.burst(events, "clin-11", at, "denied", 6, dt.timedelta(minutes=5))
    planted = hist.burst(planted, "clin-12", at, "denied", 4, dt.timedelta(minutes=5))
    planted = hist.burst(planted, "intruder", at, "login_failed", 12, dt.timedelta(seconds=30))
    planted = hist.burst(planted, "clin-13", at, "login_failed", 9, dt.timedelta(seconds=30))
    now = at + dt.timedelta(days=1)
    planted = _so_far(planted, now)
    found = detect(planted, now=now, peers=peers)
    assert [(f.rule, f.user, f.count) for f in found] == [("denied_burst", "clin-11", 6),
                                                         ("login_failed_burst", "intruder", 12)]
    assert found[0].window_start == at and found[0].window_end == at + dt.timedelta(minutes=60)
    lower = detect(planted, now=now, peers=peers, rules={"denied_burst": {"count": 4}})
    assert {f.user for f in _by(lower, "denied_burst")} == {"clin-11", "clin-12"}


def test_a_rogue_approver_is_found_by_the_approver_rules(year):
    events, peers = year
    start = START + dt.timedelta(days=100)
    steady = hist.rogue_approver(events, "dso-3", start, days=40, per_day=60)
    found = detect(steady, now=start + dt.timedelta(days=40), peers=peers)
    assert [(f.rule, f.user) for f in found] == [("approver_accumulation", "dso-3")]
    (f,) = found
    assert f.detail["peer_group"] == "dso" and f.count > 3 * f.baseline and f.level == "major"
    assert f.detail["basis"] in ("own", "peer", "peer+own")
    now = hist.local(dt.date(2025, 4, 16), 12)
    one_day = _so_far(hist.rogue_approver(events, "dso-3", hist.local(dt.date(2025, 4, 15), 0), 1, 150), now)
    found = detect(one_day, now=now, peers=peers)
    assert [(f.rule, f.user) for f in found] == [("approver_spike", "dso-3")] and found[0].count > 150


# --- keys, content, rules and input ------------------------------------------------------------------------------


def test_keys_are_stable_across_runs_and_as_the_log_grows(year):
    events, peers = year
    planted = hist.slow_insider(events, "head-1", START + dt.timedelta(days=20), days=60)
    planted = hist.emergency(hist.spike(planted, "clin-08", hist.local(dt.date(2025, 2, 4), 10, 5)), "clin-02",
                             hist.local(dt.date(2025, 2, 14), 3))
    now = START + dt.timedelta(days=50)
    first = detect(_so_far(planted, now), now=now, peers=peers)
    assert first == detect(_so_far(planted, now), now=now, peers=peers)
    assert len({f.key for f in first}) == len(first) >= 4
    for later in (now + dt.timedelta(hours=1), now + dt.timedelta(days=1), now + dt.timedelta(days=7)):
        keys = {f.key for f in detect(_so_far(planted, later), now=later, peers=peers)}
        assert {f.key for f in first} <= keys  # an hourly/daily detector raises each case once
    f = _by(first, "accumulation")[0]
    assert f.key == f"accumulation:head-1:{f.window_start.isoformat()}:{f.window_end.isoformat()}"
    assert f.window_start.tzinfo is not None and f.window_start.utcoffset() == dt.timedelta(0)


def test_findings_carry_only_names_counts_tiers_windows_and_small_numbers(year):
    events, peers = year
    planted = hist.colluding_pair(hist.slow_insider(events, "head-1", START + dt.timedelta(days=30), days=60),
                                  "clin-05", "dso-2", "head-3", START + dt.timedelta(days=150), days=40)
    planted = hist.off_hours(planted, "clin-03", hist.local(dt.date(2025, 3, 9), 2, 30))
    found = detect(planted, now=YEAR_END, peers=peers)
    assert {f.rule for f in found} >= {"accumulation", "approver_requests", "colluding_pair", "off_hours"}
    assert found == sorted(found, key=lambda f: (f.rule, f.user, f.window_start))
    names = set(peers)
    request_ids = {e.request_id for e in planted if e.request_id}
    for f in found:
        assert set(dataclasses.asdict(f)) == {"rule", "level", "user", "window_start", "window_end", "count",
                                              "baseline", "tiers", "detail"}
        assert f.user in names and isinstance(f.count, int) and isinstance(f.baseline, float | None)
        assert all(t in range(1, 6) for t in f.tiers)
        text = json.dumps(f.detail)
        assert len(text) < 400
        for value in f.detail.values():
            assert isinstance(value, str | int | float | list), value
            assert not isinstance(value, list) or all(isinstance(v, str | int | float) for v in value)
        assert not any(rid in text or rid in f.key for rid in request_ids)


def test_rules_are_data_one_threshold_changes_the_outcome(year):
    events, peers = year
    assert detect(events, now=YEAR_END, peers=peers, rules=copy.deepcopy(DEFAULT_RULES)) == []
    lower = copy.deepcopy(DEFAULT_RULES)
    lower["approver_requests"]["max_objects"] = 20  # heads take a working copy now and then: now that is flagged
    found = detect(events, now=YEAR_END, peers=peers, rules=lower)
    assert {f.rule for f in found} == {"approver_requests"} and {f.user for f in found} <= set(hist.HEADS)
    now = START + dt.timedelta(days=60)
    planted = _so_far(hist.slow_insider(events, "head-1", START, days=60), now)
    off = {"accumulation": {"enabled": False}, "approver_requests": {"enabled": False}}
    assert detect(planted, now=now, peers=peers, rules=off) == []
    assert DEFAULT_RULES["approver_requests"]["max_objects"] == 100  # detect never edits the defaults


def test_the_defaults_are_documented_and_plain_data():
    import inspect

    from imaging_lifecycle import anomalies

    json.dumps(DEFAULT_RULES)  # YAML/JSON-ready: no tuples, sets or objects
    source = inspect.getsource(anomalies)
    for section, settings in DEFAULT_RULES.items():
        for key in settings:
            block = source[source.index(f'"{section}": {{'):]
            line = next(ln for ln in block.splitlines() if ln.lstrip().startswith(f'"{key}":'))
            assert "#" in line or key == "windows", f"{section}.{key} has no comment"


def _event(**kw) -> AccessEvent:
    return AccessEvent(**{"at": START, "user": "clin-01", "kind": "working_copy", "objects": 3, **kw})


@pytest.mark.parametrize(("bad", "names"), [
    (dict(at=dt.datetime(2025, 1, 1, 9, 0)), "AccessEvent.at"),
    (dict(kind="ZZSECRET-steal"), "AccessEvent.kind"),
    (dict(objects=-1), "AccessEvent.objects"),
    (dict(tiers=(7,)), "AccessEvent.tiers"),
    (dict(user=""), "AccessEvent.user"),
])
def test_bad_events_get_a_clear_error_without_their_content(bad, names):
    with pytest.raises(ValueError, match=names) as made:  # an AccessEvent is checked when it is made ...
        _event(**bad)
    row = SimpleNamespace(**{**dataclasses.asdict(_event()), **bad})  # ... anything else shaped like one by detect
    with pytest.raises(ValueError, match=names) as detected:
        detect([_event(), row], now=YEAR_END)
    for err in (made, detected):
        assert "ZZSECRET" not in str(err.value) and "2025" not in str(err.value)


@pytest.mark.parametrize(("rules", "names"), [
    ({"spike_hours": {"floor": 10}}, "'spike_hours'"),
    ({"spike_hour": {"flor": 10}}, "spike_hour.flor"),
    ({"spike_hour": {"floor": "high"}}, "spike_hour.floor"),
    ({"spike_hour": {"floor": -1}}, "spike_hour.floor"),
    ({"emergency": {"level": "panic"}}, "emergency.level"),
    ({"calendar": {"timezone": "Mars/Olympus"}}, "calendar.timezone"),
    ({"calendar": {"holidays": ["1 October"]}}, "calendar.holidays"),
    ({"accumulation": {"windows": [{"days": 30}]}}, r"accumulation.windows\[0\]"),
    ({"denied_burst": {"count": 0}}, "denied_burst.count"),
])
def test_bad_rules_get_a_clear_error_naming_the_key(rules, names):
    with pytest.raises(ValueError, match=names):
        detect([_event()], now=YEAR_END, rules=rules)


def test_now_must_be_aware_and_later_events_are_not_seen():
    with pytest.raises(ValueError, match="now"):
        detect([], now=dt.datetime(2025, 1, 1))
    later = _event(kind="emergency", at=YEAR_END + dt.timedelta(seconds=1))
    assert detect([later], now=YEAR_END) == []
    assert [f.rule for f in detect([later], now=YEAR_END + dt.timedelta(seconds=1))] == ["emergency"]
    assert detect([], now=YEAR_END) == []
