"""Screenshots of every tab of a running page, for the README (``docs/screenshots/*.png``).

    dgmrec demo                      # or: dgmrec serve --index indexes/sample-shop
    python docs/take_screenshots.py  # --url http://127.0.0.1:7860 --out docs/screenshots

Needs Debian's chromium at /usr/bin/chromium. Waits on page elements and loaded images, never on sleeps.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOADED = "sel => Array.from(document.querySelectorAll(sel)).every(i => i.complete && i.naturalWidth > 0)"
TABS = (("Recommendations", "#rec-results img", "recommendations"),
        ("Generation quality", "#heldout-neighbours img", "generation"),
        ("Catalog overview", "#recall-plot img", "overview"))


def settle(page, selector: str) -> None:
    expect(page.locator(selector).first).to_be_visible()
    page.wait_for_function(LOADED, arg=selector)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="the running page")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/screenshots", help="folder of the PNGs")
    parser.add_argument("--query", default="a red striped hat", help="text query of the search screenshot")
    parser.add_argument("--image", type=Path, default=ROOT / ".cache/demo/sample-shop/images/P00001.png",
                        help="query image of the search screenshot")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(args.url)
        page.locator("#text-query textarea").fill(args.query)
        page.locator("#text-search").click()
        expect(page.locator("#text-message")).to_contain_text("products for")
        settle(page, "#text-results img")
        page.locator("#image-query input[type=file]").set_input_files(str(args.image))
        expect(page.locator(f"#image-query a[href$='/{args.image.name}']")).to_be_visible()
        page.locator("#image-search").click()
        expect(page.locator("#image-message")).to_contain_text("descriptions")
        settle(page, "#image-preview img")
        page.screenshot(path=str(args.out / "search.png"), full_page=True)

        page.get_by_label("direct CLIP").check()
        page.locator("#text-search").click()
        expect(page.locator("#text-message")).to_contain_text("direct CLIP route")
        page.locator("#image-search").click()
        expect(page.locator("#image-message")).to_contain_text("direct CLIP route")
        settle(page, "#text-results img")
        page.screenshot(path=str(args.out / "search-direct.png"), full_page=True)

        for tab, selector, name in TABS:
            page.get_by_role("tab", name=tab).click()
            settle(page, selector)
            page.wait_for_function(LOADED, arg="img")
            page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
        browser.close()
    print(f"wrote {', '.join(sorted(p.name for p in args.out.glob('*.png')))} to {args.out}")


if __name__ == "__main__":
    main()
