"""The admin's view of the live stream in Chromium, against real daphne processes, the simulator and Redis: the live
marker and tiers in the user list, the "Live connections" page (filter, sort, reload), and disconnecting a user."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect
from websockets.asyncio.client import connect

from streaming import codes
from tests.accounts.factories import make_key, make_user
from tests.e2e.chromium import chromium, needs_chromium
from tests.e2e.clients import bearer, expect_statuses, read_until_closed
from tests.e2e.conftest import simulator_env
from tests.e2e.processes import PROJECT_DIR

pytestmark = [pytest.mark.e2e, needs_chromium]

SCREENSHOT = PROJECT_DIR / "test-artifacts" / "admin-live-connections.png"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def people(transactional_db, django_user_model):
    django_user_model.objects.create_superuser("oncall", "oncall@example.com", PASSWORD)
    carol = make_user("carol-bot", plans={"options": "expert", "stocks": "expert"})
    dave = make_user("dave-notebook", plans={"stocks": "expert"})
    return {"carol": make_key(carol, "options")[1], "dave": make_key(dave, "stocks")[1]}


async def test_operator_sees_live_connections_and_disconnects_one(gateway_factory, simulator, people, tmp_path):
    gateway = gateway_factory("admin-live", STREAM_LOCK_TTL="1.5", **simulator_env(simulator))
    host = f"http://127.0.0.1:{gateway.port}"
    carol = await connect(gateway.url("/v1/ws/options/"), additional_headers=bearer(people["carol"]))
    dave = await connect(gateway.url("/v1/ws/stocks/"), additional_headers=bearer(people["dave"]),
                         local_addr=("127.0.0.2", 0))
    for websocket in (carol, dave):
        await expect_statuses(websocket, "connected", "auth_success")
    await carol.send('{"action":"subscribe","params":"T.*,Q.*"}')
    await expect_statuses(carol, "success", "success")

    async with chromium(tmp_path / "profile") as browser:
        page = browser.pages[0] if browser.pages else await browser.new_page()
        await page.goto(host + "/admin/login/?next=/admin/accounts/user/")
        await page.get_by_label("Username").fill("oncall")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Log in").click()

        users = page.locator("#result_list tbody tr")
        carol_row, oncall_row = users.filter(has_text="carol-bot"), users.filter(has_text="oncall")
        await expect(carol_row.locator("td.field-live img")).to_have_attribute("alt", "True")
        await expect(oncall_row.locator("td.field-live img")).to_have_attribute("alt", "False")
        await expect(carol_row.locator("td.field-tiers")).to_have_text("options: Expert, stocks: Expert")
        await expect(oncall_row.locator("td.field-tiers")).to_have_text("free")

        await page.get_by_role("link", name="Live connections").click()
        rows = page.locator("#live-connections tr.live-connection")
        await expect(rows).to_have_count(2)
        await expect(rows.filter(has_text="dave-notebook")).to_contain_text("127.0.0.2")
        # The counters come with the lock refresh (every half second here), the page reloads itself every 5 s.
        subscriptions = rows.filter(has_text="carol-bot").locator("td").nth(5)
        await expect(subscriptions).to_have_text("2", timeout=15_000)
        await expect(page.get_by_role("link", name="user", exact=True)).to_have_attribute("href", re.compile("o=-user"))
        await page.goto(host + "/admin/accounts/user/live-connections/?o=-user")
        await expect(rows.first).to_contain_text("dave-notebook")
        await page.locator("select[name=market]").select_option("options")
        await page.get_by_role("button", name="Filter").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("carol-bot")
        await page.screenshot(path=SCREENSHOT, full_page=True)
        await dave.close()
        await page.goto(host + "/admin/accounts/user/live-connections/?user=DAVE")
        await expect(page.locator("#live-connections")).to_contain_text(  # gone with his lock, seen at a reload
            "No live connections.", timeout=15_000
        )

        await page.goto(host + "/admin/accounts/user/")
        await carol_row.locator("input.action-select").check()
        await page.locator("select[name=action]").select_option(label="Disconnect live connections")
        await page.get_by_role("button", name="Go").click()
        await expect(page.locator(".messagelist")).to_contain_text("Disconnecting 1 live connection(s).")
        outcome = await read_until_closed(carol)
    assert outcome.close_code == codes.CloseCode.POLICY_VIOLATION
    assert outcome.statuses == [codes.Status.FORCE_DISCONNECT]
