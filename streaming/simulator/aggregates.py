"""Per-second (``A``) and per-minute (``AM``) aggregate bars computed from the simulator's own trades.

Trades accumulate into the open second's bars; when the clock leaves that second its bars are emitted as ``A``
events and folded into the open minute, which is emitted as ``AM`` when the clock leaves the minute. The day's
volume, opening price and VWAP (``av``, ``op``, ``a``) cover every trade since the simulator started.
"""

from __future__ import annotations

from .market import Event
from .protocol import EV_MINUTE_AGGREGATE, EV_SECOND_AGGREGATE

SECOND_MS = 1_000
MINUTE_MS = 60_000
PRICE_DECIMALS = 4


class Bar:
    """Open, close, high, low, volume, price x size sum and trade count of one symbol over one window."""

    __slots__ = ("open", "close", "high", "low", "volume", "notional", "trades")

    def __init__(self, price: float, size: int) -> None:
        self.open = self.close = self.high = self.low = price
        self.volume = size
        self.notional = price * size
        self.trades = 1

    def add_trade(self, price: float, size: int) -> None:
        self.close = price
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.volume += size
        self.notional += price * size
        self.trades += 1

    def absorb(self, later: Bar) -> None:
        """Extend this bar with *later*, a bar of the window that followed it."""
        self.close = later.close
        self.high = max(self.high, later.high)
        self.low = min(self.low, later.low)
        self.volume += later.volume
        self.notional += later.notional
        self.trades += later.trades


class DayTotals:
    """Opening price, accumulated volume and notional of one symbol since the simulator started."""

    __slots__ = ("opening", "volume", "notional")

    def __init__(self, opening: float) -> None:
        self.opening = opening
        self.volume = 0
        self.notional = 0.0


class AggregateBook:
    """The open second and minute windows of one cluster, and the day totals behind ``av``/``op``/``a``."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._minute: int | None = None
        self._seconds: dict[str, Bar] = {}
        self._minutes: dict[str, Bar] = {}
        self._days: dict[str, DayTotals] = {}

    def add_trade(self, symbol: str, price: float, size: int, timestamp_ms: int) -> None:
        """Count a trade in the open second (opened by the first trade after the previous one was flushed)."""
        if self._second is None:
            self._second = timestamp_ms // SECOND_MS
        bar = self._seconds.get(symbol)
        if bar is None:
            self._seconds[symbol] = Bar(price, size)
        else:
            bar.add_trade(price, size)

    def roll(self, now_ms: int) -> list[Event]:
        """The ``A`` and ``AM`` events of every window that ended before *now_ms*."""
        events: list[Event] = []
        if self._second is not None and now_ms // SECOND_MS > self._second:
            events += self._close_second()
        if self._minute is not None and now_ms // MINUTE_MS > self._minute:
            events += self._close_minute()
        return events

    def flush(self) -> list[Event]:
        """The ``A`` and ``AM`` events of the open windows, closed now whether or not they have ended."""
        events: list[Event] = []
        if self._second is not None:
            events += self._close_second()
        if self._minute is not None:
            events += self._close_minute()
        return events

    def _close_second(self) -> list[Event]:
        assert self._second is not None
        start_ms = self._second * SECOND_MS
        events: list[Event] = []
        if self._minute is not None and start_ms // MINUTE_MS > self._minute:
            events += self._close_minute()
        if self._minute is None:
            self._minute = start_ms // MINUTE_MS
        for symbol, bar in self._seconds.items():
            day = self._days.get(symbol)
            if day is None:
                day = self._days[symbol] = DayTotals(bar.open)
            day.volume += bar.volume
            day.notional += bar.notional
            events.append(_aggregate_event(EV_SECOND_AGGREGATE, symbol, bar, day, start_ms, start_ms + SECOND_MS))
            minute_bar = self._minutes.get(symbol)
            if minute_bar is None:
                self._minutes[symbol] = bar
            else:
                minute_bar.absorb(bar)
        self._seconds = {}
        self._second = None
        return events

    def _close_minute(self) -> list[Event]:
        assert self._minute is not None
        start_ms = self._minute * MINUTE_MS
        events = [
            _aggregate_event(EV_MINUTE_AGGREGATE, symbol, bar, self._days[symbol], start_ms, start_ms + MINUTE_MS)
            for symbol, bar in self._minutes.items()
        ]
        self._minutes = {}
        self._minute = None
        return events


def _aggregate_event(ev: str, symbol: str, bar: Bar, day: DayTotals, start_ms: int, end_ms: int) -> Event:
    return {
        "ev": ev,
        "sym": symbol,
        "v": bar.volume,
        "av": day.volume,
        "op": day.opening,
        "vw": round(bar.notional / bar.volume, PRICE_DECIMALS),
        "o": bar.open,
        "c": bar.close,
        "h": bar.high,
        "l": bar.low,
        "a": round(day.notional / day.volume, PRICE_DECIMALS),
        "z": bar.volume // bar.trades,
        "s": start_ms,
        "e": end_ms,
    }
