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
