"""Announcing dead letters to the live pages never holds the caller: a layer that stops answering is given up."""

from __future__ import annotations

import asyncio
import logging

import pytest

import busapp.live
from busapp.actions.dead_letters import dead_letter_create
from busapp.live import letters_announce
from busapp.models import Source, Topic

pytestmark = pytest.mark.usefixtures("demo", "bus")


class _SilentLayer:
    """A Channels layer whose Redis stopped answering: every send waits for ever, and says when it is given up."""

    def __init__(self) -> None:
        self.given_up = 0

    async def group_send(self, group: str, message: dict) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.given_up += 1
            raise


def test_a_layer_that_stops_answering_is_given_up_and_logged(monkeypatch, caplog) -> None:
    letter = dead_letter_create(
        topic=Topic.objects.get(name="tax-policy"), raw="{}", errors=[], source=Source.CLI, actor="cli:test"
    )
    layer = _SilentLayer()
    monkeypatch.setattr(busapp.live, "get_channel_layer", lambda: layer)
    monkeypatch.setattr(busapp.live, "ANNOUNCE_SECONDS", 0.05)

    with caplog.at_level(logging.ERROR, logger="busapp.live"):
        letters_announce([letter])

    assert layer.given_up == 1
    assert "1 dead letter(s) not shown live; /dlq/ has them" in caplog.text
