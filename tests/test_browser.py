"""The web page in a real headless chromium: search both ways, recommendations, generation, bad input.

Waits on page elements only (Playwright's auto-waiting ``expect``), never on sleeps. Screenshots go to
the test's tmp dir and, when ``DGMREC_SCREENSHOTS=<dir>`` is set, there as well.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from app_server import GRADIO_PANDAS_WARNINGS, Server, shared_server

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings(GRADIO_PANDAS_WARNINGS),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server() -> Server:
    return shared_server()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server: Server):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(server.url)
    yield page
    context.close()


@pytest.fixture()
def shoot(tmp_path: Path):
    """``shoot(page, name)``: a full-page screenshot in tmp_path (and in $DGMREC_SCREENSHOTS)."""
    def take(page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0
        extra = os.environ.get("DGMREC_SCREENSHOTS")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path
    return take


def _search_text(page, text: str) -> None:
    page.locator("#text-query textarea").fill(text)
    page.locator("#text-search").click()


def _pick(page, elem_id: str, value: str) -> None:
    """Type ``value`` into a dropdown (custom values allowed) and confirm it."""
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Enter")


def test_text_search_shows_product_images(page, shoot) -> None:
    from playwright.sync_api import expect

    _search_text(page, "a red striped hat")
    expect(page.locator("#text-message")).to_contain_text("products for")
    images = page.locator("#text-results img")
    expect(images.first).to_be_visible()
    assert images.count() >= 1
    shoot(page, "search")


def test_image_upload_lists_descriptions(page, server: Server, shoot) -> None:
    from playwright.sync_api import expect

    photo = next((server.shop / "images").glob("*.png"))
    page.locator("#image-query input[type=file]").set_input_files(str(photo))
    expect(page.locator(f"#image-query a[href$='/{photo.name}']")).to_be_visible()  # upload done
    page.locator("#image-search").click()
    expect(page.locator("#image-message")).to_contain_text("descriptions")
    rows = page.locator("#image-results table tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 1
    expect(page.locator("#image-preview img")).to_be_visible()
    expect(page.locator("#image-results table")).to_contain_text(re.compile(r"\d\.\d{3}"))
    shoot(page, "search-image")


def test_bad_input_gives_a_message_and_the_page_keeps_answering(page, shoot) -> None:
    from playwright.sync_api import expect

    page.locator("#text-search").click()  # empty query
    expect(page.locator("#text-message .dgmrec-error")).to_contain_text("query text is empty")
    _pick(page, "search-user", "nobody-at-all")
    _search_text(page, "a blue bag")
    expect(page.locator("#text-message .dgmrec-error")).to_contain_text("unknown user id 'nobody-at-all'")
    shoot(page, "bad-input")
    _pick(page, "search-user", "(anyone)")
    _search_text(page, "a blue bag")
    expect(page.locator("#text-message")).to_contain_text("products for “a blue bag”")
    expect(page.locator("#text-results img").first).to_be_visible()


def test_recommendations_of_a_user(page, server: Server, shoot) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Recommendations").click()
    user = server.users[2]
    _pick(page, "rec-user", user)
    page.locator("#rec-go").click()
    expect(page.locator("#rec-message")).to_contain_text(f"User {user}:")
    expect(page.locator("#rec-history img").first).to_be_visible()
    expect(page.locator("#rec-results img").first).to_be_visible()
    shoot(page, "recommendations")


def test_generation_and_overview_tabs(page, server: Server, shoot) -> None:
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Generation quality").click()
    expect(page.locator("#heldout-summary")).to_contain_text("The real item ranks")
    expect(page.locator("#heldout-neighbours img").first).to_be_visible()
    expect(page.locator("#hit-plot img")).to_be_visible()
    expect(page.locator("#hit-summary table")).to_contain_text("Hit@10")
    shoot(page, "generation")
    page.locator("#heldout-item input").click()
    page.get_by_role("option").nth(1).click()
    expect(page.locator("#heldout-summary")).to_contain_text(server.heldout[1])

    page.get_by_role("tab", name="Catalog overview").click()
    expect(page.locator("#overview-text")).to_contain_text("Encoder")
    expect(page.locator("#overview-text")).to_contain_text("items missing image")
    for plot in ("missing-plot", "loss-plot", "recall-plot"):
        expect(page.locator(f"#{plot} img")).to_be_visible()
    shoot(page, "overview")
