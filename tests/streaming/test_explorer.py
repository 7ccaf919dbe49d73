"""The stream explorer page as Django serves it: its security headers and the project's own static script."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.templatetags.static import static


@pytest.fixture
def page(client):
    return client.get("/")


def test_the_page_loads_the_projects_own_script_and_styles(page):
    assert page.status_code == 200
    html = page.content.decode()
    assert f'src="{static("streaming/explorer.js")}"' in html
    assert f'href="{static("streaming/explorer.css")}"' in html
    assert finders.find("streaming/explorer.js") and finders.find("streaming/explorer.css")


def test_no_inline_script_or_style(page):
    html = page.content.decode()
    assert all(" src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert "<style" not in html and not re.search(r"<[^>]*\s(style|on[a-z]+)=", html)


def test_content_security_policy_allows_only_this_host(page):
    policy = dict(
        directive.strip().split(" ", 1) for directive in page["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self' ws://testserver wss://testserver"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in page["Content-Security-Policy"]


def test_the_script_never_parses_server_data_as_html():
    source = open(finders.find("streaming/explorer.js"), encoding="utf-8").read()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source


def test_only_safe_methods(client):
    assert client.post("/").status_code == 405
    assert client.head("/").status_code == 200
