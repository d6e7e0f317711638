"""The FWB_S3_* settings: what they accept and refuse, and the AWS keys' placeholder check."""

from __future__ import annotations

import pytest

from filewallball.settings import PLACEHOLDER_MARK, Settings, SettingsError, load_settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FWB_S3_BUCKET", "Upper_Case"),
        ("FWB_S3_BUCKET", "ab"),
        ("FWB_S3_BUCKET", "-starts-with-dash"),
        ("FWB_S3_BUCKET", "two..dots"),
        ("FWB_S3_BUCKET", "192.168.1.10"),
        ("FWB_S3_ENDPOINT_URL", "minio:9000"),
        ("FWB_S3_ENDPOINT_URL", "http://minio:9000/some/path"),
        ("FWB_S3_PREFIX", "/leading"),
        ("FWB_S3_PREFIX", "no-slash"),
        ("FWB_S3_PREFIX", "a//b/"),
        ("FWB_S3_PART_SIZE_BYTES", "1048576"),
        ("FWB_S3_ADDRESSING_STYLE", "sideways"),
    ],
)
def test_invalid_s3_settings_name_their_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert variable in str(raised.value)


def test_valid_s3_settings() -> None:
    settings = Settings(
        s3_bucket="files.example-1",
        s3_endpoint_url="https://s3.example.com:9000/",
        s3_prefix="",
    )
    assert settings.uses_s3
    assert settings.s3_endpoint_url == "https://s3.example.com:9000"
    assert not Settings().uses_s3
    assert not Settings(s3_bucket="").uses_s3  # empty: unset, as FWB_REDIS_URL=""


def test_placeholder_aws_keys_are_refused_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{PLACEHOLDER_MARK}-aws")
    Settings(s3_bucket="files")  # dev: fine
    Settings(environment="prod")  # no bucket: the AWS keys are not ours to check
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY is the repository's placeholder"):
        Settings(environment="prod", s3_bucket="files")
