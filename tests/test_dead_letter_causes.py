"""Dead letters' causes: what the workbench groups by, for new letters and for letters kept before causes."""

from __future__ import annotations

import importlib
import json

import pytest
from django.apps import apps

from busapp.actions.dead_letters import dead_letter_create
from busapp.dead_letter_causes import Cause, cause_of, cause_path
from busapp.models import DeadLetter, Source, Topic

pytestmark = pytest.mark.usefixtures("demo", "bus")


def test_array_positions_are_any_position_and_other_segments_stay():
    assert cause_path("/payload/brackets/12/rate") == "/payload/brackets/*/rate"
    assert cause_path("/payload/year2027/x") == "/payload/year2027/x"
    assert cause_path("") == ""


def test_the_first_error_decides_and_a_letter_without_errors_says_so():
    errors = [{"path": "/payload/a/0", "message": "must be 0 or more"}, {"path": "/payload/b", "message": "x"}]
    assert cause_of(errors, "tax_policy.updated") == Cause("tax_policy.updated", "/payload/a/*", "must be 0 or more")
    assert cause_of([], 5) == Cause("", "", "(no error recorded)")


def _kept_before_causes(raw: str, message: str) -> DeadLetter:
    """A dead letter as the database held it before migration 0016: no cause, jsonschema's message."""
    letter = dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"),
        raw=raw,
        errors=[{"path": "/payload/standard_deduction", "message": message}],
        source=Source.EXTERNAL,
        actor="external",
    )
    DeadLetter.objects.filter(pk=letter.pk).update(event_type_name="", cause_path="", cause_message="")
    return letter


def test_the_migration_gives_letters_kept_before_it_their_cause_in_plain_words():
    migration = importlib.import_module("busapp.migrations.0016_dead_letter_cause")
    body = json.dumps({"type": "tax_policy.updated", "payload": {"standard_deduction": -5}})
    old = [
        _kept_before_causes(body, "-5 is less than the minimum of 0"),
        _kept_before_causes(body, "-14600 is less than the minimum of 0"),
        _kept_before_causes(body, "'15,000' is not of type 'number', 'null'"),
        _kept_before_causes(body, "'x' is not one of ['single', 'married_joint']"),
        _kept_before_causes("not json", "something the bus said"),
    ]

    migration.backfill_causes(apps, None)

    causes = {
        letter.pk: (letter.event_type_name, letter.cause_path, letter.cause_message)
        for letter in DeadLetter.objects.all()
    }
    deduction = ("tax_policy.updated", "/payload/standard_deduction")
    assert [causes[letter.pk] for letter in old] == [
        (*deduction, "must be 0 or more"),
        (*deduction, "must be 0 or more"),
        (*deduction, "must be a number or empty (null)"),
        (*deduction, 'must be one of: "single", "married_joint"'),
        ("", "/payload/standard_deduction", "something the bus said"),
    ]
