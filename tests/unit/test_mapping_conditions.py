"""The ``when`` language: date conditions measured from the extraction time, and all/any/not."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from airflow_ascora_provider.destinations.freshsales.plugin import FreshsalesDestination
from airflow_ascora_provider.mapping.spec import ConditionNeedsTime, MappingError, load_mapping

EXTRACTED = dt.datetime(2026, 6, 1, 9, 30, tzinfo=dt.UTC)


def _job_maps(deal_when, task_when):
    return {"destination": "freshsales", "maps": {
        "deal": {"source": "job", "target": "deal", "when": deal_when, "fields": {"name": "name"}},
        "job_task": {"source": "job", "target": "task", "when": task_when, "fields": {"title": "name"}},
    }}


def _job(status, days_before=None, **extra):
    completed = None if days_before is None else EXTRACTED - dt.timedelta(days=days_before)
    return {"id": "j1", "status": status, "completed_date": completed, **extra}


@pytest.fixture(scope="module")
def freshsales():
    return load_mapping(FreshsalesDestination.default_mapping)


@pytest.mark.parametrize(("job", "target"), [
    (_job("Closed", 100), "job_task"),
    (_job("Closed", 90.5), "job_task"),
    (_job("Closed", 89.9), "deal"),
    (_job("Closed", 10), "deal"),
    (_job("Closed", None), "deal"),  # no completed date: not known to be historical
    (_job("Booked", 400), "deal"),  # an old job that is not closed is still open business
    (_job("Completed", 200), "deal"),
])
def test_freshsales_jobs_split_into_deals_and_tasks_with_no_job_in_both_or_neither(freshsales, job, target):
    taken = [name for name in ("deal", "job_task") if freshsales.maps[name].when.matches(job, EXTRACTED)]
    assert taken == [target]


def test_age_is_measured_from_the_extraction_not_from_now(freshsales):
    task = freshsales.maps["job_task"].when
    closed_in_2020 = {"status": "Closed", "completed_date": dt.datetime(2020, 3, 1, tzinfo=dt.UTC)}
    assert task.matches(closed_in_2020, dt.datetime(2020, 8, 1, tzinfo=dt.UTC))
    assert not task.matches(closed_in_2020, dt.datetime(2020, 4, 1, tzinfo=dt.UTC))
    with pytest.raises(ConditionNeedsTime, match="completed_date older_than_days 90"):
        task.matches(closed_in_2020)


def test_dates_text_and_naive_values_are_compared_as_utc():
    mapping = load_mapping(_job_maps({"field": "completed_date", "newer_than_days": 30},
                                     {"field": "completed_date", "older_than_days": 30}))
    newer, older = mapping.maps["deal"].when, mapping.maps["job_task"].when
    as_text = "2026-04-01T00:00:00+00:00"
    assert older.matches({"completed_date": as_text}, EXTRACTED)
    assert newer.matches({"completed_date": dt.date(2026, 5, 20)}, "2026-06-01T09:30:00+00:00")
    assert not older.matches({"completed_date": dt.datetime(2026, 5, 20)}, EXTRACTED)
    assert not newer.matches({"completed_date": None}, EXTRACTED) and not older.matches({}, EXTRACTED)


def test_threshold_is_the_mappings_value(freshsales):
    document = yaml.safe_load(FreshsalesDestination.default_mapping.read_text())
    text = yaml.safe_dump(document).replace("older_than_days: 90", "older_than_days: 365")
    year = load_mapping(text)
    job = _job("Closed", 200)
    assert freshsales.maps["job_task"].when.matches(job, EXTRACTED)
    assert not year.maps["job_task"].when.matches(job, EXTRACTED)
    assert year.maps["deal"].when.matches(job, EXTRACTED)
    assert year.hash != freshsales.hash  # a new threshold is a new mapping to approve


def test_condition_fields_count_as_used_and_describe_themselves(freshsales):
    deal = freshsales.maps["deal"]
    assert {"status", "completed_date"} <= deal.used_source_fields()
    assert deal.when.describe() == ("not ((status in ('Closed',)) and "
                                    "(completed_date older_than 90 days before extraction))")


@pytest.mark.parametrize(("when", "problem"), [
    ({"field": "completed_date", "older_than_days": "ninety"},
     "maps.job_task.when.older_than_days: must be a whole number of days (0 or more), got 'ninety'"),
    ({"field": "completed_date", "older_than_days": -1},
     "maps.job_task.when.older_than_days: must be a whole number of days (0 or more), got -1"),
    ({"field": "status", "older_than_days": 90},
     "maps.job_task.when.older_than_days: job.status is string, not a date or datetime"),
    ({"all": [{"field": "status", "in": ["Closed"]}, {"field": "closed_on", "older_than_days": 90}]},
     "maps.job_task.when.all[1]: job has no field 'closed_on'"),
    ({"all": []}, "maps.job_task.when.all: needs a list of conditions"),
    ({"not": None}, "maps.job_task.when.not: needs a condition"),
    ({"not": {"older_than_days": 90}}, "maps.job_task.when.not: 'when' needs a field"),
])
def test_bad_conditions_are_named_by_place(when, problem):
    with pytest.raises(MappingError) as err:
        load_mapping(_job_maps(None, when))
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_any_takes_a_record_when_one_part_matches():
    mapping = load_mapping(_job_maps({"any": [{"field": "status", "in": ["Booked"]},
                                              {"field": "completed_date", "newer_than_days": 7}]}, None))
    when = mapping.maps["deal"].when
    assert when.matches(_job("Booked", 400), EXTRACTED) and when.matches(_job("Closed", 3), EXTRACTED)
    assert not when.matches(_job("Closed", 30), EXTRACTED)


def test_a_pinned_reference_time_replaces_the_extraction_time_for_every_snapshot():
    document = _job_maps({"not": {"field": "completed_date", "older_than_days": 90}},
                         {"field": "completed_date", "older_than_days": 90})
    unpinned = load_mapping(document)
    assert unpinned.condition_time("2026-06-01T09:30:00+00:00") == EXTRACTED
    pinned = load_mapping(document | {"reference_time": dt.date(2026, 3, 1)})
    delta_extraction = "2026-06-08T00:00:00+00:00"
    as_of = pinned.condition_time(delta_extraction)
    assert as_of == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    job = {"completed_date": dt.datetime(2026, 2, 1, tzinfo=dt.UTC)}  # 120 days before the delta's extraction
    assert pinned.maps["deal"].when.matches(job, as_of)
    assert unpinned.maps["job_task"].when.matches(job, unpinned.condition_time(delta_extraction))
    with pytest.raises(MappingError, match="reference_time: not a date or ISO date-time: 'soon'"):
        load_mapping(document | {"reference_time": "soon"})
