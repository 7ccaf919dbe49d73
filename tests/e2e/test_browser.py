"""The stream explorer in a real browser: Debian's Chromium, driven by Playwright, against the real stack.

A daphne gateway serves the page and the stream, the feed simulator is its upstream, and users and keys live in
the test database, so what passes here is what a person with a key sees at ``/``. Every tab fails its test on a
console error or an uncaught exception, and on any HTTP request that carries the key.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from urllib.parse import quote as percent_encode

import pytest
from playwright.async_api import Page, expect

from tests.accounts.factories import make_key, make_user
from tests.e2e.chromium import chromium, needs_chromium
from tests.e2e.processes import PROJECT_DIR

pytestmark = [pytest.mark.e2e, needs_chromium]

SCREENSHOT = PROJECT_DIR / "test-artifacts" / "explorer.png"
KEY_STORAGE = "cutemarkets.explorer.apiKey"
URI_SAFE = "-_.!~*'()"  # what encodeURIComponent leaves as it is
CONTRACT = "O:SPY260515C00500000"
OTHER_CONTRACT = "O:QQQ260515P00400000"
MARKUP = '<img src=x id=injected onerror="document.title=1">'
THOUSANDS = re.compile(r"^\d{1,3}(,\d{3})+$")  # the events/s figure once it is 1,000 or more
T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in milliseconds


@pytest.fixture
def keys(transactional_db):
    user = make_user("browser-user", plans={"options": "expert", "stocks": "expert"})
    return {"options": make_key(user, "options")[1], "stocks": make_key(user, "stocks")[1]}


class Tab:
    """One browser tab on the explorer page, recording what would betray a broken or leaky page."""

    def __init__(self, page: Page, host: str) -> None:
        self.page = page
        self.host = host
        self.errors: list[str] = []
        self.requests = []
        self.websocket_urls: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request))
        page.on("websocket", lambda websocket: self.websocket_urls.append(websocket.url))

    async def open(self) -> Tab:
        await self.page.goto(f"http://{self.host}/")
        await expect(self.state).to_have_text("Not connected")
        await expect(self.state).to_have_attribute("aria-live", "polite")
        return self

    @property
    def state(self):
        return self.page.get_by_role("status")

    @property
    def alert(self):
        return self.page.get_by_role("alert")

    @property
    def rows(self):
        return self.page.locator("#events tbody tr")

    def row(self, symbol: str, event_type: str):
        def cell(text: str):
            return self.page.get_by_role("cell", name=text, exact=True)

        return self.rows.filter(has=cell(symbol)).filter(has=cell(event_type))

    def log_entry(self, text: str):
        return self.page.locator("#status-log li", has_text=text)

    async def connect(self, key: str, market: str, expect_state: str = "Streaming") -> None:
        await self.page.get_by_label("API key").fill(key)
        await self.page.get_by_label("Market").select_option(market)
        await self.page.get_by_label("API key").press("Enter")
        await expect(self.state).to_have_text(expect_state)

    async def subscribe(self, items: str) -> None:
        field = self.page.get_by_label("Subscribe to")
        await field.fill(items)
        await field.press("Enter")
        for item in items.split(","):
            await expect(self.log_entry(f"subscribed to: {item.strip()}")).to_have_count(1)

    async def cells(self, symbol: str, event_type: str) -> list[str]:
        return await self.row(symbol, event_type).get_by_role("cell").all_inner_texts()

    def check(self, key: str) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        for request in self.requests:
            assert key not in request.url and key not in str(request.headers) and key not in (request.post_data or "")


@pytest.fixture
async def browser(tmp_path):
    async with chromium(tmp_path / "chromium-profile") as context:
        yield context


@pytest.fixture
async def tabs(browser, streaming_gateway, keys):
    """Open explorer tabs; each is checked for console errors and key leaks when the test ends."""
    opened: list[Tab] = []

    async def open_tab() -> Tab:
        tab = Tab(await browser.new_page(), f"127.0.0.1:{streaming_gateway.port}")
        opened.append(tab)
        return await tab.open()

    yield open_tab
    for tab in opened:
        await tab.page.close()  # before the gateway stops, so that its sockets close cleanly
        tab.check(keys["options"])
        tab.check(keys["stocks"])


def clock(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


async def test_live_rows_arrive_and_stop_after_unsubscribe(tabs, simulator, keys):
    tab = await tabs()
    await tab.connect(keys["options"], "options")
    await expect(tab.page.get_by_label("Subscribe to")).to_be_focused()  # Enter, type, Enter: no mouse needed
    await tab.subscribe(f"T.*, Q.{CONTRACT}")
    trade = {"ev": "T", "sym": CONTRACT, "x": 301, "p": 4.25, "s": 3, "c": [209], "t": T0 + 1_500, "q": 1}
    quote = {"ev": "Q", "sym": CONTRACT, "bx": 302, "ax": 303, "bp": 4.2, "ap": 4.3, "bs": 10, "as": 20,
             "t": T0 + 2_250, "q": 2}
    await simulator.send_events("options", [trade, quote, {**trade, "sym": MARKUP, "q": 3}])

    await expect(tab.row(CONTRACT, "T")).to_have_count(1)
    assert await tab.cells(CONTRACT, "T") == [CONTRACT, "T", "4.25", "3", clock(T0 + 1_500), "301"]
    await expect(tab.row(CONTRACT, "Q")).to_have_count(1)
    assert await tab.cells(CONTRACT, "Q") == [CONTRACT, "Q", "4.20 / 4.30", "10 × 20", clock(T0 + 2_250), "302 / 303"]
    await expect(tab.row(MARKUP, "T")).to_have_count(1)  # shown as text, never parsed as HTML
    await expect(tab.page.locator("#injected")).to_have_count(0)

    await tab.page.get_by_role("button", name="Unsubscribe from T.*").click()
    await expect(tab.log_entry("unsubscribed to: T.*")).to_have_count(1)
    await expect(tab.page.get_by_role("list", name="Active subscriptions")).to_have_text(f"Q.{CONTRACT}×")
    rows_before = await tab.rows.count()
    # Trades would have matched T.*; the quote after them is still subscribed and arrives after them on the
    # same socket, so once it is on screen the trades would be too.
    await simulator.send_events("options", [
        {**trade, "p": 9.99, "t": T0 + 5_000, "q": 4},
        {**trade, "sym": OTHER_CONTRACT, "t": T0 + 5_000, "q": 5},
        {**quote, "bp": 4.1, "t": T0 + 6_000, "q": 6},
    ])
    await expect(tab.row(CONTRACT, "Q").get_by_role("cell").nth(2)).to_have_text("4.10 / 4.30")
    assert await tab.cells(CONTRACT, "T") == [CONTRACT, "T", "4.25", "3", clock(T0 + 1_500), "301"]
    await expect(tab.row(OTHER_CONTRACT, "T")).to_have_count(0)
    assert await tab.rows.count() == rows_before


async def test_thousands_of_events_per_second_keep_the_page_responsive(tabs, simulator, keys):
    tab = await tabs()
    await tab.connect(keys["stocks"], "stocks")
    await tab.subscribe("T.*, Q.*, AM.*, LULD.*")
    await tab.page.evaluate(MEASURE_FRAME_GAPS)

    async def feed(seconds: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            await simulator.emit("stocks", 250)
            await asyncio.sleep(0.05)
        await simulator.flush_aggregates("stocks")

    feeding = asyncio.create_task(feed(2.5))
    await expect(tab.page.locator("#events-per-second")).to_have_text(THOUSANDS)
    await feeding
    await expect(tab.row("AAPL", "AM")).to_have_count(1)
    assert await tab.rows.count() == int(await tab.page.locator("#row-count").inner_text())
    assert 74 * 3 <= await tab.rows.count() <= 74 * 4  # T, Q and AM of every ticker, LULD of some
    assert await tab.page.evaluate("window.longestFrameGap") < 250  # milliseconds between two frames
    await expect(tab.state).to_have_text("Streaming")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await tab.page.screenshot(path=SCREENSHOT)


async def test_the_table_is_capped_at_500_rows(tabs, simulator, keys):
    tab = await tabs()
    await tab.connect(keys["options"], "options")
    await tab.subscribe("Q.*")
    await simulator.emit("options", 3_000)  # quotes for far more than 500 of the 6,140 contracts
    await expect(tab.page.locator("#row-count")).to_have_text("500")
    await expect(tab.rows).to_have_count(500)
    symbols = await tab.page.locator("#events tbody tr td:first-child").all_inner_texts()
    assert symbols == sorted(symbols)


async def test_a_stocks_key_on_the_options_market_explains_4401(tabs, keys):
    tab = await tabs()
    await tab.connect(keys["stocks"], "options", expect_state="Closed (4401)")
    await expect(tab.alert).to_contain_text("Closed with code 4401.")
    await expect(tab.alert).to_contain_text("The key was refused")
    await expect(tab.alert).to_contain_text(
        "Server said: authentication failed: this API key is for stocks; use it on /v1/ws/stocks/"
    )
    await expect(tab.log_entry("auth_failed")).to_have_count(1)


async def test_a_second_tab_of_the_same_user_gets_4409(tabs, keys):
    first = await tabs()
    await first.connect(keys["options"], "options")
    second = await tabs()
    await second.connect(keys["stocks"], "stocks", expect_state="Closed (4409)")
    await expect(second.alert).to_contain_text("Another connection of this account is already open")

    await first.page.get_by_role("button", name="Disconnect").click()
    await expect(first.state).to_have_text("Closed (1000)")
    await expect(first.alert).to_contain_text("Closed normally.")
    await second.page.get_by_role("button", name="Connect", exact=True).click()
    await expect(second.state).to_have_text("Streaming")
    await expect(second.alert).to_be_hidden()


async def test_the_key_stays_in_this_tabs_session_storage(tabs, browser, keys):
    tab = await tabs()
    await tab.connect(keys["options"], "options")
    page = tab.page
    assert await page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == keys["options"]
    assert await page.evaluate("localStorage.length") == 0
    assert await browser.cookies() == []
    api_key = percent_encode(keys["options"], safe=URI_SAFE)
    assert tab.websocket_urls == [f"ws://{tab.host}/v1/ws/options/?api_key={api_key}"]
    await page.reload()
    await expect(page.get_by_label("API key")).to_have_value(keys["options"])
    other = await tabs()
    await expect(other.page.get_by_label("API key")).to_have_value("")


MEASURE_FRAME_GAPS = """() => {
  window.longestFrameGap = 0;
  let last = performance.now();
  const tick = (now) => {
    window.longestFrameGap = Math.max(window.longestFrameGap, now - last);
    last = now;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""
