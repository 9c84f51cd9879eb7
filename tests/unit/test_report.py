"""Secrets that never show, the summary line, and JSON log lines."""

from __future__ import annotations

import copy
import io
import json
import logging
import operator
import pickle
import re
from collections.abc import Iterator

import pytest

from nomad_pginit.errors import ExitCode, PostgresUnavailable
from nomad_pginit.outcome import Outcome, ServiceOutcome, Status
from nomad_pginit.plan import CreateRole, GrantDatabase
from nomad_pginit.report import JsonFormatter, PlainFormatter, log_summary, summary_line
from nomad_pginit.secret import MASK, Secret
from nomad_pginit.spec import Service

PASSWORD_TEXT = "pw-marker-hunter2"


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"test_report.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


@pytest.fixture
def plain_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger, stream = capture(PlainFormatter())
    yield logger, stream
    logger.handlers.clear()


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    logger, stream = capture(JsonFormatter())
    yield logger, stream
    logger.handlers.clear()


# --- Secret -------------------------------------------------------------------------


def test_secret_reveal() -> None:
    assert Secret(PASSWORD_TEXT).reveal() == PASSWORD_TEXT


def test_secret_formatting_never_reveals() -> None:
    secret = Secret(PASSWORD_TEXT)
    texts = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret!s}",
        "%s %r" % (secret, secret),  # noqa: UP031 - the old style is what logging uses
        "{} {!r}".format(secret, secret),  # noqa: UP032
        repr([secret]),
        repr({"password": secret}),
        str((secret,)),
    ]
    for text in texts:
        assert PASSWORD_TEXT not in text
        assert MASK in text
    assert str(secret) == MASK
    assert repr(secret) == f"Secret({MASK})"


def test_secret_in_dataclass_repr() -> None:
    service = Service("gitea", "gitea", "gitea", password=Secret(PASSWORD_TEXT))
    assert PASSWORD_TEXT not in repr(service)
    assert PASSWORD_TEXT not in repr(CreateRole("gitea", "gitea", Secret(PASSWORD_TEXT)))


def test_secret_in_log_lines(plain_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = plain_log
    secret = Secret(PASSWORD_TEXT)
    logger.info("password %s", secret)
    logger.info("password %r", secret)
    logger.info("state %s", {"password": secret})
    logger.info(f"password {secret}")
    try:
        raise ValueError(secret)
    except ValueError:
        logger.exception("failed with %s", secret)
    output = stream.getvalue()
    assert output.count(MASK) >= 6
    assert PASSWORD_TEXT not in output


def test_secret_in_json_log_lines(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.info("password %s", Secret(PASSWORD_TEXT), extra={"service": "gitea"})
    output = stream.getvalue()
    assert PASSWORD_TEXT not in output
    assert json.loads(output)["message"] == f"password {MASK}"


def test_secret_equality_and_hash() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert operator.eq("a", Secret("a")) is False  # str.__eq__ first, then Secret's
    assert hash(Secret("a")) == hash(Secret("a"))
    assert len({Secret("a"), Secret("a"), Secret("b")}) == 2


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_secret_cannot_be_pickled(protocol: int) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Secret(PASSWORD_TEXT), protocol=protocol)


def test_object_holding_a_secret_cannot_be_pickled() -> None:
    service = Service("gitea", "gitea", "gitea", password=Secret(PASSWORD_TEXT))
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(service)
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.deepcopy(Secret(PASSWORD_TEXT))


def test_secret_has_no_instance_dict() -> None:
    secret = Secret(PASSWORD_TEXT)
    assert not hasattr(secret, "__dict__")
    assert PASSWORD_TEXT not in repr(dir(secret))


# --- summary_line -------------------------------------------------------------------


def service(name: str) -> Service:
    return Service(name, name, name)


def created(name: str) -> ServiceOutcome:
    return ServiceOutcome(service(name), actions=[CreateRole(name, name, Secret("x"))])


def updated(name: str) -> ServiceOutcome:
    return ServiceOutcome(service(name), actions=[GrantDatabase(name, name, name)])


def unchanged(name: str) -> ServiceOutcome:
    return ServiceOutcome(service(name))


def failed(name: str) -> ServiceOutcome:
    return ServiceOutcome(service(name), error="Vault denied reading it (403)")


def test_service_outcome_status() -> None:
    assert created("a").status is Status.CREATED
    assert updated("a").status is Status.UPDATED
    assert unchanged("a").status is Status.UNCHANGED
    assert failed("a").status is Status.FAILED
    pending = ServiceOutcome(service("a"), actions=[GrantDatabase("a", "a", "a")], applied=False)
    assert pending.status is Status.PENDING
    failed_after_actions = created("a")
    failed_after_actions.error = "connection lost"
    assert failed_after_actions.status is Status.FAILED


def test_summary_all_ok() -> None:
    outcome = Outcome([created("gitea"), updated("wiki"), unchanged("kuma")], applied=True)
    line = summary_line(outcome)
    assert line.startswith("summary: ok")
    assert "3 services in sync" in line
    assert "1 created" in line
    assert "1 updated" in line
    assert "1 unchanged" in line
    assert "failed" not in line
    assert outcome.exit_code is ExitCode.OK


def test_summary_all_unchanged_still_counts() -> None:
    line = summary_line(Outcome([unchanged("gitea"), unchanged("wiki")], applied=True))
    assert line.startswith("summary: ok")
    assert "2 unchanged" in line


def test_summary_failed_names_failed_services() -> None:
    outcome = Outcome(
        [created("gitea"), failed("wiki"), unchanged("kuma"), failed("uptime-kuma")],
        applied=True,
    )
    line = summary_line(outcome)
    assert line.startswith("summary: failed")
    assert "2 of 4 services failed" in line
    names = re.search(r"failed \((.*?)\)", line)
    assert names is not None
    assert names.group(1).split(", ") == ["wiki", "uptime-kuma"]
    assert "1 created" in line
    assert "1 unchanged" in line
    assert outcome.exit_code is ExitCode.SERVICE_FAILED


def test_summary_pending_for_plan() -> None:
    pending = ServiceOutcome(
        service("gitea"), actions=[GrantDatabase("g", "g", "g")], applied=False
    )
    line = summary_line(Outcome([pending, unchanged("wiki")], applied=False))
    assert line.startswith("summary: changes pending for 1 of 2 services")


def test_fatal_outcome_exit_code() -> None:
    outcome = Outcome(
        [ServiceOutcome(service("gitea"), error="not finished: gone")],
        applied=True,
        fatal=PostgresUnavailable("gone"),
    )
    assert outcome.exit_code is ExitCode.POSTGRES
    assert summary_line(outcome).startswith("summary: failed")


# --- JSON log lines -----------------------------------------------------------------

TIME_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def test_json_line_has_time_level_message_and_extra_fields(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.info(
        "%s: role %s created",
        "gitea",
        "gitea",
        extra={"service": "gitea", "result": "created", "event": "action"},
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert TIME_FORMAT.match(entry["time"])
    assert entry["level"] == "info"
    assert entry["message"] == "gitea: role gitea created"
    assert entry["service"] == "gitea"
    assert entry["result"] == "created"
    assert entry["event"] == "action"
    assert "traceback" not in entry
    assert "counts" not in entry


def test_json_line_without_extra_fields(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    logger.warning("plain message")
    entry = json.loads(stream.getvalue())
    assert set(entry) == {"time", "level", "message"}
    assert entry["level"] == "warning"


def test_json_line_keeps_unicode_and_escapes_newlines(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_log
    logger.info("\u65e5\u672c\u8a9e\nsecond line", extra={"service": "\u65e5\u672c\u8a9e"})
    output = stream.getvalue()
    assert output.count("\n") == 1  # one JSON object per line
    entry = json.loads(output)
    assert entry["message"] == "\u65e5\u672c\u8a9e\nsecond line"
    assert "\u65e5\u672c\u8a9e" in output


def test_json_line_carries_traceback(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("it failed")
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "error"
    assert "RuntimeError: boom" in entry["traceback"]


def test_log_summary_as_json(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = json_log
    outcome = Outcome([created("gitea"), failed("wiki")], applied=True)
    log_summary(outcome, logger)
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "error"
    assert entry["message"] == summary_line(outcome)
    assert entry["event"] == "summary"
    assert entry["status"] == "failed"
    assert entry["failed"] == ["wiki"]
    assert entry["counts"]["created"] == 1
    assert entry["counts"]["failed"] == 1


def test_plain_line_format(plain_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = plain_log
    logger.info("gitea: unchanged")
    assert re.fullmatch(
        r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z INFO gitea: unchanged\n", stream.getvalue()
    )
