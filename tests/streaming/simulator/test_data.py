"""The simulated data is realistic and self-consistent: universe, event shapes, prices, sequences, aggregates, seeds."""

from __future__ import annotations

import re
import time
from collections import defaultdict

import orjson
import pytest

from streaming.simulator import FeedSimulator
from streaming.simulator.universe import OPTION_CONTRACTS, STOCKS

from . import EVERYTHING, KEY, open_client, receive, receive_count

OCC_SYMBOL = re.compile(r"^O:[A-Z]{1,6}\d{6}[CP]\d{8}$")

FIELDS = {
    "stocks": {
        "T": {"ev": str, "sym": str, "x": int, "i": str, "z": int, "p": float, "s": int, "c": list, "t": int, "q": int},
        "Q": {
            "ev": str, "sym": str, "bx": int, "bp": float, "bs": int, "ax": int, "ap": float, "as": int, "c": int,
            "t": int, "q": int, "z": int,
        },
        "LULD": {"ev": str, "T": str, "h": float, "l": float, "i": list, "z": int, "t": int, "q": int},
    },
    "options": {
        "T": {"ev": str, "sym": str, "x": int, "p": float, "s": int, "c": list, "t": int, "q": int},
        "Q": {
            "ev": str, "sym": str, "bx": int, "ax": int, "bp": float, "ap": float, "bs": int, "as": int, "t": int,
            "q": int,
        },
    },
}
AGGREGATE_FIELDS = {
    "ev": str, "sym": str, "v": int, "av": int, "op": float, "vw": float, "o": float, "c": float, "h": float,
    "l": float, "a": float, "z": int, "s": int, "e": int,
}
for cluster_fields in FIELDS.values():
    cluster_fields["A"] = cluster_fields["AM"] = AGGREGATE_FIELDS


def symbol_of(event: dict) -> str:
    return event["T"] if event["ev"] == "LULD" else event["sym"]


def cents(price: float) -> int:
    value = round(price * 100)
    assert abs(value - price * 100) < 1e-6, f"{price} is not a whole number of cents"
    return value


@pytest.fixture
async def sim():
    async with FeedSimulator(api_key=KEY, rate=0, seed=11) as simulator:
        yield simulator


def test_universe_has_well_known_stocks_and_option_chains():
    stock_symbols = {stock.symbol for stock in STOCKS}
    assert len(stock_symbols) == len(STOCKS) >= 50
    assert {"AAPL", "MSFT", "SPY", "QQQ", "BRK.B", "TSLA", "NVDA"} <= stock_symbols
    option_symbols = {contract.symbol for contract in OPTION_CONTRACTS}
    assert len(option_symbols) == len(OPTION_CONTRACTS) >= 5000
    assert "O:SPY260515C00500000" in option_symbols
    assert all(OCC_SYMBOL.match(symbol) for symbol in option_symbols)
    assert {contract.underlying for contract in OPTION_CONTRACTS} >= {"SPY", "QQQ", "AAPL", "TSLA"}
    assert all(contract.price >= 0 for contract in OPTION_CONTRACTS)


@pytest.mark.parametrize("cluster", ["stocks", "options"])
async def test_every_event_type_has_its_fields_with_their_types(sim, cluster):
    sim.start_recording(cluster)
    async with open_client(sim, cluster, subscribed=EVERYTHING) as client:
        before_ms = time.time_ns() // 1_000_000
        await sim.emit(cluster, 8000)
        await sim.flush_aggregates(cluster)
        received = await receive_count(client, len(sim.recorded(cluster)))
    assert received == sim.recorded(cluster)
    assert {event["ev"] for event in received} == set(FIELDS[cluster])
    for event in received:
        fields = FIELDS[cluster][event["ev"]]
        assert set(event) == set(fields), event
        for name, kind in fields.items():
            assert type(event[name]) is kind or (kind is float and type(event[name]) is int), (name, event)
        timestamp = event["s"] if event["ev"] in ("A", "AM") else event["t"]
        assert before_ms - 60_000 <= timestamp <= time.time_ns() // 1_000_000
        if cluster == "options":
            assert OCC_SYMBOL.match(event["sym"])


async def test_stock_prices_are_in_cents_and_quotes_bracket_trades(sim):
    sim.start_recording("stocks")
    await sim.emit("stocks", 30_000)
    last_quote: dict[str, dict] = {}
    checked = 0
    for event in sim.recorded("stocks"):
        if event["ev"] == "Q":
            assert 0 < cents(event["bp"]) < cents(event["ap"])
            last_quote[event["sym"]] = event
        elif event["ev"] == "T":
            cents(event["p"])
            quote = last_quote.get(event["sym"])
            if quote is not None:
                assert quote["bp"] <= event["p"] <= quote["ap"], (quote, event)
                checked += 1
        elif event["ev"] == "LULD":
            assert event["l"] < event["h"]
    assert checked > 1000


async def test_option_prices_follow_penny_and_nickel_ticks_and_quotes_bracket_trades(sim):
    sim.start_recording("options")
    await sim.emit("options", 40_000)
    last_quote: dict[str, dict] = {}
    checked = 0
    for event in sim.recorded("options"):
        prices = [event["bp"], event["ap"]] if event["ev"] == "Q" else [event["p"]]
        for price in prices:
            value = cents(price)
            assert value >= 1
            assert value < 300 or value % 5 == 0, price
        if event["ev"] == "Q":
            assert event["bp"] < event["ap"]
            last_quote[event["sym"]] = event
        elif event["sym"] in last_quote:
            quote = last_quote[event["sym"]]
            assert quote["bp"] <= event["p"] <= quote["ap"], (quote, event)
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("cluster", ["stocks", "options"])
async def test_sequence_numbers_increase_per_symbol(sim, cluster):
    sim.start_recording(cluster)
    for _ in range(5):
        await sim.emit(cluster, 3000)
    last: dict[str, int] = {}
    for event in sim.recorded(cluster):
        if "q" in event:
            symbol = symbol_of(event)
            assert event["q"] > last.get(symbol, 0)
            last[symbol] = event["q"]
    assert len(last) > 40


@pytest.mark.parametrize("cluster", ["stocks", "options"])
async def test_aggregates_summarise_exactly_the_trades_since_the_previous_bar(sim, cluster):
    sim.start_recording(cluster)
    for _ in range(4):
        await sim.emit(cluster, 5000)
    await sim.flush_aggregates(cluster)
    pending: dict[str, dict[str, list]] = {"A": defaultdict(list), "AM": defaultdict(list)}
    day_volume: dict[str, int] = defaultdict(int)
    bars = defaultdict(int)
    for event in sim.recorded(cluster):
        if event["ev"] == "T":
            for window in pending.values():
                window[event["sym"]].append(event)
        elif event["ev"] in pending:
            trades = pending[event["ev"]].pop(event["sym"])
            prices = [trade["p"] for trade in trades]
            volume = sum(trade["s"] for trade in trades)
            assert event["v"] == volume
            assert (event["o"], event["c"]) == (prices[0], prices[-1])
            assert (event["h"], event["l"]) == (max(prices), min(prices))
            assert event["vw"] == pytest.approx(sum(t["p"] * t["s"] for t in trades) / volume, abs=1e-4)
            assert event["z"] == volume // len(trades)
            assert event["e"] - event["s"] == (1000 if event["ev"] == "A" else 60_000)
            assert event["s"] <= trades[0]["t"] and trades[-1]["t"] < event["e"]
            if event["ev"] == "A":
                day_volume[event["sym"]] += volume
            assert event["av"] == day_volume[event["sym"]]
            assert event["l"] <= event["vw"] <= event["h"]
            bars[event["ev"]] += 1
    assert not any(pending["A"].values()) and not any(pending["AM"].values())
    assert bars["A"] > 40 and bars["AM"] > 40


async def test_second_aggregates_are_emitted_at_second_boundaries_on_their_own():
    async with FeedSimulator(api_key=KEY, rate=2000, seed=3) as sim:
        sim.start_recording("stocks")
        await sim.wait_for(lambda: any(event["ev"] == "A" for event in sim.recorded("stocks")), timeout=5)


async def test_rate_drives_the_feed_without_manual_emission():
    async with FeedSimulator(api_key=KEY, rate={"stocks": 0, "options": 500}, seed=3) as sim:
        async with open_client(sim, "options", subscribed="Q.*") as client:
            frame = await receive(client)
    assert frame and all(event["ev"] == "Q" for event in frame)


async def test_large_bursts_are_split_into_frames_below_one_megabyte(sim):
    sim.start_recording("options")
    async with open_client(sim, "options", subscribed=EVERYTHING) as client:
        await sim.emit("options", 60_000)
        total = len(sim.recorded("options"))
        sizes = []
        received = 0
        while received < total:
            frame = await client.recv(decode=False)
            sizes.append(len(frame))
            events = orjson.loads(frame)
            assert isinstance(events, list) and all("ev" in event for event in events)
            received += len(events)
    assert received == total
    assert len(sizes) > 1 and max(sizes) < 1_000_000


def event_shapes(events: list[dict]) -> list[tuple]:
    """What a seed reproduces: everything but timestamps and the time-windowed aggregates."""
    return [
        tuple(sorted((key, value) for key, value in event.items() if key != "t"))
        for event in events
        if event["ev"] not in ("A", "AM")
    ]


async def test_a_seed_reproduces_the_same_events_whatever_the_batching():
    runs = []
    for batches in ([3000, 3000], [1000] * 6):
        async with FeedSimulator(api_key=KEY, seed=42) as sim:
            for cluster in ("stocks", "options"):
                sim.start_recording(cluster)
                for count in batches:
                    await sim.emit(cluster, count)
            runs.append([event_shapes(sim.recorded(cluster)) for cluster in ("stocks", "options")])
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == len(runs[0][1]) == 6000

    async with FeedSimulator(api_key=KEY, seed=43) as sim:
        sim.start_recording("stocks")
        await sim.emit("stocks", 6000)
        assert event_shapes(sim.recorded("stocks")) != runs[0][0]


async def test_recording_holds_every_published_event_whoever_is_subscribed(sim):
    assert sim.recorded("stocks") == []
    sim.start_recording("stocks")
    await sim.emit("stocks", 100)
    await sim.send_events("stocks", [{"ev": "T", "sym": "NOBODY", "p": 1.0}])
    sim.stop_recording("stocks")
    await sim.emit("stocks", 100)
    recorded = sim.recorded("stocks")
    assert len(recorded) >= 101
    assert recorded[-1] == {"ev": "T", "sym": "NOBODY", "p": 1.0}
    assert [event["q"] for event in recorded[:100] if "q" in event] == list(range(1, 101))
    assert sim.recorded("options") == []
