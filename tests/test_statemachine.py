"""core.statemachine: the one checked, logged move every state machine uses."""

from __future__ import annotations

import enum
import logging

import pytest

from mta.core.statemachine import IllegalTransition, StateMachine


class Light(enum.StrEnum):
    RED = "red"
    GREEN = "green"
    OFF = "off"


TABLE = {Light.RED: frozenset({Light.GREEN, Light.RED}), Light.GREEN: frozenset({Light.RED}),
         Light.OFF: frozenset()}


def test_allowed_moves_are_logged_and_returned(caplog):
    m = StateMachine("light", TABLE, logging.getLogger("t.sm"))
    caplog.set_level(logging.INFO)
    assert m.move(Light.RED, Light.GREEN, "corner") is Light.GREEN
    assert "event=transition machine=light subject=corner from=red to=green" in caplog.text
    caplog.clear()
    assert m.move(Light.RED, Light.RED, "corner") is Light.RED     # allowed self-move: silent
    assert caplog.text == ""
    assert m.can(Light.GREEN, Light.RED) and not m.can(Light.OFF, Light.RED)
    assert Light.RED == "red" and f"{Light.RED}" == "red"          # stored as its string


def test_illegal_moves_raise_naming_the_move():
    m = StateMachine("light", TABLE, logging.getLogger("t.sm"))
    with pytest.raises(IllegalTransition, match=r"light corner: illegal move off -> red"):
        m.move(Light.OFF, Light.RED, "corner")
    assert isinstance(IllegalTransition("x"), ValueError)


def test_a_bad_table_is_refused_when_built():
    with pytest.raises(ValueError, match="no row"):
        StateMachine("light", {Light.RED: frozenset()}, logging.getLogger("t.sm"))
    with pytest.raises(ValueError, match="are not Light"):
        StateMachine("light", {**TABLE, Light.OFF: frozenset({"red"})}, logging.getLogger("t"))
