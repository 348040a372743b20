"""The web page in a real headless Chromium (Debian's package, driven by Playwright): it
loads, runs a search, a classification and a generation job, and shows what they return.
Screenshots go under each test's tmp_path."""
from __future__ import annotations

import os
import re
import shutil

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the 'playwright' package")

expect = playwright_api.expect

CHROMIUM = os.environ.get("VQCLIP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("the browser tests need Chromium: apt-get install chromium (or set VQCLIP_CHROMIUM)",
                allow_module_level=True)

# Flags that run here: no sandbox (containers), no GPU, and nothing that phones home.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(tmp_path, live_server):
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=FLAGS)
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        # Console errors too, but not the browser's own line for each 4xx the refusal test provokes.
        pg.on("console", lambda m: errors.append(m.text)
              if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        pg.goto(live_server.url + "/")
        pg.wait_for_selector("body[data-ready=true]", timeout=20_000)
        yield pg
        ctx.close()
    assert not errors, errors


def test_page_loads_with_every_panel(page, tmp_path):
    assert "shapes-clip" in page.inner_text("#model-info")
    assert page.is_hidden("#error")
    assert page.inner_text("#search-index") == "shapes (12 images)"
    assert page.is_visible("#generate-form")  # `vqclip serve` runs generation unless told not to
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)


@pytest.mark.slow
def test_generate_streams_previews_then_shows_the_result(page, tmp_path):
    page.fill("#generate-prompt", "a red star")
    page.fill("#generate-steps", "12")
    page.fill("#generate-seed", "1")
    page.click("#generate-button")
    expect(page.locator("#generate-panel")).to_have_attribute("data-finished", "done", timeout=60_000)
    expect(page.locator("#generate-status")).to_contain_text("done: step 12 of 12")
    image = page.locator("#generate-image")
    expect(image).to_have_attribute("src", re.compile("^blob:"))
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") == 64  # the bundled VQGAN's native size
    assert page.is_disabled("#generate-cancel") and page.is_enabled("#generate-button")
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)


def test_search_shows_thumbnails_with_scores(page, tmp_path, shapes_images):
    captions_of = dict(line.split("\t") for line in (shapes_images.parent / "captions.txt").read_text().splitlines())
    query = captions_of["00.png"]  # "a blue cross": the bundled model finds its own world's captions
    page.fill("#search-text", query)
    page.fill("#search-k", "6")
    page.click("#search-button")
    page.wait_for_selector("#search-results .hit", timeout=20_000)
    # Every thumbnail loaded (fetched with the page's key, shown as a blob: URL). The page's CSP
    # forbids eval, so waits are on selectors and evaluate(), never wait_for_function.
    imgs = page.locator("#search-results img[src^='blob:']")
    expect(imgs).to_have_count(6, timeout=20_000)
    for i in range(6):
        expect(imgs.nth(i)).to_have_js_property("complete", True)
        assert imgs.nth(i).evaluate("img => img.naturalWidth") > 0
    captions = page.locator("#search-results figcaption").all_inner_texts()
    assert len(captions) == 6
    scores = [float(c.split()[0]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert all(c.split()[1] in captions_of for c in captions)
    assert captions_of[captions[0].split()[1]] == query
    assert "6 results" in page.inner_text("#search-status")
    page.screenshot(path=str(tmp_path / "search.png"), full_page=True)


def test_classify_ranks_typed_labels_for_a_picked_image(page, tmp_path, shapes_images):
    name, caption = (shapes_images.parent / "captions.txt").read_text().splitlines()[0].split("\t")
    image = shapes_images / name
    colour, shape = caption.split()[-2:]
    other = "square" if shape != "square" else "circle"
    labels = [f"a {colour} {other}", caption, "a green star" if caption != "a green star" else "a red cross"]
    page.set_input_files("#classify-file", str(image))
    page.wait_for_selector("#classify-preview:not([hidden])")
    page.fill("#classify-labels", "\n".join(labels))
    page.click("#classify-button")
    page.wait_for_selector("#classify-results .label-row", timeout=20_000)
    rows = page.locator("#classify-results .label-row").all_inner_texts()
    assert len(rows) == 3
    assert rows[0].endswith(caption), rows  # the scene's own caption wins
    probs = [float(r.split("%")[0]) for r in rows]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 100) < 0.5
    page.screenshot(path=str(tmp_path / "classify.png"), full_page=True)


def test_a_refusal_is_shown_as_an_error_line(page):
    page.fill("#classify-labels", "a red circle")
    page.click("#classify-button")
    assert "Choose an image" in page.inner_text("#error")
    page.fill("#search-text", " ".join(["red"] * 100))  # more tokens than the model's context
    page.click("#search-button")
    expect(page.locator("#error")).to_contain_text("tokens", timeout=20_000)
    assert "Search failed" in page.inner_text("#error")


@pytest.mark.slow
def test_with_api_keys_the_page_asks_for_one_then_works(tmp_path, server_process, shapes_index):
    key = "page-key-" + "x" * 16
    keys = tmp_path / "keys.txt"
    keys.write_text(f"browser:{key}\n")
    keys.chmod(0o600)
    server = server_process(["--model", "shapes-clip", "--index", f"shapes={shapes_index}", "--api-key-file", str(keys)])
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=FLAGS)
        page = ctx.new_page()
        page.goto(server.url + "/")
        expect(page.locator("#error")).to_contain_text("API key", timeout=20_000)
        assert page.locator("#key-box").get_attribute("open") is not None  # opened for the user
        page.fill("#api-key", key)
        page.click("#api-key-save")  # kept in sessionStorage, the page reloads with it
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        page.fill("#search-text", "a red star")
        page.click("#search-button")
        imgs = page.locator("#search-results img[src^='blob:']")  # thumbnails fetched with the key too
        expect(imgs).to_have_count(12, timeout=20_000)
        page.screenshot(path=str(tmp_path / "with-key.png"), full_page=True)
        ctx.close()
