"""A run that lost its connection starts over on the new primary: what it did stays,
what it judged (failures, leftovers) is judged again."""

from __future__ import annotations

import logging

import pytest

from nomad_pginit.errors import ConnectionLost
from nomad_pginit.outcome import Outcome, ServiceOutcome, Status
from nomad_pginit.plan import CreateRole, DisableRole
from nomad_pginit.provision import _report, _start_over
from nomad_pginit.secret import Secret
from nomad_pginit.spec import Service


def test_start_over_keeps_what_was_done_and_forgets_what_was_judged() -> None:
    created = CreateRole("gitea", "gitea", Secret("pw-start-over"))
    gitea = ServiceOutcome(Service("gitea", "gitea", "gitea"), actions=[created], finished=True)
    grafana = ServiceOutcome(Service("grafana", "grafana", "grafana"), error="lock timeout")
    result = Outcome(
        [gitea, grafana],
        applied=True,
        fatal=ConnectionLost("lost the connection"),
        leftovers=['leftover role "old" ...'],
        leftover_actions=[DisableRole("old", "old")],
        leftover_failures=["cannot set leftover role NOLOGIN: lock timeout"],
        leftovers_unfinished=[DisableRole("older", "older")],
    )

    _start_over(result, {"gitea": gitea, "grafana": grafana}, "db1:5432", "db2:5432")

    assert result.fatal is None
    assert result.leftovers == []
    assert result.leftover_actions == []
    assert result.leftover_failures == []
    assert result.leftovers_unfinished == []
    assert gitea.actions == [created]
    assert not gitea.finished
    assert grafana.error is None
    # Done again on the new primary: recorded once, still "created".
    gitea.record(CreateRole("gitea", "gitea", Secret("pw-start-over")))
    assert len(gitea.actions) == 1
    assert gitea.status == Status.CREATED


def test_unchanged_is_said_once_whatever_the_attempts(caplog: pytest.LogCaptureFixture) -> None:
    outcome = ServiceOutcome(Service("gitea", "gitea", "gitea"), finished=True)
    with caplog.at_level(logging.INFO):
        _report(outcome)
        outcome.start_over()
        _report(outcome)
    assert [record.getMessage() for record in caplog.records] == ["gitea: unchanged"]
