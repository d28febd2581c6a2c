"""core.cases: one way to parse case ids, order them and build their public links."""

from __future__ import annotations

import pytest

from namus_edge.core.cases import CaseIdError, case_link_for, case_sort_key, is_case_id, parse_case_id


@pytest.mark.parametrize(
    ("given", "expected"),
    [("MP1358", ("MP", 1358)), ("UP2336", ("UP", 2336)), ("UCP137669", ("UCP", 137669))],
)
def test_parse_case_id(given: str, expected: tuple[str, int]) -> None:
    assert parse_case_id(given) == expected
    assert is_case_id(given)


@pytest.mark.parametrize("bad", ["", "MP", "mp12", "XP12", "MP12a", " MP12", "UCP-1"])
def test_parse_case_id_refuses_and_names_the_value(bad: str) -> None:
    assert not is_case_id(bad)
    with pytest.raises(CaseIdError, match=repr(bad).replace("[", r"\[")):
        parse_case_id(bad)


def test_case_link_for_matches_the_records_link_format() -> None:
    # the pipeline's fallback link and the ingest link are the same function now
    assert case_link_for("MP1358") == "https://www.namus.gov/MissingPersons/Case#/1358"
    assert case_link_for("UP45", site="https://example.org/") == "https://example.org/UnidentifiedPersons/Case#/45"


def test_case_sort_key_orders_by_set_then_number_and_puts_garbage_last() -> None:
    ids = ["UP2", "MP10", "junk", "UCP1", "MP2"]
    assert sorted(ids, key=case_sort_key) == ["MP2", "MP10", "UP2", "UCP1", "junk"]
