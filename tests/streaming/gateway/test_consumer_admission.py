"""Admission through the real consumer and middleware, with real Redis (lock, cache, channel layer) and database.

Channels' WebsocketCommunicator reports close codes even where daphne would not; tests/e2e proves them through a
real daphne process.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts import keys
from accounts.models import ApiKey, Plan, ProductTier
from devstack.redis_server import RedisServer
from streaming import codes
from streaming.runtime import lock
from streaming.runtime.redis_client import redis_client
from tests.accounts.factories import make_key, make_user

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 5


def connect(application, market="options", key=None, via="header", path=None):
    headers = []
    query = ""
    if key is not None and via == "header":
        headers = [(b"authorization", f"Bearer {key}".encode())]
    elif key is not None:
        query = f"?api_key={key}"
    return WebsocketCommunicator(application, path or f"/v1/ws/{market}/{query}", headers=headers)


async def frames_until_close(communicator) -> tuple[list[dict], int]:
    """Every status event received, and the close code that ended the socket."""
    events = []
    while True:
        message = await communicator.receive_output(TIMEOUT)
        if message["type"] == "websocket.close":
            await communicator.disconnect(message.get("code", 1000))  # the server's answer to our close frame
            return events, message.get("code")
        if message["type"] == "websocket.send":
            events.extend(orjson.loads(message["text"]))


async def expect(communicator, *statuses: str) -> list[dict]:
    events = []
    for _ in statuses:
        events.extend(await communicator.receive_json_from(TIMEOUT))
    assert [event["status"] for event in events] == list(statuses)
    return events


@pytest.fixture
def customer(db):
    user = make_user("trader", plans={"options": "expert", "stocks": "commercial"})
    _, options_key = make_key(user, "options")
    _, stocks_key = make_key(user, "stocks")
    return user, options_key, stocks_key


async def admitted(application, key, market="options", via="header"):
    communicator = connect(application, market, key, via)
    connected, _ = await communicator.connect(TIMEOUT)
    assert connected
    await expect(communicator, "connected", "auth_success")
    return communicator


@pytest.mark.parametrize("via", ["header", "query"])
async def test_key_in_the_handshake(application, customer, via):
    user, options_key, _ = customer
    communicator = await admitted(application, options_key, via=via)
    assert await redis.asyncio.Redis.from_url(
        __import__("django.conf").conf.settings.REDIS_URL
    ).exists(f"{lock.KEY_PREFIX}{user.pk}")
    await communicator.disconnect()


async def test_auth_message_like_official_clients(application, customer):
    _, options_key, _ = customer
    communicator = connect(application)
    assert (await communicator.connect(TIMEOUT))[0]
    await expect(communicator, "connected")
    await communicator.send_to(text_data=orjson.dumps({"action": "auth", "params": options_key}).decode())
    events = await expect(communicator, "auth_success")
    assert events[0]["message"] == "authenticated"
    # A repeated auth message is answered, not refused.
    await communicator.send_to(text_data=orjson.dumps({"action": "auth", "params": options_key}).decode())
    await expect(communicator, "auth_success")
    await communicator.disconnect()


async def test_auth_message_with_a_bad_key_is_rejected_at_once(application, customer, settings):
    settings.STREAM_REJECT_GRACE = 30  # irrelevant here: the client already sent its auth message
    communicator = connect(application)
    await communicator.connect(TIMEOUT)
    await expect(communicator, "connected")
    await communicator.send_to(text_data='{"action":"auth","params":"cmo_bad"}')
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED
    assert [event["status"] for event in events] == ["auth_failed"]


async def test_auth_message_without_params(application, customer):
    communicator = connect(application)
    await communicator.connect(TIMEOUT)
    await expect(communicator, "connected")
    await communicator.send_to(text_data='{"action":"auth"}')
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED and events[0]["status"] == "auth_failed"
    assert "no API key" in events[0]["message"]


async def test_messages_before_auth_get_an_error(application, customer):
    communicator = connect(application)
    await communicator.connect(TIMEOUT)
    await expect(communicator, "connected")
    await communicator.send_to(text_data='{"action":"subscribe","params":"T.*"}')
    events = await expect(communicator, "error")
    assert "not authenticated" in events[0]["message"]
    await communicator.disconnect()


async def test_no_auth_in_time(application, settings):
    settings.STREAM_AUTH_TIMEOUT = 0.2
    communicator = connect(application)
    await communicator.connect(TIMEOUT)
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED
    assert events[-1] == codes.status_event("auth_timeout", "No authentication request received.")


async def test_handshake_rejection_waits_for_the_clients_auth_message(application, customer, settings):
    """Official clients read `connected`, send auth, and take the next frame as the verdict."""
    settings.STREAM_REJECT_GRACE = 30
    communicator = connect(application, "options", "cmo_not_a_real_key")
    await communicator.connect(TIMEOUT)
    await expect(communicator, "connected")
    assert await communicator.receive_nothing(0.2)
    await communicator.send_to(text_data='{"action":"auth","params":"cmo_not_a_real_key"}')
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED and [event["status"] for event in events] == ["auth_failed"]


def _revoke(user):
    ApiKey.objects.get(user=user, product="options").revoke()


@pytest.mark.parametrize(
    "case",
    ["unknown", "malformed_header", "revoked", "expired", "inactive", "market", "product", "plan", "free",
     "unconfigured"],
)
async def test_every_4401_cause(application, customer, settings, case):
    user, options_key, stocks_key = customer
    key, market, headers = options_key, "options", None
    if case == "unknown":
        key = "cmo_" + "A" * 12 + "_" + "B" * 40
    elif case == "malformed_header":
        headers = [(b"authorization", f"Token {options_key}".encode())]
    elif case == "revoked":
        await database_sync_to_async(_revoke)(user)
    elif case == "expired":
        await database_sync_to_async(
            lambda: ApiKey.objects.filter(user=user).update(expires_at="2000-01-01T00:00Z")
        )()
    elif case == "inactive":
        user.is_active = False
        await database_sync_to_async(user.save)()
    elif case == "market":
        market = "crypto"
    elif case == "product":
        key = stocks_key
    elif case == "plan":
        await database_sync_to_async(
            lambda: ProductTier.objects.filter(user=user, product="options").update(
                plan=Plan.objects.get(slug="developer")
            )
        )()
    elif case == "free":
        await database_sync_to_async(lambda: ProductTier.objects.filter(user=user).delete())()
    elif case == "unconfigured":
        settings.STREAM_UPSTREAMS = {**settings.STREAM_UPSTREAMS, "options": {"URL": "", "API_KEY": ""}}
    communicator = (
        WebsocketCommunicator(application, f"/v1/ws/{market}/", headers=headers)
        if headers
        else connect(application, market, key)
    )
    assert (await communicator.connect(TIMEOUT))[0]
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED
    assert [event["status"] for event in events] == ["connected", "auth_failed"]
    assert options_key not in events[1]["message"] and stocks_key not in events[1]["message"]


async def test_second_connection_is_4409_across_keys_and_markets(application, customer):
    _, options_key, stocks_key = customer
    first = await admitted(application, options_key)
    for key, market in ((options_key, "options"), (stocks_key, "stocks")):
        second = connect(application, market, key)
        await second.connect(TIMEOUT)
        events, code = await frames_until_close(second)
        assert code == codes.CloseCode.ALREADY_CONNECTED
        assert [event["status"] for event in events] == ["connected", "max_connections"]
    # The first connection is untouched, and once it leaves the user can connect again.
    await first.send_to(text_data='{"action":"auth","params":"x"}')
    await expect(first, "auth_success")
    await first.disconnect()
    again = await admitted(application, stocks_key, "stocks")
    await again.disconnect()


async def test_rejected_connections_hold_no_lock(application, customer, clean_redis):
    user, _, stocks_key = customer
    communicator = connect(application, "options", stocks_key)  # product mismatch
    await communicator.connect(TIMEOUT)
    await frames_until_close(communicator)
    assert not clean_redis.exists(f"{lock.KEY_PREFIX}{user.pk}")


async def test_lock_is_released_on_disconnect(application, customer, clean_redis):
    user, options_key, _ = customer
    communicator = await admitted(application, options_key)
    assert clean_redis.get(f"{lock.KEY_PREFIX}{user.pk}")
    await communicator.disconnect()
    assert not clean_redis.exists(f"{lock.KEY_PREFIX}{user.pk}")


async def test_lock_taken_over_closes_4409(application, customer, clean_redis, settings):
    settings.STREAM_LOCK_TTL = 0.6
    user, options_key, _ = customer
    communicator = await admitted(application, options_key)
    clean_redis.set(f"{lock.KEY_PREFIX}{user.pk}", "someone-else", px=60_000)
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.ALREADY_CONNECTED and events[-1]["status"] == "max_connections"
    # Our cleanup never deletes the other connection's lock.
    assert clean_redis.get(f"{lock.KEY_PREFIX}{user.pk}") == b"someone-else"


@pytest.fixture
def lock_redis(settings, tmp_path):
    """A private Redis for the lock that the test can kill (the channel layer keeps the main one)."""
    server = RedisServer(directory=tmp_path).start()
    settings.REDIS_URL = server.url
    yield server
    server.close()


async def test_redis_down_at_admission_fails_closed(application, customer, lock_redis):
    _, options_key, _ = customer
    lock_redis.kill()
    communicator = connect(application, "options", options_key)
    await communicator.connect(TIMEOUT)
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.INTERNAL_ERROR
    assert [event["status"] for event in events] == ["connected", "error"]


async def test_redis_down_in_open_mode_admits_one_per_process(application, customer, lock_redis, settings):
    settings.STREAM_LOCK_FAILURE_MODE = "open"
    _, options_key, stocks_key = customer
    lock_redis.kill()
    first = await admitted(application, options_key)
    second = connect(application, "stocks", stocks_key)
    await second.connect(TIMEOUT)
    _, code = await frames_until_close(second)
    assert code == codes.CloseCode.ALREADY_CONNECTED
    await first.disconnect()
    third = await admitted(application, stocks_key, "stocks")
    await third.disconnect()


async def test_refresh_failing_closes_1011_before_the_ttl(application, customer, lock_redis, settings):
    settings.STREAM_LOCK_TTL = 0.9
    _, options_key, _ = customer
    communicator = await admitted(application, options_key)
    loop = asyncio.get_running_loop()
    lock_redis.kill()
    killed_at = loop.time()
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.INTERNAL_ERROR and events[-1]["status"] == "error"
    assert loop.time() - killed_at < 0.9


async def test_live_revocation_closes_4401(application, customer):
    user, options_key, _ = customer
    communicator = await admitted(application, options_key)
    await database_sync_to_async(_revoke)(user)
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED
    assert events[-1]["status"] == "auth_failed" and "revoked" in events[-1]["message"]


async def test_live_downgrade_closes_4401(application, customer):
    user, options_key, _ = customer
    communicator = await admitted(application, options_key)
    await database_sync_to_async(
        lambda: ProductTier.objects.get(user=user, product="options").__class__.objects.filter(
            user=user, product="options"
        ).first().delete()
    )()
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED and "free" in events[-1]["message"]


async def test_unrelated_change_keeps_the_stream(application, customer):
    user, options_key, _ = customer
    communicator = await admitted(application, options_key)
    await database_sync_to_async(lambda: make_key(user, "stocks"))()
    await database_sync_to_async(lambda: ApiKey.objects.filter(product="stocks").first().revoke())()
    await communicator.send_to(text_data='{"action":"auth","params":"x"}')
    await expect(communicator, "auth_success")
    await communicator.disconnect()


async def test_paths_outside_v1_ws_are_refused_at_the_handshake(application):
    communicator = WebsocketCommunicator(application, "/elsewhere/")
    connected, _ = await communicator.connect(TIMEOUT)
    assert not connected
    await communicator.disconnect()


@pytest.mark.parametrize("path", ["/v1/ws/options", "/v1/ws/options/"])
async def test_trailing_slash_is_optional(application, customer, path):
    _, options_key, _ = customer
    headers = [(b"authorization", f"Bearer {options_key}".encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    await communicator.connect(TIMEOUT)
    await expect(communicator, "connected", "auth_success")
    await communicator.disconnect()


async def test_a_recheck_that_cannot_read_the_key_waits_and_tries_again(application, customer, monkeypatch):
    """A re-check meeting a database or Redis failure neither cuts the stream (it may be entitled) nor gives up."""
    from streaming.gateway import admission

    monkeypatch.setattr(admission, "RECHECK_RETRY_SECONDS", 0.05)
    user, options_key, _ = customer
    communicator = await admitted(application, options_key)
    real_load = keys.load_records
    attempts = asyncio.Queue()

    def failing_load(prefixes):
        attempts.put_nowait(prefixes)
        raise RuntimeError("database unreachable")

    monkeypatch.setattr(keys, "load_records", failing_load)
    await database_sync_to_async(_revoke)(user)  # evicts the cached record and announces the change
    for _ in range(3):  # the re-check keeps trying; the stream stays open meanwhile
        await asyncio.wait_for(attempts.get(), TIMEOUT)
    assert await communicator.receive_nothing(0.05)
    monkeypatch.setattr(keys, "load_records", real_load)
    events, code = await frames_until_close(communicator)
    assert code == codes.CloseCode.UNAUTHORIZED and "revoked" in events[-1]["message"]


def _rejections_4401() -> tuple[float, float]:
    """Rejections with 4401, and refusals for an invalid key (the rule), in the options market."""
    from prometheus_client import REGISTRY

    by_code = {"market": "options", "code": str(codes.CloseCode.UNAUTHORIZED.value)}
    by_reason = {"market": "options", "reason": "invalid_key"}
    return (
        REGISTRY.get_sample_value("cutemarkets_stream_rejections_total", by_code) or 0.0,
        REGISTRY.get_sample_value("cutemarkets_stream_refusals_total", by_reason) or 0.0,
    )


async def test_a_prefix_never_issued_is_refused_and_counted_like_any_unknown_key(
    application, customer, django_db_blocker
):
    _, options_key, _ = customer
    assert await keys.seed_issued_prefixes(redis_client())
    forged = options_key[:-1] + ("A" if options_key[-1] != "A" else "B")  # issued prefix, wrong secret
    never_issued = keys.generate_key("options").raw
    answers = []
    for key, database in ((forged, django_db_blocker.unblock), (never_issued, django_db_blocker.block)):
        before = _rejections_4401()
        with database():  # blocked: a query would fail the resolution (1011)
            events, code = await frames_until_close(await _connected(application, key))
        after = _rejections_4401()
        answers.append((code, events, (after[0] - before[0], after[1] - before[1])))
    assert answers[0] == answers[1]
    assert answers[0][0] == codes.CloseCode.UNAUTHORIZED and answers[0][2] == (1, 1)


async def _connected(application, key):
    communicator = connect(application, "options", key)
    assert (await communicator.connect(TIMEOUT))[0]
    return communicator
