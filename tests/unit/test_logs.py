"""Log lines: the domain's standard-library records become JSON lines with their fields."""

from __future__ import annotations

import json
import logging

import pytest

from filewallball.entrypoints.logs import configure_logging


def test_a_domain_record_is_one_json_line_with_its_extra_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    try:
        logging.getLogger("filewallball.files").warning(
            "thumbnail_job_not_queued", extra={"file_id": "abc", "reason": "redis is down"}
        )
        lines = [line for line in capsys.readouterr().out.splitlines() if line]
    finally:
        logging.getLogger().handlers = []
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "thumbnail_job_not_queued"
    assert (event["file_id"], event["reason"]) == ("abc", "redis is down")
    assert (event["level"], event["logger"]) == ("warning", "filewallball.files")
    assert "request_id" in event and "timestamp" in event


def test_console_format_is_readable_lines_for_both_paths(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import structlog

    configure_logging("info", console=True)
    try:
        structlog.get_logger("filewallball").warning("start_deferred", reason="database at db:5432")
        logging.getLogger("filewallball.files").warning("job_failed", extra={"file_id": "abc"})
        lines = [line for line in capsys.readouterr().out.splitlines() if line]
    finally:
        logging.getLogger().handlers = []
        configure_logging("info")
    assert len(lines) == 2
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert "start_deferred" in lines[0] and "reason='database at db:5432'" in lines[0]
    assert "job_failed" in lines[1] and "file_id=abc" in lines[1]


@pytest.mark.parametrize(
    ("setting", "tty", "console"),
    [("auto", True, True), ("auto", False, False), ("json", True, False), ("console", False, True)],
)
def test_log_format_auto_follows_the_terminal(
    setting: str, tty: bool, console: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import sys

    from filewallball.entrypoints.logs import console_wanted

    stream = io.StringIO()
    monkeypatch.setattr(stream, "isatty", lambda: tty)
    monkeypatch.setattr(sys, "stdout", stream)
    assert console_wanted(setting) is console
