"""The playground page in a real headless Chromium against a live server.

Checks what a person would see: the continuation streams in token by token (and is the
same text the API gives for the same seed), next-token bars render, a scored sentence
shows coloured tokens, a session is fed and continued, downloaded and uploaded again. Saves a screenshot to
test-artifacts/playground.png.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from app.main import create_app
from app.settings import Settings
from tests.factories import make_checkpoint
from tests.redis_server import free_port

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never a browser downloaded by `playwright install`
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The app under uvicorn on `settings.port` (a browser needs real HTTP); yields its address."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=10).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.1)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A char and a word model."""
    models = tmp_path_factory.mktemp("playground-models")
    make_checkpoint(models / "char", level="char", cell="lstm", seed=1)
    make_checkpoint(models / "word", level="word", cell="gru", seed=2)
    return models


@pytest.fixture(scope="module")
def live_server(models_dir: Path, redis_url: str) -> Iterator[str]:
    with serving(Settings(models_dir=models_dir, redis_url=redis_url, port=free_port())) as base:
        yield base


@pytest.fixture(scope="module")
def api(live_server: str) -> Iterator[httpx.Client]:
    """The same server from Python, to compare what the page shows with what the API says."""
    with httpx.Client(base_url=live_server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), "needs Debian's chromium: apt-get install -y chromium (.ci/run does this)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def problems() -> list[str]:
    """What went wrong inside the page: JS exceptions and console errors (failed requests)."""
    return []


@pytest.fixture
def page(browser: Browser, live_server: str, problems: list[str]) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: _collect_console_error(message, problems))
    page.goto(live_server)
    yield page
    page.close()
    assert not problems, problems


def _collect_console_error(message: ConsoleMessage, problems: list[str]) -> None:
    if message.type == "error":
        problems.append(f"console: {message.text}")


def test_the_page_and_its_assets_are_served(api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset, kind in (("playground.js", "javascript"), ("playground.css", "text/css")):
        response = api.get(f"/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert f"/static/{asset}" in page.text
    missing = api.get("/static/settings.py")  # only the page's own files
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


def test_stream_bars_score_and_session_as_a_person_sees_them(page: Page, api: httpx.Client) -> None:
    # Models are listed; the next-token bars for the default prompt render.
    expect(page.locator("#model option")).to_have_count(2)
    expect(page.locator("#model-info")).to_contain_text("lstm")
    bars = page.locator("#bars li")
    expect(bars).to_have_count(10)
    widths = [
        float(w) for w in bars.locator(".bar").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    ]
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)  # most likely first, bar length ~ probability
    expect(page.locator("#entropy")).to_contain_text("nats")

    # Generate: record the visible text each time the page changes it, to see it stream.
    page.fill("#prompt", "the quick")
    page.fill("#max-tokens", "40")
    page.fill("#temperature", "1")
    page.fill("#seed", "7")
    page.evaluate(
        """() => {
            window.snapshots = [];
            new MutationObserver(() => window.snapshots.push(document.querySelector('#output').textContent))
                .observe(document.querySelector('#output'), {childList: true, subtree: true, characterData: true});
        }"""
    )
    page.click("#generate")
    expect(page.locator("#generate-summary")).to_contain_text("finish reason", timeout=20_000)
    snapshots: list[str] = page.evaluate("window.snapshots")
    shown = page.locator("#output").text_content() or ""
    expected = api.post(
        "/v1/generate",
        json={"model": "char", "prompt": "the quick", "max_tokens": 40, "temperature": 1, "seed": 7},
    ).json()
    assert shown == "the quick" + expected["text"]
    assert len(expected["text"]) > 0
    growing = [s for s in snapshots if s.startswith("the quick") and len(s) > len("the quick")]
    assert len(growing) >= 5, f"the text arrived in {len(growing)} updates, not token by token"
    assert [len(s) for s in growing] == sorted(len(s) for s in growing)
    expect(page.locator("#generate-summary")).to_contain_text(f"{expected['usage']['completion_tokens']} tokens")

    # Clicking a bar appends that token to the prompt.
    first_token = page.evaluate("() => document.querySelector('#bars li .token').textContent")
    before = page.input_value("#prompt")
    bars.first.click()
    assert page.input_value("#prompt").startswith(before) and len(page.input_value("#prompt")) > len(before)
    assert first_token

    # Score with the word model: one coloured span per token, the figures of the API.
    page.select_option("#model", "word")
    page.fill("#score-text", "the cat sat on the mat")
    page.click("#score")
    scored = page.locator("#scored .tok")
    expect(scored).to_have_count(6)
    expected_score = api.post("/v1/score", json={"model": "word", "texts": ["the cat sat on the mat"]}).json()[
        "results"
    ][0]
    expect(page.locator("#score-summary")).to_contain_text(f"perplexity {expected_score['perplexity']:.2f}")
    colours = scored.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert all(c.startswith("rgb(") for c in colours) and len(set(colours)) > 1  # tinted by probability
    assert scored.first.get_attribute("title").startswith('"the"  p=')

    # A session: create, feed (tokens coloured), continue (streamed), the count grows.
    page.click("#session-new")
    expect(page.locator("#session-info")).to_contain_text("0 tokens")
    page.fill("#session-text", "the dog sat on")
    page.click("#session-feed")
    expect(page.locator("#session-transcript .tok")).to_have_count(4)
    expect(page.locator("#session-info")).to_contain_text("4 tokens")
    page.fill("#max-tokens", "5")
    page.fill("#temperature", "1")
    page.click("#session-continue")
    expect(page.locator("#session-info")).not_to_contain_text("4 tokens", timeout=20_000)
    expect(page.locator("#session-transcript .generated")).not_to_be_empty()
    session_id = page.evaluate("state.session.id")
    info = api.get(f"/v1/sessions/{session_id}").json()
    assert info["token_count"] > 4
    expect(page.locator("#session-info")).to_contain_text(f"{info['token_count']} tokens")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)

    page.click("#session-end")
    expect(page.locator("#session-info")).to_have_text("no session")
    assert api.get(f"/v1/sessions/{session_id}").status_code == 404


def test_a_session_downloads_and_uploads(page: Page, api: httpx.Client, tmp_path: Path) -> None:
    page.click("#session-new")
    page.fill("#session-text", "hello wor")
    page.click("#session-feed")
    expect(page.locator("#session-info")).to_contain_text("9 tokens")
    original = page.evaluate("state.session.id")
    with page.expect_download() as download:
        page.click("#session-download")
    assert download.value.suggested_filename == f"{original}.safetensors"
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.read_bytes() == api.get(f"/v1/sessions/{original}/export").content

    page.set_input_files("#session-upload", str(saved))  # a new session from the file
    page.wait_for_function(f"state.session && state.session.id !== '{original}'")
    expect(page.locator("#session-info")).to_contain_text("9 tokens, version 1")
    expect(page.locator("#session-transcript")).to_contain_text("imported: 9 tokens")
    imported = page.evaluate("state.session.id")
    here = api.get(f"/v1/sessions/{original}/next-token").json()["top"]
    there = api.get(f"/v1/sessions/{imported}/next-token").json()["top"]
    assert [t["id"] for t in there] == [t["id"] for t in here]


def test_a_server_error_is_shown_not_swallowed(page: Page, problems: list[str]) -> None:
    expect(page.locator("#bars li")).to_have_count(10)
    page.fill("#temperature", "-1")  # refused by the API with a 422 naming the field
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("422")
    expect(page.locator("#status")).to_contain_text("temperature")
    expect(page.locator("#status")).to_have_class("error")
    # The browser logs the refused request itself; that one is expected, nothing else is.
    assert len(problems) == 1 and "status of 422" in problems[0], problems
    problems.clear()


def test_stop_ends_a_stream_and_a_stopped_session_generation_leaves_no_text(page: Page, api: httpx.Client) -> None:
    expect(page.locator("#bars li")).to_have_count(10)
    page.fill("#max-tokens", "2048")
    page.click("#session-new")
    expect(page.locator("#session-info")).to_contain_text("0 tokens")
    page.click("#session-continue")
    page.wait_for_function("document.querySelector('#session-transcript .generated')?.textContent.length > 5")
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("stopped")
    expect(page.locator("#generate")).to_be_enabled()
    # The server cancelled the generation, so the session did not advance; the page shows that.
    expect(page.locator("#session-transcript .generated")).to_have_count(0)
    session_id = page.evaluate("state.session.id")
    assert api.get(f"/v1/sessions/{session_id}").json()["token_count"] == 0


def test_with_api_keys_the_page_asks_for_one_and_then_works(
    browser: Browser, models_dir: Path, redis_url: str, problems: list[str]
) -> None:
    settings = Settings(models_dir=models_dir, redis_url=redis_url, port=free_port(), api_keys="s3cret,other")
    with serving(settings) as base:
        page = browser.new_page()
        page.on("console", lambda message: _collect_console_error(message, problems))
        page.goto(base)  # the page itself is open
        expect(page.locator("#status")).to_contain_text("needs an API key")
        expect(page.locator("#key-box")).to_be_visible()
        page.fill("#api-key", "s3cret")
        page.dispatch_event("#api-key", "change")
        expect(page.locator("#model option")).to_have_count(2)
        expect(page.locator("#bars li")).to_have_count(10)
        page.fill("#max-tokens", "8")
        page.click("#generate")  # the stream sends the key too
        expect(page.locator("#generate-summary")).to_contain_text("8 tokens", timeout=20_000)
        expect(page.locator("#status")).to_have_text("")
        page.close()
    assert problems and all("status of 401" in p for p in problems), problems  # only the first, refused calls
    problems.clear()
