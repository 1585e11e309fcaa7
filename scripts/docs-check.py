"""The /docs page as a person uses it, in headless Chromium (Playwright):
it renders every route of /openapi.json, and "Try it out" works against the
running service with a bearer key. Writes a screenshot.

    python3 scripts/docs-check.py BASE_URL API_KEY SCREENSHOT.png
"""
import json
import shutil
import sys
import urllib.request

from playwright.sync_api import sync_playwright


def main() -> int:
    base, key, shot = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
    doc = json.load(urllib.request.urlopen(f"{base}/openapi.json", timeout=10))
    expected = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)
        page.goto(f"{base}/docs", wait_until="networkidle")
        page.wait_for_selector(".opblock", timeout=15000)
        shown = set()
        for block in page.query_selector_all(".opblock"):
            method = block.query_selector(".opblock-summary-method").inner_text().strip()
            path = block.query_selector(".opblock-summary-path").inner_text().strip().replace("\u200b", "")
            shown.add((method, path))
        missing = expected - shown
        assert not missing, f"routes not rendered: {sorted(missing)}"
        page.screenshot(path=shot.replace(".png", "-overview.png"))
        # Authorize with the key, then try GET /contexts.
        page.click("button.authorize")
        page.fill(".modal-ux input[type=text], .modal-ux input[type=password]", key)
        page.click(".modal-ux .auth-btn-wrapper button.authorize")
        page.click(".modal-ux button.btn-done")
        block = page.locator(".opblock-get").filter(has=page.locator(".opblock-summary-path", has_text="/contexts")).first
        block.locator(".opblock-summary").click()
        block.locator("button.try-out__btn").click()
        block.locator("button.execute").click()
        status = block.locator(".live-responses-table tr.response .response-col_status").first
        status.wait_for(timeout=15000)
        code = status.inner_text().strip()
        assert code == "200", f"Try it out: GET /contexts answered {code}"
        body = block.locator(".live-responses-table tr.response .microlight").first.inner_text()
        assert '"items"' in body, body[:200]
        page.screenshot(path=shot, full_page=False)
        browser.close()
    assert not outside, f"the page loaded from elsewhere: {outside}"
    print(f"docs-check: {len(shown)} operations rendered, Try it out answered 200; screenshots {shot} and its -overview")
    return 0


if __name__ == "__main__":
    sys.exit(main())
