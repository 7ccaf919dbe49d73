"""The neighbours scenario's parts: the attackers' own parsing and counting, and one short real run of an attack
against a real daphne gateway, its Redis and its database (bench.stack), reported as BENCHMARKS.md quotes it."""

from __future__ import annotations

import struct

import pytest

from bench.attacks import Tally, server_frames


def test_server_frames_reads_whole_frames_only():
    pong = bytes([0x8A, 4]) + b"ping"
    close = bytes([0x88, 2 + len(b"too many pings")]) + struct.pack("!H", 1008) + b"too many pings"
    text = bytes([0x81, 126]) + struct.pack("!H", 300) + b"x" * 300
    data = pong + text + close
    assert [opcode for opcode, _ in server_frames(data)] == [0xA, 0x1, 0x8]
    assert list(server_frames(data[:-1])) == [(0xA, b"ping"), (0x1, b"x" * 300)]


def test_tally_counts_statuses_with_their_figures_as_n_and_keeps_close_codes():
    tally = Tally()
    tally.statuses(b'[{"ev":"status","status":"success","message":"subscribed to: T.XAAAAA"},'
                   b'{"ev":"status","status":"success","message":"subscribed to: T.XAAAAB"}]')
    tally.statuses(b'{"ev":"status","status":"error","message":"rate limit exceeded: try again in 0.4 s"}')
    tally.note("too many pings: more than 2 per second", exact="close 1008 ")
    assert tally.outcomes == {"success: subscribed to": 2, "error: rate limit exceeded: try again in N s": 1,
                              "close 1008 too many pings: more than N per second": 1}


@pytest.mark.e2e
def test_key_guessing_next_to_the_victims_is_refused_and_reported():
    from bench.__main__ import NEIGHBOURS_USERS
    from bench.report import markdown
    from bench.scenarios import neighbours
    from bench.stack import Environment

    env = Environment(users=1, stocks_users=NEIGHBOURS_USERS).start()
    try:
        result = neighbours(env, attacks=["key_guessing"], rate=2_000, warmup=0.3, duration=1.5, log=print)
    finally:
        env.close()
    (trial,) = result["trials"]
    assert trial["victim_disconnects"] == 0
    for phase in (trial["baseline"], trial["attacked"]):
        assert phase["events_per_s"] > 0 and phase["admissions"] > 0
    outcomes = trial["attacked"]["attacker"]["outcomes"]
    # The address's failure budget (30 a minute) stops the lookups; guesses already being looked up when it is
    # reached (at most the address's pending sockets, 50) are still answered 4401. How many that is depends on how
    # long a lookup takes on this machine at this moment, so the bound is the budget plus what may be in flight.
    assert 0 < outcomes["close 4401 authentication failed: invalid API key"] <= 30 + 50
    assert outcomes["close 1013 too many failed authentications from your address: try again in a minute"] > 0
    table = markdown({"mode": "quick", "runs": 1, "targets": [], "scenarios": {"neighbours": result}})
    assert "| key_guessing | " in table
