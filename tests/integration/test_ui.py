"""The web playground and dashboard at /ui, driven in headless chromium against a real server.

A real `gpt-server serve` runs the packaged SmolLM2 GGUF behind an API key. The browser enters
the key, streams a chat answer, and watches the dashboard show the worker ready with live rates.
A second server serves only the packaged MiniLM embedding model: its tab appears and works.
Each kind's tab is one module under static/js/tabs/, listed by /ui/tabs.json. The dashboard's
charts draw the gateway's own history (one sample a second here; five by default).
Screenshots go to test-artifacts/ (the dashboard's: test-artifacts/dashboard.png).
"""

from __future__ import annotations

import io
import itertools
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from gpt_server.config import parse_config
from gpt_server.gateway.routes.dashboard import model_rows
from gpt_server.gateway.routes.ui import STATIC_DIR
from gpt_server.protocol.worker import WorkerView
from tests.embed_helpers import MINILM, entry
from tests.helpers import ARTIFACTS, Server, base_config, served, smollm_entry
from tests.ui_helpers import browser_page

KEY = "ui-test-key"
ADMIN_KEY = "ui-admin-key"
INTERVAL = 1  # seconds per dashboard sample (the charts' history)
KIND_TABS = ["chat", "embeddings", "rerank", "moderation", "speech", "images"]  # in tab-bar order
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg = base_config(api_keys=KEY, models=[smollm_entry(n_ctx=1024)])
    cfg["serve_args"]["admin_keys"] = [ADMIN_KEY]
    cfg["serve_args"]["dashboard_interval"] = INTERVAL
    with served(cfg, tmp_path_factory.mktemp("ui"), "ui", 1) as srv:
        yield srv


def test_static_files_served_without_key_and_confined(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/ui", follow_redirects=True, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<script type="module" src="js/app.js">' in r.text
    for asset in ("style.css", "js/app.js", "js/markdown.js", "js/highlight.js"):
        a = httpx.get(f"{server.base_url}/ui/{asset}", timeout=10)
        assert a.status_code == 200, asset
        assert "http://" not in a.text and "https://cdn" not in a.text, f"{asset} must not load remote code"
    for bad in ("../routes/ui.py", "..%2f..%2fconfig.py", "nope.js", "../__init__.py"):
        assert httpx.get(f"{server.base_url}/ui/{bad}", timeout=10).status_code == 404, bad


def test_tab_manifest_lists_the_tab_modules_on_disk(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/ui/tabs.json", timeout=10)  # public, like the page
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    tabs = r.json()["tabs"]
    on_disk = sorted(f"js/tabs/{p.name}" for p in (STATIC_DIR / "js" / "tabs").glob("*.js"))
    assert tabs == on_disk and {f"js/tabs/{t}.js" for t in KIND_TABS} <= set(tabs)
    for path in tabs:
        a = httpx.get(f"{server.base_url}/ui/{path}", timeout=10)
        assert a.status_code == 200 and a.headers["content-type"].startswith("text/javascript"), path
        assert "export default" in a.text and "http://" not in a.text, path
    page = httpx.get(f"{server.base_url}/ui/", timeout=10).text
    for tab in KIND_TABS:  # the modules render their own sections: none is left in the page
        assert f'id="tab-{tab}"' not in page and f'data-tab="{tab}"' not in page, tab


def test_dashboard_and_models_need_key_and_report_workers(server: Server) -> None:
    assert httpx.get(f"{server.base_url}/v1/dashboard", timeout=10).status_code == 401
    d = httpx.get(f"{server.base_url}/v1/dashboard", headers=server.headers(), timeout=10).json()
    (w,) = d["workers"]
    assert w["state"] == "ready" and "address" not in w and "pid" not in w
    assert {"queue_length", "requests_total", "tokens_total", "has_error", "capacity"} <= set(w)
    admin = httpx.get(f"{server.base_url}/admin/dashboard", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10).json()
    (aw,) = admin["workers"]
    assert aw["address"].startswith("http://127.0.0.1:") and "last_error" in aw
    (m,) = d["models"]
    assert m["name"] == "smollm2" and m["state"] == "ready" and m["ready_workers"] == 1
    assert "chat" in m["capabilities"] and m["work_mode"] == "llama_cpp"
    cards = httpx.get(f"{server.base_url}/v1/models", headers=server.headers(), timeout=10).json()["data"]
    assert all("chat" in c["capabilities"] for c in cards)


def test_configured_model_without_worker_shows_loading() -> None:
    other = smollm_entry("other", replicas=2)
    other["other"]["alias"] = "other-alias"
    cfg = parse_config(base_config(models=[smollm_entry(), other]))
    worker = WorkerView(worker_id="w1", address="http://127.0.0.1:1", model_name="smollm2", capacity=1,
                        state="ready", capabilities=["chat"], tokens_total=5)
    rows = {r["name"]: r for r in model_rows(cfg, [worker])}
    assert rows["smollm2"]["state"] == "ready" and rows["smollm2"]["tokens_total"] == 5
    assert rows["other"]["state"] == "loading" and rows["other"]["configured_workers"] == 2
    sick = worker.model_copy(update={"state": "unhealthy"})
    assert model_rows(cfg, [sick])[0]["state"] == "unhealthy"


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (220, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _shot(page, name: str) -> Path:  # noqa: ANN001
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


STREAM_WATCH = """() => {
  window.__seen = new Set();
  new MutationObserver(() => {
    const b = document.querySelector('#chat-log .msg.assistant .body');
    if (b && b.textContent) window.__seen.add(b.textContent.length);
  }).observe(document.querySelector('#chat-log'), {subtree: true, childList: true, characterData: true});
}"""


def test_browser_chat_streams_and_dashboard_is_live(server: Server) -> None:
    # the page runs under its own strict CSP (no eval): every probe below is a function
    with browser_page(server.base_url) as (page, foreign):
        page.goto(f"{server.base_url}/ui/")
        page.wait_for_selector("#banner:not([hidden])")
        assert "API key" in page.inner_text("#banner")
        page.fill("#api-key", KEY)
        page.click("#save-key")
        page.wait_for_function("() => document.querySelectorAll('#chat-model option').length >= 2")
        assert page.evaluate("() => localStorage.getItem('gpt-server.api-key')") == KEY
        options = page.eval_on_selector_all("#chat-model option", "os => os.map(o => o.value)")
        assert {"smollm2", "gpt-3.5-turbo"} <= set(options)
        # every tab module is mounted in order; only chat (always) and dashboard show for a chat model
        assert page.eval_on_selector_all("#tabs button", "bs => bs.map(b => b.dataset.tab)") == [*KIND_TABS, "dashboard"]
        shown = page.eval_on_selector_all("#tabs button:not([hidden])", "bs => bs.map(b => b.dataset.tab)")
        assert shown == ["chat", "dashboard"]  # no embedding, rerank, … model served
        assert page.is_visible("#tab-chat.active")

        page.fill("#chat-max-tokens", "48")
        page.fill("#chat-system", "You are a helpful assistant.")
        page.evaluate(STREAM_WATCH)
        page.fill("#chat-input", "Write one sentence about the sea.")
        page.keyboard.press("Enter")
        page.wait_for_selector("#chat-log .msg.user")
        page.wait_for_function(
            "() => document.querySelector('#chat-log .msg.assistant .meta')?.textContent.includes('completion tokens')",
            timeout=120_000,
        )
        reply = page.inner_text("#chat-log .msg.assistant .body").strip()
        assert len(reply) > 3
        assert page.evaluate("() => window.__seen.size") >= 2, "the reply should appear piece by piece"
        assert page.locator("#chat-log .msg.error").count() == 0
        _shot(page, "ui_chat")

        # tool calls come back as cards (tool_choice=required is enforced by constrained decoding)
        page.click("#chat-clear")
        assert page.locator("#chat-log .msg").count() == 0
        page.click("#chat-tools-box summary")
        page.fill("#chat-tools", json.dumps([WEATHER_TOOL]))
        page.select_option("#chat-tool-choice", "required")
        page.fill("#chat-temperature", "0")
        page.fill("#chat-max-tokens", "128")
        page.fill("#chat-input", "What is the weather in Rome?")
        page.click("#chat-send")
        page.wait_for_selector("#chat-log .msg.assistant .tool-card", timeout=120_000)
        page.wait_for_function("() => !document.querySelector('#chat-send').disabled", timeout=120_000)
        assert "get_weather" in page.inner_text("#chat-log .tool-card .name")
        args = json.loads(page.inner_text("#chat-log .tool-card pre"))
        assert isinstance(args, dict) and "city" in args
        _shot(page, "ui_tool_call")
        page.fill("#chat-tools", "")

        # image attach: the message goes out as OpenAI content parts with a data: URL
        sent: list[dict] = []
        page.on("request", lambda r: sent.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") and r.method == "POST" else None)
        page.click("#chat-clear")
        page.set_input_files("#chat-image", files=[{"name": "red.png", "mimeType": "image/png", "buffer": _png()}])
        page.wait_for_selector("#chat-attachments img")
        page.fill("#chat-max-tokens", "8")
        page.fill("#chat-input", "Describe this image.")
        page.click("#chat-send")
        page.wait_for_selector("#chat-log .msg.user img.thumb")
        page.wait_for_function("() => !document.querySelector('#chat-send').disabled", timeout=120_000)
        parts = sent[-1]["messages"][-1]["content"]
        assert parts[0] == {"type": "text", "text": "Describe this image."}
        assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
        # a text-only model either answers or refuses: the UI shows one or the other
        errors = page.locator("#chat-log .msg.error").all_inner_texts()
        answers = [t.strip() for t in page.locator("#chat-log .msg.assistant .body").all_inner_texts() if t.strip()]
        assert errors or answers
        if errors:  # no empty assistant bubble is left behind a refusal
            assert "400" in errors[0] and not page.locator("#chat-log .msg.assistant").count()
        _shot(page, "ui_image_attach")

        # Markdown + highlighting, run in the page itself (escapes HTML, highlights code)
        html = page.evaluate(
            "async () => (await import('/ui/js/markdown.js')).renderMarkdown("
            "'**b** <script>x</script>\\n\\n```python\\ndef f():\\n    return 1\\n```')"
        )
        assert "<strong>b</strong> &lt;script&gt;" in html
        assert '<span class="tok-kw">def</span>' in html and '<span class="tok-num">1</span>' in html

        page.click("#tabs button[data-tab=dashboard]")
        row = "#dash-workers tbody tr[data-worker]"
        page.wait_for_selector(f"{row} .state.ready")
        assert "127.0.0.1" not in page.inner_text(row)  # the client view: no worker address
        page.fill("#admin-key", ADMIN_KEY)
        page.click("#admin-form button")
        page.wait_for_function(f"() => document.querySelector('{row}').innerText.includes('127.0.0.1')")
        assert page.inner_text("#admin-status") == "admin view"
        assert page.inner_text("#dash-models tbody tr[data-model=smollm2] .state") == "ready"
        # the admin key also shows model management: state per replica, load/unload/scale buttons
        manage = "#admin-models tbody tr[data-admin-model=smollm2]"
        page.wait_for_selector(f"{manage} .state.ready")
        assert "#0 ready" in page.inner_text(manage)
        assert [b.inner_text() for b in page.locator(f"{manage} button").all()] == ["Load", "Unload", "+1", "−1"]
        # a request while the dashboard polls: its token rate shows up
        page.evaluate(
            """(key) => fetch('/v1/chat/completions', {method: 'POST',
                 headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + key},
                 body: JSON.stringify({model: 'smollm2', max_tokens: 32,
                   messages: [{role: 'user', content: 'Count to five.'}]})})""",
            KEY,
        )
        page.wait_for_function(
            f"() => {{ const c = document.querySelectorAll('{row} td'); return c.length && parseFloat(c[9].textContent) > 0; }}",
            timeout=60_000,
        )
        cells = page.eval_on_selector_all(f"{row} td", "cs => cs.map(c => c.textContent)")
        assert int(cells[7]) >= 2, cells  # requests_total from the worker's heartbeat
        assert re.fullmatch(r"\d+(\.\d)?", cells[9]), cells
        _shot(page, "ui_dashboard")
        assert not foreign, f"the UI must not reach outside the server: {foreign}"


def test_embeddings_tab_appears_for_an_embedding_model_and_works(tmp_path: Path) -> None:
    with served(base_config(models=[entry("minilm", MINILM, "embedding")]), tmp_path, "ui_embed") as srv:
        with browser_page(srv.base_url) as (page, foreign):
            errors: list[str] = []  # CSP violations and failed tab imports land here (not /favicon.ico's 404)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "favicon" not in m.location["url"] else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{srv.base_url}/ui/#embeddings")  # no API key configured; the hash picks the tab
            page.wait_for_selector("#tab-embeddings.active")
            shown = page.eval_on_selector_all("#tabs button:not([hidden])", "bs => bs.map(b => b.dataset.tab)")
            assert shown == ["chat", "embeddings", "dashboard"]
            assert page.eval_on_selector_all("#emb-model option", "os => os.map(o => o.value)") == ["minilm"]
            assert page.locator("#chat-model option").count() == 0  # an embedding model does not chat
            page.fill("#emb-query", "A cat is sitting on a mat.")
            page.fill("#emb-texts", "Quarterly revenue grew by twelve percent.\nThe cat sits on the mat.")
            page.click("#emb-run")
            page.wait_for_selector("#emb-out table")
            assert page.inner_text("#emb-out p") == "384 dimensions"
            rows = page.locator("#emb-out tbody tr td:first-child").all_inner_texts()
            assert rows == ["The cat sits on the mat.", "Quarterly revenue grew by twelve percent."]
            _shot(page, "ui_embeddings")
            assert not errors, errors
            assert not foreign, f"the UI must not reach outside the server: {foreign}"


def _traffic(server: Server, n: int, *, spread: float = 0.0) -> None:
    """``n`` chat requests through the openai SDK, streamed and not, two at a time, ``spread``
    seconds apart per thread (so the charts get several samples)."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)

    def one(i: int) -> None:
        time.sleep(spread * (i // 2))
        msgs = [{"role": "user", "content": f"Say a short sentence about the number {i}."}]
        if i % 2:
            client.chat.completions.create(model="gpt-3.5-turbo", messages=msgs, max_tokens=8 + 4 * i)  # the alias counts as its model
        else:
            for _ in client.chat.completions.create(model="smollm2", messages=msgs, max_tokens=8 + 4 * i, stream=True):
                pass

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(n)))


def _dashboard(server: Server, **params: float) -> dict:
    r = httpx.get(f"{server.base_url}/v1/dashboard", params=params, headers=server.headers(), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_dashboard_history_and_model_rows_from_real_traffic(server: Server) -> None:
    before = _dashboard(server)["history"]["models"].get("smollm2", {"t": []})["t"]
    since = before[-1] if before else 0.0
    _traffic(server, 4)
    deadline = time.monotonic() + 30
    while True:  # the window of the last request closes within a sample or two
        h = _dashboard(server, since=since)["history"]["models"]["smollm2"]
        if round(sum(h["req_s"]) * INTERVAL) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert round(sum(h["req_s"]) * INTERVAL) >= 4, h  # requests/s × seconds per sample = the requests
    assert set(h) == {"t", "tok_s", "req_s", "ttft_p50", "ttft_p99", "latency_p50", "latency_p99", "queue"}
    assert all(len(v) == len(h["t"]) for v in h.values()) and h["t"] == sorted(h["t"])
    assert max(h["tok_s"]) > 0 and max(h["queue"]) >= 1
    ttft = [x for x in h["ttft_p50"] if x is not None]
    assert ttft and all(0 < x < 60 for x in ttft)
    pairs = [(a, b) for a, b in zip(h["latency_p50"], h["latency_p99"], strict=True) if a is not None]
    assert pairs and all(0 < a <= b for a, b in pairs)
    d = _dashboard(server)
    assert "gpt-3.5-turbo" not in d["history"]["models"] and d["history"]["interval"] == INTERVAL
    (m,) = d["models"]
    assert (m["kind"], m["kind_label"], m["work_mode"], m["context_length"]) == ("auto", "chat", "llama_cpp", 1024)
    assert (m["ready_workers"], m["configured_workers"], m["live_workers"]) == (1, 1, 1)
    assert m["memory_bytes"] > 32 << 20, m  # the worker process with its GGUF model loaded
    (w,) = d["workers"]
    assert w["rss_bytes"] == m["memory_bytes"] and w["engine"] == "llama_cpp" and not {"address", "pid", "last_error"} & set(w)
    r = httpx.get(f"{server.base_url}/v1/dashboard", params={"since": "-1"}, headers=server.headers(), timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "query.since"


def test_browser_dashboard_draws_the_charts(server: Server) -> None:
    from PIL import Image

    with browser_page(server.base_url) as (page, foreign):
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "favicon" not in m.location["url"] else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        # a returning user: the key is stored before the UI first loads (setting it on a first
        # load without a key raced that page's own 401 polls into the console)
        page.goto(f"{server.base_url}/health")
        page.evaluate("(k) => localStorage.setItem('gpt-server.api-key', k)", KEY)
        page.goto(f"{server.base_url}/ui/#dashboard")
        page.wait_for_selector("#tab-dashboard.active")
        page.wait_for_selector("#dash-models tbody tr[data-model=smollm2] .state.ready")
        _traffic(server, 16, spread=1.0)  # some seconds of traffic: several samples per line
        # every chart has a line; the rates' are unbroken runs of samples (TTFT and latency only
        # have a point where a request began or ended in that second)
        points = """([id, n]) => [...document.querySelectorAll(`#chart-${id} path`)]
                      .some((p) => (p.getAttribute('d') || '').split('L').length >= n)"""
        for chart, n in (("tok_s", 4), ("req_s", 4), ("queue", 4), ("ttft", 1), ("latency", 1)):
            page.wait_for_function(points, arg=[chart, n], timeout=60_000)
        cells = page.eval_on_selector_all("#dash-models tbody tr[data-model=smollm2] td", "cs => cs.map(c => c.textContent)")
        assert cells[1:4] == ["chat", "llama_cpp", "1,024"] and cells[4] == "1/1", cells
        assert re.fullmatch(r"\d+(\.\d)? (MiB|GiB)", cells[5]), cells
        assert page.inner_text("#dash-legend") == "smollm2"
        # what there is, up to the whole ring: 180 samples of 1 s here
        span = re.fullmatch(r"Last (minute|(\d(?:\.5)?) minutes)", page.inner_text("#dash-span"))
        assert span and float(span[2] or 1) <= 3, page.inner_text("#dash-span")
        box = page.locator("#chart-tok_s svg").bounding_box()
        assert box is not None
        # the read-out of the newest samples; a poll that redraws the chart between the move and the
        # read replaces the read-out with a hidden, empty one (seen on CI), so move again until read
        tip = ""
        deadline = time.monotonic() + 20
        for k in itertools.count():
            page.mouse.move(box["x"] + box["width"] * (0.95 - 0.005 * (k % 2)), box["y"] + box["height"] / 3)
            tip = page.eval_on_selector("#chart-tok_s .chart-tip", "t => t.hidden ? '' : t.innerText")
            if "smollm2:" in tip or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "smollm2:" in tip, tip
        page.mouse.move(0, 0)
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(path), full_page=True)
        assert not errors, errors
        assert not foreign, f"the UI must not reach outside the server: {foreign}"
    assert path.stat().st_size > 20_000
    with Image.open(path) as img:
        assert img.width >= 1000 and img.height >= 500
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 200, "the screenshot should show tables and charts, not a blank page"
        # the model's line colour (#2f6fdb) is drawn
        assert any(abs(r - 0x2F) + abs(g - 0x6F) + abs(b - 0xDB) < 30 and n > 100 for n, (r, g, b) in colors)


def _ttft_sum_count(server: Server) -> tuple[float, float]:
    text = httpx.get(f"{server.base_url}/metrics", headers=server.headers(), timeout=10).text
    got = {}
    for part in ("sum", "count"):
        m = re.search(rf'^gpt_server_time_to_first_token_seconds_{part}{{model="smollm2"}} (\S+)$', text, re.M)
        got[part] = float(m[1]) if m else 0.0
    return got["sum"], got["count"]


def test_time_to_first_token_counts_from_the_request(server: Server) -> None:
    """The gateway's TTFT (Prometheus and the charts) runs from sending the request to the first
    token, not from the first read of a worker that answers its status line with that token."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0, timeout=120)
    prompt = "Summarise this: " + " ".join(f"item {i} is a small grey stone on a long road;" for i in range(30))
    s0, n0 = _ttft_sum_count(server)
    t0 = time.perf_counter()
    first = None
    for chunk in client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=4, stream=True):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    s1, n1 = _ttft_sum_count(server)
    assert first is not None and n1 - n0 == 1
    server_ttft = s1 - s0
    # the prompt's prefill (~300 tokens) is most of what the client waited for
    assert 0.3 * first <= server_ttft <= first + 0.05, (server_ttft, first)
