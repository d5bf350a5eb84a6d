"""A logged-in console client for HTTP-level tests of /console/ pages.

`async with console_client(admin_url, token) as c:` logs in as a person
would (GET the login form, POST the token with its CSRF field) and gives a
client whose `get`/`post` speak to paths under /console. `c.csrf` is the
session's CSRF token; `post` adds it unless `csrf=None` is passed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

_CSRF = re.compile(r'name="_csrf" value="([^"]*)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


class ConsoleClient:
    def __init__(self, http: aiohttp.ClientSession, base: str):
        self.http = http
        self.base = base.rstrip("/")
        self.csrf = ""

    async def login(self, token: str) -> aiohttp.ClientResponse:
        async with self.http.get(self.base + "/console/login") as r:
            pre = csrf_of(await r.text())
        r = await self.http.post(self.base + "/console/login",
                                 data={"token": token, "_csrf": pre}, allow_redirects=False)
        r.release()
        if r.status == 303:
            # The home page may redirect to the first page the viewer sees.
            async with self.http.get(self.base + "/console/") as home:
                self.csrf = csrf_of(await home.text())
        return r

    async def get(self, path: str, **kw: Any) -> tuple[int, str]:
        async with self.http.get(self.base + "/console" + path, allow_redirects=False,
                                 **kw) as r:
            return r.status, await r.text()

    async def post(self, path: str, data: dict[str, Any] | aiohttp.FormData | None = None,
                   *, csrf: str | None | bool = True, follow: bool = False
                   ) -> tuple[int, str, str]:
        """(status, body, Location) of a POST; the session's CSRF token is
        added unless `csrf` is None (none sent) or a string (sent instead)."""
        if isinstance(data, aiohttp.FormData):
            form = data
            if csrf is True:
                form.add_field("_csrf", self.csrf)
            elif isinstance(csrf, str):
                form.add_field("_csrf", csrf)
        else:
            fields = dict(data or {})
            if csrf is True:
                fields["_csrf"] = self.csrf
            elif isinstance(csrf, str):
                fields["_csrf"] = csrf
            form = fields  # type: ignore[assignment]
        async with self.http.post(self.base + "/console" + path, data=form,
                                  allow_redirects=follow) as r:
            return r.status, await r.text(), r.headers.get("Location", "")


@contextlib.asynccontextmanager
async def console_client(admin_url: str, token: str | None = None,
                         login: bool = True) -> AsyncIterator[ConsoleClient]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        client = ConsoleClient(http, admin_url)
        if login and token is not None:
            r = await client.login(token)
            assert r.status == 303, f"login failed: {r.status}"
        yield client
