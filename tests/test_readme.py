"""The README and the pages of docs/ tell the truth: curl examples run, cover every endpoint, settings exist.

Every `curl` line in a page's code blocks is parsed (method, path, JSON body) and sent,
in order, to the app over ASGI with tiny models named like the quickstart's; all must
succeed. `$S` (or any `$NAME`) in a path is the session the last `POST /v1/sessions`
example of the same page created. `-o FILE` keeps the answer's bytes under that name, and
`--data-binary @FILE` sends them back with the example's `Content-Type` header. Together the pages have an example for every
endpoint. The configuration table (docs/configuration.md) must list every server setting
with its real default, every `RNNLM_` name a page mentions must exist, and every
relative link between the pages must lead to a file that exists. No page points outside
the repository except to `../shared/data`, the optional local mirror of the corpora.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.quickstart import QuickstartSettings
from app.settings import Settings
from tests.factories import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
CONFIGURATION = ROOT / "docs" / "configuration.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")
URL = re.compile(r"^(?:https?://)?(?:localhost|127\.0\.0\.1):\d+(/[^\s]*)$")
VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
# RNNLM_ names that are not server settings: read by the trainer, the quickstart and the tests.
OTHER_VARIABLES = {"RNNLM_DATA_DIR", "RNNLM_TEST_REDIS_URL"} | {
    f"RNNLM_QUICKSTART_{name.upper()}" for name in QuickstartSettings.model_fields
}


@dataclass(frozen=True)
class CurlExample:
    line: int
    method: str
    path: str  # may hold $S
    body: Any
    output: str | None = None  # -o FILE: the answer's bytes are kept under this name
    upload: str | None = None  # --data-binary @FILE: those bytes are the body
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return f"line {self.line}: {self.method} {self.path}"


def code_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each fenced ```sh / ```bash / ```console block."""
    blocks = []
    for match in re.finditer(r"^```(?:sh|bash|console)\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return blocks


def curl_examples(text: str) -> list[CurlExample]:
    """The curl commands of the README's shell code blocks."""
    examples = []
    for first_line, block in code_blocks(text):
        examples += curl_commands(block, first_line)
    return examples


def curl_commands(text: str, first_line: int = 1) -> list[CurlExample]:
    """Every `curl` command line in `text` (backslash continuations joined)."""
    commands = []
    logical, start = "", 0
    for offset, raw in enumerate(text.splitlines()):
        if not logical:
            start = first_line + offset
        logical += raw
        if raw.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        words = shlex.split(logical, comments=True)
        logical = ""
        if words and words[0] == "curl":
            commands.append(parse_curl(words, start))
    return commands


def parse_curl(words: list[str], line: int) -> CurlExample:
    method, path, body, output, upload = None, None, None, None, None
    headers: dict[str, str] = {}
    arguments = iter(words[1:])
    for word in arguments:
        if word in ("-X", "--request"):
            method = next(arguments)
        elif word in ("-d", "--data", "--data-raw"):
            text = next(arguments)
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise AssertionError(f"line {line}: the body is not JSON ({exc}): {text}") from exc
        elif word == "--data-binary":
            upload = next(arguments)
            assert upload.startswith("@"), f"line {line}: --data-binary takes @FILE here"
            upload = upload[1:]
        elif word in ("-o", "--output"):
            output = next(arguments)
        elif word in ("-H", "--header"):
            name, _, value = next(arguments).partition(":")
            headers[name.strip()] = value.strip()
        elif match := URL.match(word):
            path = match.group(1)
    assert path is not None, f"line {line}: no http://localhost:PORT/... address in {words}"
    method = method or ("POST" if body is not None or upload is not None else "GET")
    return CurlExample(line, method, path, body, output, upload, headers)


def documented_settings(text: str) -> dict[str, str]:
    """{RNNLM_NAME: default cell} from the README's configuration table rows."""
    rows = re.findall(r"^\| `(RNNLM_[A-Z0-9_]+)` \| ([^|]*) \|", text, flags=re.M)
    return {name: default.strip().strip("`") for name, default in rows}


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    """Every page's text by its path from the repository root."""
    return {page_id(page): page.read_text(encoding="utf-8") for page in PAGES}


@pytest.fixture
async def client(tmp_path: Path, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The app with models named as `make serve` names them (tiny and random here)."""
    make_checkpoint(tmp_path / "char-shakespeare-quick", level="char", cell="lstm", seed=1)
    make_checkpoint(tmp_path / "word-ptb-quick", level="word", cell="lstm", seed=2)
    app = create_app(Settings(models_dir=tmp_path, redis_url=redis_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8000", timeout=30) as c:
            yield c


async def run_examples(client: httpx.AsyncClient, examples: list[CurlExample]) -> None:
    """Send each example in order; every one must succeed (a stream must be an event stream)."""
    session: str | None = None
    files: dict[str, bytes] = {}  # what `-o FILE` examples saved
    for example in examples:
        path = example.path
        if VARIABLE.search(path):
            assert session is not None, f"{example}: no session was created by an example before it"
            path = VARIABLE.sub(session, path)
        if example.upload is not None:
            assert example.upload in files, f"{example}: no example before it saved {example.upload}"
            content = files[example.upload]
            response = await client.request(example.method, path, content=content, headers=example.headers)
        else:
            response = await client.request(example.method, path, json=example.body)
        assert response.is_success, f"{example} -> {response.status_code} {response.text[:500]}"
        if example.output is not None:
            files[example.output] = response.content
        if isinstance(example.body, dict) and example.body.get("stream"):
            assert response.headers["content-type"].startswith("text/event-stream"), str(example)
            assert "data:" in response.text, str(example)
        if example.method == "POST" and path == "/v1/sessions":
            session = response.json()["id"]


def test_the_readme_and_the_docs_have_curl_examples(pages: dict[str, str]) -> None:
    assert len(curl_examples(pages["README.md"])) >= 8  # the first tour
    assert len(curl_examples(pages["docs/api.md"])) >= 15


@pytest.mark.parametrize("page", PAGES, ids=page_id)
async def test_every_curl_example_succeeds(page: Path, client: httpx.AsyncClient) -> None:
    await run_examples(client, curl_examples(page.read_text(encoding="utf-8")))


def test_every_endpoint_has_a_curl_example(pages: dict[str, str]) -> None:
    examples = [example for text in pages.values() for example in curl_examples(text)]
    # The API's operations as published in its schema (the playground page and its assets are not in it).
    paths = create_app(Settings()).openapi()["paths"]
    assert len(paths) >= 15, f"the schema lists only {sorted(paths)}"
    missing = []
    for path, operations in paths.items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(path)) + "$")
        for method in operations:
            covered = any(
                e.method == method.upper() and pattern.match(VARIABLE.sub("x", e.path.split("?")[0])) for e in examples
            )
            if not covered:
                missing.append(f"{method.upper()} {path}")
    assert not missing, f"no curl example in the README or docs/ for {missing}"


def test_configuration_table_lists_every_setting_with_its_default(pages: dict[str, str]) -> None:
    table = documented_settings(pages[page_id(CONFIGURATION)])
    for name, field in Settings.model_fields.items():
        variable = f"RNNLM_{name.upper()}"
        assert variable in table, f"the configuration table lacks {variable}"
        expected = "unset" if field.default is None else str(field.default)
        assert table[variable] == expected, f"{variable}: the docs say {table[variable]!r}, the default is {expected!r}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_rnnlm_variable_a_page_names_exists(page: Path) -> None:
    known = {f"RNNLM_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    named = set(re.findall(r"RNNLM_[A-Z0-9_]*[A-Z0-9]", page.read_text(encoding="utf-8")))
    assert named <= known, f"{page_id(page)} names settings that do not exist: {sorted(named - known)}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_leads_to_a_page_and_heading(page: Path) -> None:
    """`[text](other.md#heading)`: the file exists and, with an anchor, has a heading that makes it (GitHub's rule)."""
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute address
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.is_file(), f"{page_id(page)}: link to {target}, no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text(encoding="utf-8")), f"{page_id(page)}: no heading for {target}"


# What a page may name outside the repository: only `../shared/data`, the optional local mirror of the corpora.
OUTSIDE = re.compile(r"\.\./shared(?!/data)|shared/DESIGN|DESIGN\.md")


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_page_points_outside_the_repository_but_the_corpora_mirror(page: Path) -> None:
    """The design is docs/architecture.md; `../shared/data` is the one outside path a page may name."""
    text = page.read_text(encoding="utf-8")
    found = [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group()}" for m in OUTSIDE.finditer(text)]
    assert not found, f"{page_id(page)} points outside the repository: {found}"


def test_the_readme_links_the_architecture() -> None:
    assert "](docs/architecture.md)" in README.read_text(encoding="utf-8")


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
