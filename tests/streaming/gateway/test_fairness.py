import pytest

from streaming.gateway.fairness import FAILURE_WINDOW_SECONDS, AddressBudgets, AddressLimits, PendingSocket, budget_key
from tests.streaming.runtime.test_ratelimit import Clock

LIMITS = AddressLimits(
    handshake_rate=5, handshake_burst=10, failures_per_minute=3, pending_sockets=4, refusals_before_drop=6
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def budgets(clock) -> AddressBudgets:
    return AddressBudgets(LIMITS, clock)


def admitted(budgets: AddressBudgets, address: str, count: int) -> list[PendingSocket]:
    slots = [budgets.admit_handshake(address) for _ in range(count)]
    assert all(isinstance(slot, PendingSocket) for slot in slots), slots
    return slots  # type: ignore[return-value]


def admit_and_release(budgets: AddressBudgets, address: str, count: int) -> None:
    """*count* handshakes that each authenticate before the next (no socket stays pending)."""
    for _ in range(count):
        admitted(budgets, address, 1)[0].release()


def test_handshakes_beyond_the_burst_are_refused_for_that_address_only(budgets, clock):
    admit_and_release(budgets, "10.0.0.1", 10)
    refusal = budgets.admit_handshake("10.0.0.1")
    assert refusal == "too many connection attempts from your address (more than 5 per second): try again later"
    admit_and_release(budgets, "10.0.0.2", 10)  # another address has its own budget
    clock.now += 0.2  # one handshake's worth of time
    admitted(budgets, "10.0.0.1", 1)[0].release()
    assert isinstance(budgets.admit_handshake("10.0.0.1"), str)


def test_sockets_waiting_to_authenticate_are_capped_until_they_are_released(budgets):
    slots = admitted(budgets, "10.0.0.1", 4)
    assert budgets.admit_handshake("10.0.0.1").startswith("too many connections from your address waiting")
    slots[0].release()
    slots[0].release()  # idempotent: frees one slot, not two
    admitted(budgets, "10.0.0.1", 1)
    assert isinstance(budgets.admit_handshake("10.0.0.1"), str)


def test_failed_resolutions_block_the_address_for_the_rest_of_the_minute(budgets, clock):
    budgets.resolution_failed("10.0.0.1")
    budgets.resolution_failed("10.0.0.1")
    assert not budgets.is_blocked("10.0.0.1")
    budgets.resolution_failed("10.0.0.1")
    assert budgets.is_blocked("10.0.0.1") and not budgets.is_blocked("10.0.0.2")
    assert budgets.admit_handshake("10.0.0.1") == (
        "too many failed authentications from your address: try again in a minute"
    )
    clock.now += FAILURE_WINDOW_SECONDS
    assert not budgets.is_blocked("10.0.0.1")
    admitted(budgets, "10.0.0.1", 1)


def test_failures_spread_over_minutes_never_block(budgets, clock):
    for _ in range(10):
        budgets.resolution_failed("10.0.0.1")
        budgets.resolution_failed("10.0.0.1")
        clock.now += FAILURE_WINDOW_SECONDS
    assert not budgets.is_blocked("10.0.0.1")


def test_ipv6_clients_share_the_budget_of_their_64():
    assert budget_key("2001:db8:1:2:aaaa::1") == budget_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert budget_key("2001:db8:1:3::1") != budget_key("2001:db8:1:2::1")
    assert budget_key("::ffff:10.0.0.1") == budget_key("10.0.0.1") == "10.0.0.1"


def test_quiet_addresses_are_forgotten(budgets, clock):
    for n in range(5_000):
        admitted(budgets, f"10.1.{n // 256}.{n % 256}", 1)[0].release()
    budgets.resolution_failed("10.9.9.9")
    budgets.resolution_failed("10.9.9.9")
    budgets.resolution_failed("10.9.9.9")
    held = admitted(budgets, "10.8.8.8", 1)
    clock.now += 1_000
    for n in range(2_000):
        admitted(budgets, f"10.2.{n // 256}.{n % 256}", 1)[0].release()
    assert budgets.tracked_addresses() <= 2_000 + 2  # the old ones are gone; a held socket's address stays
    held[0].release()


def test_an_address_refused_again_and_again_has_its_upgrades_dropped_for_the_rest_of_the_minute(budgets, clock):
    admit_and_release(budgets, "10.0.0.1", 10)  # admissions never count towards it
    assert not budgets.drops("10.0.0.1")
    for _ in range(5):
        assert isinstance(budgets.admit_handshake("10.0.0.1"), str)
    assert not budgets.drops("10.0.0.1")  # five 1013s: still answered
    assert isinstance(budgets.admit_handshake("10.0.0.1"), str)
    assert budgets.drops("10.0.0.1") and not budgets.drops("10.0.0.2")
    clock.now += FAILURE_WINDOW_SECONDS
    assert not budgets.drops("10.0.0.1")  # the minute is over: refused properly again, and counted afresh
    admit_and_release(budgets, "10.0.0.1", 10)
    assert isinstance(budgets.admit_handshake("10.0.0.1"), str)
    assert not budgets.drops("10.0.0.1")
