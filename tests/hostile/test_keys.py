"""API keys and IP rules under hostile input: a 401 tells nothing about which key ids exist;
names, owners and notes with control characters are refused (HTTP and CLI), not stored."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from filewallball.entrypoints.cli import app
from filewallball.entrypoints.logs import configure_logging
from tests.integration.conftest import ADMIN_KEY
from tests.integration.test_http_files import assert_problem

# NUL (PostgreSQL cannot store it), other C0 controls, DEL, C1, line separators, bidi overrides.
CONTROLS = [
    "a\x00b",
    "\x00",
    "a\x01b",
    "tab\there",
    "new\nline",
    "del\x7f",
    "c1\x85",
    "ls\u2028",
    "rtl\u202egpj.exe",
]


async def test_a_401_does_not_tell_an_unknown_key_id_from_a_wrong_secret(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post("/admin/keys", json={"name": "real", "role": "reader"})
    assert created.status_code == 201, created.text
    real = created.json()["key"]
    wrong_secret = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    unknown_id = "fwb_000000000000_" + real.split("_", 2)[2]
    answers = []
    for presented in (wrong_secret, unknown_id, "fwb_garbage", ADMIN_KEY[:-1] + "B"):
        response = await client.get("/files", headers={"authorization": f"Bearer {presented}"})
        body = assert_problem(response, 401, "unauthenticated")
        answers.append(body["detail"])
    assert len(set(answers)) == 1, answers


@pytest.mark.parametrize("text", CONTROLS)
@pytest.mark.parametrize("field", ["name", "owner"])
async def test_control_characters_in_a_key_name_or_owner_are_refused(
    client: httpx.AsyncClient, field: str, text: str
) -> None:
    body = {"name": "ok", "role": "reader", field: text}
    response = await client.post("/admin/keys", json=body)
    assert_problem(response, 400, f"invalid_{field}")
    listed = await client.get("/admin/keys")
    assert [k["name"] for k in listed.json()["items"]] == ["bootstrap-admin"]


def _env(backend: dict[str, Any]) -> dict[str, str | None]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FWB_")}
    env.update({f"FWB_{name.upper()}": str(value) for name, value in backend.items()})
    return env


# NUL cannot come through a real argv, an ANSI escape (clear the screen of `keys list`) can.
@pytest.mark.parametrize("text", ["a\x00b", "a\x1b[2Jb"])
@pytest.mark.parametrize("option", ["--name", "--owner"])
def test_the_cli_refuses_control_characters_too(
    backend: dict[str, Any], option: str, text: str
) -> None:
    runner, env = CliRunner(), _env(backend)
    args = ["keys", "create", "--name", "ok", "--role", "reader"]
    try:
        refused = runner.invoke(app, [*args, option, text], env=env)
        assert refused.exit_code == 1, refused.output
        assert "control characters" in refused.output
        created = runner.invoke(app, args, env=env)
        assert created.exit_code == 0, created.output
    finally:
        configure_logging()  # the command pointed the logs at the runner's stdout


@pytest.mark.parametrize("note", ["a\x00b", "bell\x07", "rtl\u202e"])
async def test_control_characters_in_an_ip_rule_note_are_refused(
    client: httpx.AsyncClient, note: str
) -> None:
    rule = {"cidr": "192.0.2.0/24", "action": "deny", "note": note}
    assert_problem(await client.post("/admin/ip-rules", json=rule), 400, "invalid_note")
    assert (await client.get("/admin/ip-rules")).json()["items"] == []
    multiline = {**rule, "note": "line one\n\tline two"}
    assert (await client.post("/admin/ip-rules", json=multiline)).status_code == 201
