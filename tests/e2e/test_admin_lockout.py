"""Admin login lockouts through a real daphne: a person in Chromium locks themselves out, a client at another
address still logs in as the same user, and an operator finds the lockout in the admin and lifts it.

Every address is a real one: the browser connects from 127.0.0.1, the other client binds 127.0.0.2, and behind the
balancer (``--proxy-headers``) the address is the forwarded one.
"""

from __future__ import annotations

import http.client
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from django.conf import settings
from playwright.async_api import Page, expect

from tests.e2e.chromium import chromium, needs_chromium
from tests.e2e.clients import TIMEOUT
from tests.e2e.processes import PROJECT_DIR

pytestmark = pytest.mark.e2e

SCREENSHOT = PROJECT_DIR / "test-artifacts" / "admin-lockout.png"
PASSWORD = "correct horse battery staple"
WRONG = "tr0ub4dor&3"
WRONG_LOGIN = "Please enter the correct username and password for a staff account."
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def staff(transactional_db, django_user_model):
    """The locked-out user, and the operator on call who lifts the lockout."""
    for name in ("alice", "oncall"):
        django_user_model.objects.create_superuser(name, f"{name}@example.com", PASSWORD)


@pytest.fixture
async def browser(tmp_path):
    async with chromium(tmp_path / "chromium-profile") as context:
        yield context


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str


@dataclass
class FormClient:
    """The admin's login form as a script at one address submits it: GET for the CSRF cookie and token, then POST."""

    port: int
    source: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)

    def log_in(self, username: str, password: str) -> Response:
        form = self._request("GET", LOGIN)
        token = CSRF_FIELD.search(form.body)
        assert form.status == 200 and token, form.status
        cookie = SimpleCookie(form.headers["Set-Cookie"])["csrftoken"].value
        body = urlencode({"csrfmiddlewaretoken": token[1], "username": username, "password": password})
        return self._request("POST", LOGIN, body, {
            "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookie}",
        })

    def _request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=TIMEOUT, source_address=(self.source, 0)
        )
        try:
            connection.request(method, path, body, {**self.headers, **(headers or {})})
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read().decode())
        finally:
            connection.close()


def logged_in(response: Response) -> bool:
    return response.status == 302 and response.headers["Location"] == "/admin/"


async def submit_login(page: Page, username: str, password: str) -> int:
    """Fill in and send the admin's login form; the status of the answer."""
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    async with page.expect_response(lambda response: response.request.method == "POST") as answer:
        await page.get_by_role("button", name="Log in").click()
    return (await answer.value).status


@needs_chromium
async def test_a_lockout_in_the_browser_spares_other_addresses_and_an_operator_lifts_it(gateway, staff, browser):
    host = f"http://127.0.0.1:{gateway.port}"
    limit = settings.AXES_FAILURE_LIMIT
    page = await browser.new_page()
    await page.goto(host + LOGIN)
    for _ in range(limit - 1):
        assert await submit_login(page, "alice", WRONG) == 200
        await expect(page.locator(".errornote")).to_contain_text(WRONG_LOGIN)

    assert await submit_login(page, "alice", WRONG) == 429
    await expect(page.get_by_role("heading", name="Too many failed logins")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text(
        f"After {limit} failed logins, logins as alice from this address are locked for 0:15:00"
    )
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=SCREENSHOT, full_page=True)
    await page.goto(host + LOGIN)
    assert await submit_login(page, "alice", PASSWORD) == 429  # the right password no longer helps from here

    assert logged_in(FormClient(gateway.port, source="127.0.0.2").log_in("alice", PASSWORD))

    # The operator on call logs in from the same browser (another username is not locked) and lifts the lockout.
    await page.goto(host + LOGIN)
    assert await submit_login(page, "oncall", PASSWORD) == 302
    await expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    await page.get_by_role("link", name="Access attempts").click()
    row = page.locator("#result_list tbody tr")
    await expect(row).to_have_count(1)
    for text in ("alice", "127.0.0.1", "Locked Out"):
        await expect(row).to_contain_text(text)
    await page.goto(host + "/admin/axes/accessfailurelog/")
    await expect(page.locator("#result_list tbody tr").filter(has_text="alice")).to_have_count(limit + 1)

    await page.goto(host + "/admin/axes/accessattempt/")
    await row.get_by_role("checkbox").check()
    await page.locator("select[name=action]").select_option("delete_selected")
    await page.get_by_role("button", name="Go").click()
    await page.get_by_role("button", name=re.compile("Yes, I.m sure")).click()
    await expect(page.locator(".messagelist")).to_contain_text("Successfully deleted 1 access attempt.")
    await expect(row).to_have_count(0)

    await page.get_by_role("button", name="Log out").click()
    await page.goto(host + LOGIN)
    assert await submit_login(page, "alice", PASSWORD) == 302
    await expect(page.get_by_role("heading", name="Site administration")).to_be_visible()
    assert WRONG not in gateway.log() and PASSWORD not in gateway.log()


async def test_behind_the_balancer_the_forwarded_address_is_locked_out(gateway_factory, staff):
    gateway = gateway_factory("proxied-admin", args=("--proxy-headers",))
    attacker = FormClient(gateway.port, headers={"X-Forwarded-For": "203.0.113.9"})
    statuses = [attacker.log_in("alice", WRONG).status for _ in range(settings.AXES_FAILURE_LIMIT)]
    assert statuses == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]
    assert attacker.log_in("alice", PASSWORD).status == 429

    # The same balancer (the same peer, 127.0.0.1) relays another client: not locked out.
    assert logged_in(FormClient(gateway.port, headers={"X-Forwarded-For": "203.0.113.10"}).log_in("alice", PASSWORD))
