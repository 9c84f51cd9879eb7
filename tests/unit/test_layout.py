"""The layout's own rules, which a new module or command must follow too."""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

import nomad_pginit
from nomad_pginit import cli
from nomad_pginit.nomad import TaskEvent, TaskState

ROOT = Path(__file__).resolve().parents[2]


def test_the_core_contract_names_every_module_but_the_command_line() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [
        contract
        for contract in config["tool"]["importlinter"]["contracts"]
        if contract["name"] == "the core never imports the commands"
    ]
    modules = {
        f"nomad_pginit.{info.name}"
        for info in pkgutil.iter_modules(nomad_pginit.__path__)
        if info.name not in ("cli", "commands", "__main__")
    }
    assert set(contract["source_modules"]) == modules


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_each_command_module_declares_what_cli_needs(name: str) -> None:
    module = importlib.import_module(f"nomad_pginit.commands.{cli.COMMANDS[name]}")
    assert isinstance(module.HELP, str)
    assert module.HELP.strip()
    assert isinstance(module.DESCRIPTION, str)
    assert "Exit codes" in module.DESCRIPTION or name in ("snippet", "render")
    assert callable(module.add_arguments)
    assert callable(module.main)
    # Only run's summary must end the log even after a fatal error (the task's log).
    assert getattr(module, "SUMMARY_ON_ERROR", False) is (name == "run")


def test_the_whole_parser_builds_and_each_command_parses() -> None:
    parser = cli.build_parser()
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0


def _event(kind: str, time: int, exit_code: int | None = None, reason: str = "") -> TaskEvent:
    details = {"restart_reason": reason} if reason else {}
    return TaskEvent(type=kind, time=time, exit_code=exit_code, message="", details=details)


def _task(*events: TaskEvent, finished_at: str | None = None) -> TaskState:
    return TaskState(
        state="running",
        failed=False,
        restarts=0,
        started_at="t0",
        finished_at=finished_at,
        events=events,
    )


def test_task_state_knows_a_later_run_and_a_failed_attempt() -> None:
    first = _task(_event("Terminated", 10, 0), finished_at="t1")
    assert first.last_exit_time == 10
    again = _task(*first.events, _event("Terminated", 20, 0), finished_at="t2")
    assert again.ran_after(first)
    assert not first.ran_after(first)
    assert first.ran_after(None)
    failed = _task(*first.events, _event("Terminated", 20, 1))
    assert failed.failed_after(first)
    assert not failed.failed_after(failed)


def test_an_exit_after_a_requested_kill_is_no_failure() -> None:
    killed = _task(_event("Restart Signaled", 5), _event("Terminated", 6, 137))
    assert not killed.failed_after(None)


def test_only_restarts_by_the_policy_count_as_nomads() -> None:
    asked = _event("Restarting", 5)
    by_policy = _event("Restarting", 9, reason="Restart within policy")
    assert _task(asked).last_policy_restart is None
    assert _task(asked, by_policy, _event("Restarting", 12)).last_policy_restart == by_policy
