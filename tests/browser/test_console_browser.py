"""The web console at /ui (issue #16) in a real browser: Playwright driving Chromium against the real stack.

Sign in and out, stream a chargpt answer in the playground (and a slow stream seen growing, model output shown as
text), create a key (its secret shown once) and revoke it, upload a batch and watch it complete, open a benchmark
run and see its Chart.js plots, a virtual key seeing none of another key's keys, batches and runs, the live queue
page, and on every page a Content-Security-Policy header, no CSP violation, no uncaught script error and nothing
fetched from another origin. The element ids are the contract the console (gateway/console/) follows;
fixtures and the Chromium/playwright skip: tests/browser/conftest.py.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from conftest import admin, create_key

from browser.conftest import BrowserLog, screenshot, signed_in

try:
    from playwright.sync_api import expect
except ImportError:  # tests/browser/conftest.py skips every test here, and says why
    pass

if TYPE_CHECKING:
    from conftest import Stack
    from playwright.sync_api import Locator, Page

NAV = ("a#nav-playground", "#nav-models", "#nav-keys", "#nav-queue", "#nav-batches", "#nav-benchmarks",
       "button#sign-out")
PAGES = ("/ui/playground", "/ui/models", "/ui/keys", "/ui/queue", "/ui/batches", "/ui/benchmarks")
NUMBER = re.compile(r"\d+(\.\d+)?")
BEARER = re.compile(r"sk-gh-[\w-]+\.[\w-]+")
FINAL = ("completed", "failed", "cancelled", "expired")


# ── the API, for setting up and checking what the browser did ──────────────────────────────────────────────
def api(stack: Stack, method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else admin(stack)
    return httpx.request(method, stack.base_url + path, headers=headers, timeout=30, **kw)


def batch_lines(model: str = "echo", n: int = 2, tag: str = "browser") -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"{tag}-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": model, "messages": [{"role": "user", "content": f"{tag} {i}"}]}})
                    + b"\n" for i in range(n))


def submit_batch(stack: Stack, key: str, model: str = "echo") -> str:
    f = api(stack, "POST", "/v1/files", key, data={"purpose": "batch"},
            files={"file": ("in.jsonl", batch_lines(model), "application/jsonl")})
    assert f.status_code == 200, f.text
    b = api(stack, "POST", "/v1/batches", key, json={"input_file_id": f.json()["id"],
                                                     "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert b.status_code == 200, b.text
    return str(b.json()["id"])


def submit_run(stack: Stack, key: str | None = None, model: str = "echo") -> str:
    suite = {"name": "browser", "items": [{"id": "q1", "prompt": "hello there"}, {"id": "q2", "prompt": "and again"}]}
    r = api(stack, "POST", "/v1/benchmarks", key, json={"suite": suite, "models": [model], "repeat": 2})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def wait_status(stack: Stack, path: str, key: str | None = None, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = api(stack, "GET", path, key)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in FINAL:
            return body
        assert time.monotonic() < deadline, f"{path} still {body['status']} after {timeout} s"
        time.sleep(0.3)


def key_id_of(stack: Stack, bearer: str) -> str:
    r = api(stack, "GET", "/key/info", params={"key": bearer})
    assert r.status_code == 200, r.text
    return str(r.json()["key"])


def submit_form(form: Locator) -> None:
    """Press the form's submit button (the contract names the form, not its button)."""
    button = form.locator("button[type=submit], input[type=submit], button:not([type])")
    if button.count():
        button.first.click()
    else:
        form.evaluate("f => f.requestSubmit()")


def open_row(row: Locator) -> None:
    link = row.locator("a")
    (link.first if link.count() else row).click()


def set_value(control: Locator, value: str) -> None:
    """Fill a text or number input; a slider (type=range) is set and told so, as dragging it would."""
    if control.get_attribute("type") == "range":
        control.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true}));"
                         " el.dispatchEvent(new Event('change', {bubbles: true})); }", value)
    else:
        control.fill(value)


def canvas_drawn(canvas: Locator) -> bool:
    """Whether the canvas has any non-transparent pixel (Chart.js drew on it)."""
    return bool(canvas.evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }"))


# ── sign in, sign out ──────────────────────────────────────────────────────────────────────────────────────
def test_sign_in_with_the_master_key_and_out(page: Page, stack: Stack, browser_log: BrowserLog) -> None:
    page.goto("/ui/login")
    page.fill("input#key", "sk-gh-not-a-real-key")
    page.click("button#sign-in")
    expect(page.locator("div#error")).to_be_visible()
    expect(page.locator("div#error")).not_to_be_empty()
    assert "/ui/login" in page.url
    assert not [c for c in page.context.cookies() if c["httpOnly"]], "a session cookie for a wrong key"

    signed_in(page, stack.master_key)
    for selector in NAV:
        expect(page.locator(selector)).to_be_visible()
    session = [c for c in page.context.cookies() if c["httpOnly"] and c["sameSite"] == "Strict"]
    assert session, f"no HttpOnly SameSite=Strict session cookie: {page.context.cookies()}"
    assert stack.master_key not in str(page.context.cookies()), "the key itself is in a cookie"

    page.click("#nav-keys")
    page.wait_for_url("**/ui/keys")
    page.click("button#sign-out")
    expect(page.locator("input#key")).to_be_visible()
    page.goto("/ui/keys")  # signed out: the console asks to sign in again
    expect(page.locator("input#key")).to_be_visible()
    expect(page.locator("table#keys")).to_have_count(0)
    assert not browser_log.page_errors


# ── playground ─────────────────────────────────────────────────────────────────────────────────────────────
def test_playground_streams_a_chargpt_answer(page: Page, stack: Stack, browser_log: BrowserLog) -> None:
    signed_in(page, stack.master_key)
    page.select_option("select#model", "chargpt")
    for control in ("input#seed", "input#temperature", "input#num-chars"):
        expect(page.locator(control)).to_be_visible()
    set_value(page.locator("input#seed"), "7")
    set_value(page.locator("input#temperature"), "0.8")
    set_value(page.locator("input#num-chars"), "120")
    page.fill("textarea#prompt", "ROMEO:")
    page.click("button#send")
    output = page.locator("pre#output")
    expect(output).not_to_be_empty(timeout=60_000)
    expect(page.locator("span#ttft")).to_have_text(NUMBER, timeout=60_000)
    expect(page.locator("span#latency")).to_have_text(NUMBER, timeout=60_000)
    expect(page.locator("span#tokens")).to_have_text(NUMBER)
    expect(page.locator("span#cost")).to_be_attached()  # a local model: no price, so no cost to show
    assert output.inner_text().strip()
    assert not browser_log.page_errors


def test_playground_shows_the_cost_of_a_priced_answer(page: Page, stack: Stack) -> None:
    """``priced`` costs 0.001 per prompt token and 0.002 per completion token; the fake upstream counts 7 prompt
    tokens and answers 6 words: 0.019."""
    signed_in(page, stack.master_key)
    page.select_option("select#model", "priced")
    page.fill("textarea#prompt", "what does it cost?")
    page.click("button#send")
    expect(page.locator("pre#output")).to_contain_text("Hello from the fake upstream, friend.", timeout=30_000)
    expect(page.locator("span#cost")).to_have_text(re.compile(r"0\.019"))
    expect(page.locator("span#tokens")).to_have_text(NUMBER)


def test_playground_shows_the_stream_as_it_arrives(page: Page, stack: Stack) -> None:
    """The fake upstream's ``slow`` model sends a word every 0.2 s: part of the answer is on the page before the
    whole of it."""
    signed_in(page, stack.master_key)
    page.select_option("select#model", "slow")
    page.fill("textarea#prompt", "hi")
    page.click("button#send")
    page.wait_for_function(
        "() => { const t = document.querySelector('pre#output').textContent;"
        " return t.includes('Hello') && !t.includes('friend.'); }", timeout=30_000, polling=20)
    expect(page.locator("pre#output")).to_contain_text("Hello from the fake upstream, friend.", timeout=30_000)


def test_playground_shows_model_output_as_text(page: Page, stack: Stack) -> None:
    """The ``echo`` model answers the prompt: markup in it is shown as characters, never run or rendered."""
    signed_in(page, stack.master_key)
    markup = '<img src="/nothing.png" onerror="window.__injected = 1"><b id="bold">x</b>'
    page.select_option("select#model", "echo")
    page.fill("textarea#prompt", markup)
    page.click("button#send")
    output = page.locator("pre#output")
    expect(output).to_contain_text(markup, timeout=30_000)
    expect(output.locator("img")).to_have_count(0)
    expect(page.locator("#bold")).to_have_count(0)
    assert page.evaluate("() => window.__injected") is None


# ── keys ───────────────────────────────────────────────────────────────────────────────────────────────────
def test_create_a_key_see_it_once_and_revoke_it(page: Page, stack: Stack) -> None:
    alias = f"browser-{uuid.uuid4().hex[:8]}"
    signed_in(page, stack.master_key)
    page.goto("/ui/keys")
    expect(page.locator("canvas#spend")).to_be_visible()
    form = page.locator("form#create-key")
    form.locator("[name=key_alias]").fill(alias)
    form.locator("[name=models]").fill("echo")
    form.locator("[name=max_budget]").fill("5")
    form.locator("[name=rpm_limit]").fill("100")
    form.locator("[name=tpm_limit]").fill("100000")
    submit_form(form)
    new_key = page.locator("div#new-key")
    expect(new_key).to_contain_text(BEARER)
    found = BEARER.search(new_key.inner_text())
    assert found, new_key.inner_text()
    bearer = found.group(0)

    info = api(stack, "GET", "/key/info", params={"key": bearer}).json()
    key_id = info["key"]
    assert info["info"]["key_alias"] == alias and info["info"]["models"] == ["echo"], info
    assert info["info"]["max_budget"] == 5 and info["info"]["rpm_limit"] == 100, info
    assert api(stack, "GET", "/v1/models", bearer).status_code == 200
    screenshot(page, "keys-created")

    page.reload()  # shown once: not on the page again
    assert bearer not in page.content()
    row = page.locator(f"table#keys tr[data-key-id='{key_id}']")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(alias)
    row.locator("button.revoke").click()
    expect(row.filter(has_not_text=re.compile("revoked", re.I))).to_have_count(0)
    expect(row.locator("button.revoke:enabled")).to_have_count(0)
    assert api(stack, "GET", "/v1/models", bearer).status_code == 401
    page.reload()
    expect(page.locator(f"table#keys tr[data-key-id='{key_id}']").filter(
        has_not_text=re.compile("revoked", re.I))).to_have_count(0)


# ── batches ────────────────────────────────────────────────────────────────────────────────────────────────
def test_upload_a_batch_and_watch_it_complete(page: Page, stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "two-lines.jsonl"
    path.write_bytes(batch_lines("echo"))
    signed_in(page, stack.master_key)
    page.goto("/ui/batches")
    rows = page.locator("table#batches tr[data-batch-id]")
    expect(page.locator("table#batches")).to_be_attached()
    before = set(rows.evaluate_all("rs => rs.map(r => r.dataset.batchId)"))
    page.set_input_files("input#batch-file", str(path))
    page.select_option("select#endpoint", "/v1/chat/completions")
    submit_form(page.locator("form#upload"))
    page.wait_for_function(
        "n => document.querySelectorAll('table#batches tr[data-batch-id]').length > n", arg=len(before))
    new = [b for b in rows.evaluate_all("rs => rs.map(r => r.dataset.batchId)") if b not in before]
    assert len(new) == 1, new
    batch_id = new[0]
    # the page follows the batch without being reloaded
    expect(page.locator(f"tr[data-batch-id='{batch_id}'] td.status")).to_have_text(
        re.compile(r"^\s*completed\s*$"), timeout=90_000)
    batch = api(stack, "GET", f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "completed" and batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}


# ── benchmarks ─────────────────────────────────────────────────────────────────────────────────────────────
def test_open_a_benchmark_run_and_see_its_plots(page: Page, stack: Stack) -> None:
    """A scored sweep: every plot of ``gatehouse bench report`` is drawn (CDFs, TTFT percentiles, throughput,
    throughput vs latency per level, score per model)."""
    suite = {"name": "browser-sweep", "items": [
        {"id": "hit", "prompt": "hello there", "expected": "hello", "scorer": "contains"},
        {"id": "miss", "prompt": "and again", "expected": "nowhere", "scorer": "contains"}]}
    r = api(stack, "POST", "/v1/benchmarks", json={"suite": suite, "models": ["echo"], "sweep": [1, 2]})
    assert r.status_code == 200, r.text
    run_id = str(r.json()["id"])
    run = wait_status(stack, f"/v1/benchmarks/{run_id}")
    assert run["status"] == "completed" and run["models_summary"]["echo"]["score"] == 0.5, run
    signed_in(page, stack.master_key)
    page.goto("/ui/benchmarks")
    row = page.locator(f"table#runs tr[data-run-id='{run_id}']")
    expect(row).to_have_count(1)
    screenshot(page, "benchmarks-list")
    open_row(row)
    page.wait_for_url(f"**/ui/benchmarks/{run_id}")
    charts = page.locator("canvas.chart")
    expect(charts.first).to_be_visible()
    assert charts.count() == 6
    expect(page.locator("#box-sweep")).to_be_visible()
    expect(page.locator("#box-score")).to_be_visible()
    expect(page.locator("ul#plot-notes li")).to_have_count(0)
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, (i, box)
    deadline = time.monotonic() + 10  # Chart.js animates its first draw
    while blank := [i for i in range(charts.count()) if not canvas_drawn(charts.nth(i))]:
        assert time.monotonic() < deadline, f"canvas.chart number {blank} stays blank"
        time.sleep(0.2)
    expect(page.locator("body")).to_contain_text("echo")
    screenshot(page, "benchmark-run-plots")


# ── what a virtual key sees ────────────────────────────────────────────────────────────────────────────────
def test_a_virtual_key_sees_only_its_own(page: Page, stack: Stack) -> None:
    alice = create_key(stack, models=["echo"], key_alias=f"alice-{uuid.uuid4().hex[:8]}")
    bob = create_key(stack, models=["echo"], key_alias=f"bob-{uuid.uuid4().hex[:8]}")
    alice_batch, bob_batch = submit_batch(stack, alice["key"]), submit_batch(stack, bob["key"])
    alice_run = submit_run(stack, alice["key"])
    bob_run = submit_run(stack, bob["key"])
    wait_status(stack, f"/v1/benchmarks/{alice_run}")
    wait_status(stack, f"/v1/benchmarks/{bob_run}")

    signed_in(page, bob["key"])
    expect(page.locator("select#model option")).not_to_have_count(0)  # filled from GET /v1/models
    options = page.locator("select#model option").evaluate_all("os => os.map(o => o.value)")
    assert set(options) == {"echo"}, f"the playground offers models the key may not use: {options}"
    page.goto("/ui/batches")
    expect(page.locator(f"table#batches tr[data-batch-id='{bob_batch}']")).to_have_count(1)
    expect(page.locator(f"tr[data-batch-id='{alice_batch}']")).to_have_count(0)
    assert alice_batch not in page.content()
    page.goto("/ui/benchmarks")
    expect(page.locator(f"table#runs tr[data-run-id='{bob_run}']")).to_have_count(1)
    expect(page.locator(f"tr[data-run-id='{alice_run}']")).to_have_count(0)
    assert alice_run not in page.content()
    page.goto("/ui/keys")
    expect(page.locator("button#sign-out")).to_be_visible()
    expect(page.locator(f"tr[data-key-id='{alice['key_id']}']")).to_have_count(0)
    shown = page.locator("table#keys tr[data-key-id]").evaluate_all("rs => rs.map(r => r.dataset.keyId)")
    assert set(shown) <= {bob["key_id"]}, shown
    content = page.content()
    assert alice["key_id"] not in content and alice["key_alias"] not in content
    screenshot(page, "keys-as-a-virtual-key")

    # another key's run, asked for by its address: nothing of it is drawn
    response = page.goto(f"/ui/benchmarks/{alice_run}")
    assert response is not None
    if response.ok:
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(1000)
        charts = page.locator("canvas.chart")
        assert not [i for i in range(charts.count()) if canvas_drawn(charts.nth(i))], "another key's run is drawn"
        expect(page.locator("body")).not_to_contain_text("completed")
        screenshot(page, "another-keys-run")

    # the master key sees both (the tables above were not merely empty)
    page.click("button#sign-out")
    signed_in(page, stack.master_key)
    page.goto("/ui/batches")
    for batch_id in (alice_batch, bob_batch):
        expect(page.locator(f"table#batches tr[data-batch-id='{batch_id}']")).to_have_count(1)
    page.goto("/ui/benchmarks")
    for run_id in (alice_run, bob_run):
        expect(page.locator(f"table#runs tr[data-run-id='{run_id}']")).to_have_count(1)


# ── queue ──────────────────────────────────────────────────────────────────────────────────────────────────
def test_the_queue_page_refreshes_itself(page: Page, stack: Stack) -> None:
    signed_in(page, stack.master_key)
    page.goto("/ui/queue")
    expect(page.locator("div#lanes")).to_be_visible()
    updated = page.locator("span#updated")
    expect(updated).not_to_be_empty()
    first = updated.inner_text()
    page.evaluate("() => { window.__sameDocument = true; }")
    expect(updated).not_to_have_text(first, timeout=6_000)
    assert page.evaluate("() => window.__sameDocument") is True, "the page was reloaded, not refreshed"


def test_the_queue_page_shows_workers_and_recent_errors(page: Page, stack: Stack) -> None:
    """An upstream failure (``status-500``: the fake upstream answers 500) lands in the recent errors; each worker
    is listed with its heartbeat."""
    r = api(stack, "POST", "/v1/chat/completions",
            json={"model": "status-500", "messages": [{"role": "user", "content": "fail please"}]})
    assert r.status_code >= 500, r.text
    request_id = r.headers.get("x-request-id")
    signed_in(page, stack.master_key)
    page.goto("/ui/queue")
    expect(page.locator("table#worker-list tr[data-worker]").first).to_be_visible()
    assert page.locator("table#worker-list tr[data-fresh='true']").count() >= 1
    errors = page.locator("table#recent-errors")
    expect(errors).to_contain_text("status-500")
    if request_id:
        expect(errors).to_contain_text(request_id)
    screenshot(page, "queue-errors")


def test_the_models_page_shows_health_and_counts(page: Page, stack: Stack) -> None:
    signed_in(page, stack.master_key)
    page.goto("/ui/models")
    row = page.locator("table#models tr[data-model='echo']")
    expect(row).to_have_count(1)
    expect(row.locator("td.health")).to_have_text("healthy")
    expect(row.locator("td.queued")).to_have_text(re.compile(r"^\d+$"))
    expect(row.locator("td.in-flight")).to_have_text(re.compile(r"^\d+$"))
    expect(row.locator("li[data-deployment]")).to_have_count(1)
    r = api(stack, "POST", "/v1/chat/completions",  # a lone deployment is never cooled down: its failures show
            json={"model": "status-500", "messages": [{"role": "user", "content": "fail please"}]})
    assert r.status_code >= 500, r.text
    page.reload()
    failing = page.locator("table#models tr[data-model='status-500'] td.health")
    expect(failing).to_have_text(re.compile(r"^healthy · [1-9]\d* failed in 5 min$"))
    screenshot(page, "models")


# ── every page: CSP, no violation, no script error, nothing from elsewhere ────────────────────────────────
def test_every_page_sends_a_csp_and_breaks_none(page: Page, stack: Stack, browser_log: BrowserLog) -> None:
    run_id = submit_run(stack)
    wait_status(stack, f"/v1/benchmarks/{run_id}")
    response = page.goto("/ui/login")
    assert response is not None and response.status == 200
    assert response.headers.get("content-security-policy"), "/ui/login: no Content-Security-Policy"
    screenshot(page, "page-login")
    signed_in(page, stack.master_key)
    missing = []
    for path in (*PAGES, f"/ui/benchmarks/{run_id}"):
        response = page.goto(path)
        assert response is not None and response.status == 200, (path, response and response.status)
        csp = response.headers.get("content-security-policy", "")
        if not re.search(r"(default|script)-src", csp):
            missing.append((path, csp))
        page.wait_for_load_state("networkidle")
        screenshot(page, "page-" + ("benchmark-run" if path.endswith(run_id) else path.removeprefix("/ui/")))
    assert not missing, f"pages without a Content-Security-Policy restricting scripts: {missing}"
    assert not browser_log.csp_violations(), browser_log.csp_violations()
    assert not browser_log.page_errors, browser_log.page_errors
    elsewhere = [u for u in browser_log.requests
                 if not u.startswith((stack.base_url + "/", "data:", "blob:"))]
    assert not elsewhere, f"the console fetched from another origin (it must work offline): {elsewhere}"


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_a_session(page: Page, path: str) -> None:
    page.goto(path)
    expect(page.locator("input#key")).to_be_visible()
    assert "/ui/login" in page.url
