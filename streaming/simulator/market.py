"""Seeded random-walk markets that produce the trade, quote and LULD events of one cluster.

Each instrument keeps a bid/ask book in integer cents. Only quotes move the book, and trades print inside the last
quote, so bid <= trade price <= ask always holds for what a client has seen. Every random draw comes from one
seeded ``random.Random`` in event order, which makes a seed reproduce the same events whatever the batching.
"""

from __future__ import annotations

import random
from typing import Any

from .protocol import EV_LULD, EV_QUOTE, EV_TRADE
from .universe import OptionContract, Stock

Event = dict[str, Any]

# Prices drift freely inside this band around their reference, and are pulled back towards it outside.
REVERSION_BAND = 0.10
OPTION_REVERSION_BAND = 0.40

STOCK_TRADE_SHARE = 0.35
STOCK_LULD_SHARE = 0.001
OPTION_TRADE_SHARE = 0.25

STOCK_EXCHANGES = (1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15, 17, 19, 21)
STOCK_QUOTE_LOTS = tuple(range(1, 21))
STOCK_TRADE_SIZES = (1, 3, 10, 25, 50, 100, 100, 100, 100, 200, 200, 300, 500, 1000, 2500)
CONDITION_REGULAR = [0]
CONDITION_ODD_LOT = [37]
CONDITION_INTERMARKET_SWEEP = [14, 41]
QUOTE_CONDITION_REGULAR = 0
LULD_INDICATORS = ([17], [21], [17, 21])
LULD_BAND = 0.05

OPTION_EXCHANGES = (300, 301, 302, 303, 304, 307, 308, 309, 312, 313, 315, 316, 319, 322, 323, 325)
OPTION_QUOTE_SIZES = tuple(range(1, 301))
OPTION_TRADE_SIZES = (1, 1, 1, 1, 2, 2, 3, 4, 5, 10, 10, 20, 25, 50, 100)
OPTION_CONDITIONS = ([209], [219], [227], [228], [232])
# Options trade in pennies below $3 and in nickels from $3 up.
OPTION_PENNY_LIMIT_CENTS = 300
OPTION_NICKEL_CENTS = 5


class Book:
    """One instrument's state in cents: reference band, mid, last published quote, and the step ``unit``.

    ``unit`` is how far a stock's mid moves per step: a cent, plus a cent per $500 of price.
    """

    __slots__ = ("symbol", "tape", "unit", "mid", "low", "high", "bid", "ask")

    def __init__(self, symbol: str, price: float, band: float, tape: int = 0) -> None:
        cents = max(1, round(price * 100))
        self.symbol = symbol
        self.tape = tape
        self.unit = 1 + cents // 50_000
        self.mid = cents
        self.low = max(1, int(cents * (1 - band)))
        self.high = int(cents * (1 + band)) + 1
        self.bid = max(1, cents - self.unit)
        self.ask = self.bid + 2 * self.unit

    def drift(self, step: int) -> None:
        """Move the mid by *step*, towards the reference band when outside it, never below one cent."""
        mid = self.mid
        if mid > self.high:
            step = -abs(step)
        elif mid < self.low:
            step = abs(step)
        mid += step
        self.mid = mid if mid > 0 else 1


class Market:
    """Shared machinery: the seeded generator, the cluster's sequence counter and the event loop over books."""

    def __init__(self, books: list[Book], seed: int | str | None) -> None:
        self._books = books
        self._random = random.Random(seed).random
        self._sequence = 0

    def generate(self, count: int, timestamp_ms: int) -> list[Event]:
        """*count* new events stamped *timestamp_ms*, each for a symbol drawn uniformly from the universe."""
        draw = self._random
        books = self._books
        size = len(books)
        event = self._event
        return [event(books[int(draw() * size)], draw(), timestamp_ms) for _ in range(count)]

    def _pair(self, choices: tuple[int, ...]) -> tuple[int, int]:
        """Two independent uniform picks from *choices* out of a single random draw (generation is hot)."""
        size = len(choices)
        index = int(self._random() * size * size)
        return choices[index // size], choices[index % size]

    def _event(self, book: Book, roll: float, timestamp_ms: int) -> Event:
        raise NotImplementedError


class StockMarket(Market):
    """Stocks: penny ticks, round-lot quote sizes, tape-tagged trades, and occasional LULD bands."""

    def __init__(self, stocks: tuple[Stock, ...], seed: int | str | None) -> None:
        super().__init__([Book(stock.symbol, stock.price, REVERSION_BAND, stock.tape) for stock in stocks], seed)
        self._trade_id = 0

    def _event(self, book: Book, roll: float, timestamp_ms: int) -> Event:
        if roll < STOCK_LULD_SHARE:
            return self._luld(book, timestamp_ms)
        if roll < STOCK_LULD_SHARE + STOCK_TRADE_SHARE:
            return self._trade(book, timestamp_ms)
        return self._quote(book, timestamp_ms)

    def _quote(self, book: Book, timestamp_ms: int) -> Event:
        draw = self._random
        unit = book.unit
        book.drift((int(draw() * 5) - 2) * unit)
        spread = unit * (1 + int(draw() * 3))
        bid = book.mid - spread // 2
        book.bid = bid = bid if bid > 0 else 1
        book.ask = ask = bid + spread
        bid_exchange, ask_exchange = self._pair(STOCK_EXCHANGES)
        bid_lots, ask_lots = self._pair(STOCK_QUOTE_LOTS)
        self._sequence += 1
        return {
            "ev": EV_QUOTE,
            "sym": book.symbol,
            "bx": bid_exchange,
            "bp": bid / 100,
            "bs": 100 * bid_lots,
            "ax": ask_exchange,
            "ap": ask / 100,
            "as": 100 * ask_lots,
            "c": QUOTE_CONDITION_REGULAR,
            "t": timestamp_ms,
            "q": self._sequence,
            "z": book.tape,
        }

    def _trade(self, book: Book, timestamp_ms: int) -> Event:
        draw = self._random
        size = STOCK_TRADE_SIZES[int(draw() * len(STOCK_TRADE_SIZES))]
        if size < 100:
            conditions = CONDITION_ODD_LOT
        elif draw() < 0.1:
            conditions = CONDITION_INTERMARKET_SWEEP
        else:
            conditions = CONDITION_REGULAR
        self._trade_id += 1
        self._sequence += 1
        return {
            "ev": EV_TRADE,
            "sym": book.symbol,
            "x": STOCK_EXCHANGES[int(draw() * len(STOCK_EXCHANGES))],
            "i": str(self._trade_id),
            "z": book.tape,
            "p": (book.bid + int(draw() * (book.ask - book.bid + 1))) / 100,
            "s": size,
            "c": conditions,
            "t": timestamp_ms,
            "q": self._sequence,
        }

    def _luld(self, book: Book, timestamp_ms: int) -> Event:
        self._sequence += 1
        return {
            "ev": EV_LULD,
            "T": book.symbol,
            "h": round(book.mid * (1 + LULD_BAND)) / 100,
            "l": round(book.mid * (1 - LULD_BAND)) / 100,
            "i": LULD_INDICATORS[int(self._random() * len(LULD_INDICATORS))],
            "z": book.tape,
            "t": timestamp_ms,
            "q": self._sequence,
        }


def option_tick(cents: int) -> int:
    """The minimum price increment at *cents*: a penny below $3, a nickel from $3 up."""
    return 1 if cents < OPTION_PENNY_LIMIT_CENTS else OPTION_NICKEL_CENTS


def option_floor(cents: int) -> int:
    """*cents* rounded down to a valid option price."""
    return cents - cents % option_tick(cents)


def option_ceiling(cents: int) -> int:
    """*cents* rounded up to a valid option price."""
    return cents + (-cents) % option_tick(cents)


class OptionMarket(Market):
    """Options: penny/nickel ticks, quotes a few ticks wide, trades at the bid, the ask or in between."""

    def __init__(self, contracts: tuple[OptionContract, ...], seed: int | str | None) -> None:
        super().__init__([Book(c.symbol, c.price, OPTION_REVERSION_BAND) for c in contracts], seed)
        for book in self._books:
            book.bid = option_floor(book.mid)
            book.ask = option_ceiling(book.bid + option_tick(book.bid))

    def _event(self, book: Book, roll: float, timestamp_ms: int) -> Event:
        if roll < OPTION_TRADE_SHARE:
            return self._trade(book, timestamp_ms)
        return self._quote(book, timestamp_ms)

    def _quote(self, book: Book, timestamp_ms: int) -> Event:
        draw = self._random
        book.drift((int(draw() * 3) - 1) * option_tick(book.mid))
        book.bid = bid = option_floor(book.mid)
        book.ask = ask = option_ceiling(bid + (1 + int(draw() * 3)) * option_tick(bid))
        bid_exchange, ask_exchange = self._pair(OPTION_EXCHANGES)
        bid_size, ask_size = self._pair(OPTION_QUOTE_SIZES)
        self._sequence += 1
        return {
            "ev": EV_QUOTE,
            "sym": book.symbol,
            "bx": bid_exchange,
            "ax": ask_exchange,
            "bp": bid / 100,
            "ap": ask / 100,
            "bs": bid_size,
            "as": ask_size,
            "t": timestamp_ms,
            "q": self._sequence,
        }

    def _trade(self, book: Book, timestamp_ms: int) -> Event:
        draw = self._random
        side = draw()
        if side < 0.4:
            cents = book.bid
        elif side < 0.8:
            cents = book.ask
        else:
            cents = option_floor((book.bid + book.ask) // 2)
        self._sequence += 1
        return {
            "ev": EV_TRADE,
            "sym": book.symbol,
            "x": OPTION_EXCHANGES[int(draw() * len(OPTION_EXCHANGES))],
            "p": cents / 100,
            "s": OPTION_TRADE_SIZES[int(draw() * len(OPTION_TRADE_SIZES))],
            "c": OPTION_CONDITIONS[int(draw() * len(OPTION_CONDITIONS))],
            "t": timestamp_ms,
            "q": self._sequence,
        }
