from __future__ import annotations

from datetime import timedelta

import pytest

from filewallball.domain.access import AccessService, Auditor
from filewallball.domain.errors import (
    AccessDenied,
    InvalidRequest,
    ResourceNotFound,
    Unauthenticated,
)
from filewallball.domain.policies import Quota
from filewallball.domain.security import (
    IpPolicy,
    IpRule,
    Principal,
    Role,
    RuleAction,
    parse_network,
)
from tests.fakes import FakeAuditLog, FakeClock, FakeIpRuleRepository, FakeKeyRepository

SECRET = b"s" * 32
OPERATOR = Principal.system("test")


@pytest.fixture
def keys() -> FakeKeyRepository:
    return FakeKeyRepository()


@pytest.fixture
def audit() -> FakeAuditLog:
    return FakeAuditLog()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def access(keys: FakeKeyRepository, audit: FakeAuditLog, clock: FakeClock) -> AccessService:
    return AccessService(
        keys=keys,
        rules=FakeIpRuleRepository(),
        auditor=Auditor(log=audit, clock=clock),
        clock=clock,
        server_secret=SECRET,
        role_quotas={Role.UPLOADER: Quota(bytes=1000, files=10)},
    )


async def test_keys_are_stored_as_keyed_hashes_only(
    access: AccessService, keys: FakeKeyRepository
) -> None:
    key, secret = await access.create_key(OPERATOR, name="ci", role=Role.UPLOADER)
    stored = keys.keys[key.id]
    assert secret not in repr(stored)
    assert stored.secret_hash != secret
    principal = await access.authenticate(secret, client_ip="127.0.0.1", request_id="r1")
    assert principal.key_id == key.id
    assert principal.owner == "ci"
    assert principal.request_id == "r1"
    assert (principal.quota_bytes, principal.quota_files) == (1000, 10)  # the role's defaults


@pytest.mark.parametrize(
    "presented", [None, "", "garbage", "fwb_short_x", "fwb_" + "a" * 12 + "_" + "b" * 43]
)
async def test_unknown_keys_are_unauthenticated(
    access: AccessService, presented: str | None
) -> None:
    with pytest.raises(Unauthenticated):
        await access.authenticate(presented, client_ip=None, request_id=None)


async def test_wrong_secret_with_a_known_id(access: AccessService) -> None:
    _, secret = await access.create_key(OPERATOR, name="ci", role=Role.READER)
    with pytest.raises(Unauthenticated):
        await access.authenticate(secret[:-4] + "AAAA", client_ip=None, request_id=None)


async def test_revoked_and_expired_keys(access: AccessService, clock: FakeClock) -> None:
    key, secret = await access.create_key(OPERATOR, name="a", role=Role.READER)
    await access.revoke_key(OPERATOR, key.id)
    with pytest.raises(Unauthenticated):
        await access.authenticate(secret, client_ip=None, request_id=None)
    soon = clock.now() + timedelta(seconds=10)
    _, expiring = await access.create_key(OPERATOR, name="b", role=Role.READER, expires_at=soon)
    await access.authenticate(expiring, client_ip=None, request_id=None)
    for _ in range(10):
        clock.now()  # the fake clock moves a second per read
    with pytest.raises(Unauthenticated):
        await access.authenticate(expiring, client_ip=None, request_id=None)
    with pytest.raises(ResourceNotFound):
        await access.revoke_key(OPERATOR, "nope")


async def test_key_cidrs(access: AccessService) -> None:
    _, secret = await access.create_key(
        OPERATOR, name="a", role=Role.READER, allowed_cidrs=("10.0.0.0/8", "::1")
    )
    await access.authenticate(secret, client_ip="10.9.8.7", request_id=None)
    await access.authenticate(secret, client_ip="::1", request_id=None)
    await access.authenticate(secret, client_ip="::ffff:10.1.1.1", request_id=None)  # IPv4-mapped
    with pytest.raises(AccessDenied):
        await access.authenticate(secret, client_ip="192.168.1.1", request_id=None)
    with pytest.raises(InvalidRequest):
        await access.create_key(OPERATOR, name="b", role=Role.READER, allowed_cidrs=("not-a-cidr",))


async def test_only_admins_manage_keys_and_rules(access: AccessService) -> None:
    _, secret = await access.create_key(OPERATOR, name="u", role=Role.UPLOADER)
    uploader = await access.authenticate(secret, client_ip=None, request_id=None)
    with pytest.raises(AccessDenied):
        await access.create_key(uploader, name="x", role=Role.ADMIN)
    with pytest.raises(AccessDenied):
        await access.list_keys(uploader, limit=10, after=None)
    with pytest.raises(AccessDenied):
        await access.add_ip_rule(uploader, cidr="10.0.0.0/8", action=RuleAction.DENY, note=None)


async def test_ip_rules_take_effect_in_this_process_at_once(access: AccessService) -> None:
    await access.check_address("10.1.1.1")
    rule = await access.add_ip_rule(OPERATOR, cidr="10.0.0.0/8", action=RuleAction.DENY, note="lab")
    with pytest.raises(AccessDenied):
        await access.check_address("10.1.1.1")
    await access.check_address("192.0.2.1")
    await access.remove_ip_rule(OPERATOR, rule.id)
    await access.check_address("10.1.1.1")


def test_ip_policy_deny_wins_and_allow_restricts() -> None:
    rules = [
        IpRule("1", "10.0.0.0/8", RuleAction.ALLOW, None, FakeClock().now()),
        IpRule("2", "10.6.0.0/16", RuleAction.DENY, None, FakeClock().now()),
    ]
    policy = IpPolicy.of(rules, allow=("2001:db8::/32",))
    assert policy.permits(parse_network("10.1.2.3/32").network_address)
    assert not policy.permits(parse_network("10.6.2.3/32").network_address)
    assert not policy.permits(parse_network("192.0.2.1/32").network_address)
    assert policy.permits(parse_network("2001:db8::5/128").network_address)
    assert not policy.permits(None)
    assert IpPolicy().permits(None)


async def test_bootstrap_once(access: AccessService, audit: FakeAuditLog) -> None:
    secret = await access.bootstrap(preset=None)
    assert secret is not None
    admin = await access.authenticate(secret, client_ip=None, request_id=None)
    assert admin.role is Role.ADMIN
    assert await access.bootstrap(preset=None) is None
    assert [e.action for e in audit.entries] == ["key.bootstrap"]


async def test_bootstrap_rejects_a_malformed_preset(access: AccessService) -> None:
    with pytest.raises(InvalidRequest):
        await access.bootstrap(preset="too-short")
