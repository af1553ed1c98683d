"""The web console (/ui, gateway/console/, ADR 0021) over HTTP, without a browser: sign in and out, the session
cookie's flags, the security headers, and the public API authenticated by the session (CSRF on state changes).
The browser tests (Playwright) drive the pages themselves."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Stack, admin, create_key

PAGES = ["/ui/playground", "/ui/models", "/ui/keys", "/ui/queue", "/ui/batches", "/ui/benchmarks",
         "/ui/benchmarks/compare?a=x&b=y", "/ui/benchmarks/bench_x"]


def _client(stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, follow_redirects=False, timeout=30)


def _sign_in(c: httpx.Client, key: str) -> httpx.Response:
    return c.post("/ui/login", data={"key": key})


def _csrf(c: httpx.Client) -> str:
    page = c.get("/ui/playground")
    assert page.status_code == 200, page.text
    marker = '<meta name="csrf-token" content="'
    start = page.text.index(marker) + len(marker)
    return page.text[start:page.text.index('"', start)]


def _cookie_flags(r: httpx.Response) -> str:
    cookies = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("gh_session=")]
    assert len(cookies) == 1, r.headers
    return cookies[0].lower()


@pytest.mark.parametrize("kind", ["master", "virtual"])
def test_sign_in_sets_a_strict_httponly_cookie(stack: Stack, kind: str) -> None:
    key = stack.master_key if kind == "master" else create_key(stack, key_alias=f"console-{kind}")["key"]
    with _client(stack) as c:
        r = _sign_in(c, key)
        assert r.status_code == 303, r.text
        assert r.headers["location"] == "/ui/playground"
        flags = _cookie_flags(r)
        assert "httponly" in flags
        assert "samesite=strict" in flags
        assert "path=/" in flags
        assert "secure" not in flags  # plain http here; https gets Secure
        page = c.get("/ui/playground")
        assert page.status_code == 200
        for element in ('id="model"', 'id="prompt"', 'id="send"', 'id="output"', 'id="sign-out"',
                        'id="nav-keys"', 'name="csrf-token"'):
            assert element in page.text


def test_bad_key_is_a_401_with_the_form(stack: Stack) -> None:
    with _client(stack) as c:
        r = _sign_in(c, "sk-gh-notakey.nope")
        assert r.status_code == 401
        assert 'id="error"' in r.text
        assert "gh_session" not in r.headers.get("set-cookie", "")
        assert _sign_in(c, "").status_code == 401


def test_sign_in_from_another_site_is_refused(stack: Stack) -> None:
    with _client(stack) as c:
        r = c.post("/ui/login", data={"key": stack.master_key}, headers={"origin": "https://evil.example"})
        assert r.status_code == 403
        assert "set-cookie" not in r.headers


def test_pages_need_a_session(stack: Stack) -> None:
    with _client(stack) as c:
        for page in PAGES:
            r = c.get(page)
            assert r.status_code == 303, page
            assert r.headers["location"] == "/ui/login"
        c.cookies.set("gh_session", "forged")
        assert c.get("/ui/keys").headers["location"] == "/ui/login"
        login = c.get("/ui/login")
        assert login.status_code == 200
        assert 'id="key"' in login.text and 'id="sign-in"' in login.text


def test_security_headers(stack: Stack) -> None:
    with _client(stack) as c:
        _sign_in(c, stack.master_key)
        for path in ["/ui/login", "/ui/playground", "/ui/static/console.js", "/ui/static/vendor/chart.umd.min.js"]:
            r = c.get(path)
            assert r.status_code in (200, 303), path
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
        for page in PAGES:
            r = c.get(page)
            assert r.status_code == 200, page
            assert "<script>" not in r.text and "style=" not in r.text  # CSP: no inline script or style


def test_the_api_takes_the_session_with_csrf_on_state_changes(stack: Stack) -> None:
    with _client(stack) as c:
        _sign_in(c, stack.master_key)
        csrf = _csrf(c)
        r = c.get("/v1/models")
        assert r.status_code == 200
        assert any(m["id"] == "chargpt" for m in r.json()["data"])
        body = {"model": "chargpt", "messages": [{"role": "user", "content": "def "}], "max_tokens": 5, "seed": 1}
        refused = c.post("/v1/chat/completions", json=body)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "csrf_failed"
        assert c.post("/v1/chat/completions", json=body, headers={"x-csrf-token": "wrong"}).status_code == 403
        ok = c.post("/v1/chat/completions", json=body, headers={"x-csrf-token": csrf})
        assert ok.status_code == 200, ok.text
        assert ok.json()["choices"][0]["message"]["content"]
        # an explicit credential wins over the cookie (a bad one is not rescued by it)
        assert c.get("/v1/models", headers={"authorization": "Bearer nope"}).status_code == 401


def test_a_virtual_key_session_sees_only_its_own_key(stack: Stack) -> None:
    key = create_key(stack, key_alias="console-own", models=["chargpt"])
    with _client(stack) as c:
        _sign_in(c, key["key"])
        models = c.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == ["chargpt"]
        assert c.get("/key/info").json()["key"] == key["key_id"]
        assert c.get("/key/list").status_code == 403
        other = create_key(stack, key_alias="console-other")
        assert c.get("/key/info", params={"key": other["key_id"]}).status_code == 403


def test_sign_out_ends_the_session(stack: Stack) -> None:
    with _client(stack) as c:
        _sign_in(c, stack.master_key)
        csrf = _csrf(c)
        session = c.cookies["gh_session"]
        assert c.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
        r = c.post("/ui/logout", data={"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    with _client(stack) as c:  # the old cookie, replayed, is dead
        c.cookies.set("gh_session", session)
        assert c.get("/v1/models").status_code == 401
        assert c.get("/ui/playground").status_code == 303


def test_a_revoked_key_signs_its_session_out(stack: Stack) -> None:
    key = create_key(stack, key_alias="console-revoked")
    with _client(stack) as c:
        _sign_in(c, key["key"])
        assert c.get("/v1/models").status_code == 200
        r = httpx.post(stack.base_url + "/key/delete", json={"keys": [key["key_id"]]}, headers=admin(stack))
        assert r.status_code == 200, r.text
        assert c.get("/v1/models").status_code == 401
        page = c.get("/ui/playground")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login"
