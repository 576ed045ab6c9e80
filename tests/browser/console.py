"""Drives the Sluice console in a real browser (Chromium through Playwright), as an operator.

Usage: console.py URL TOKEN FUNCTION DEAD_JOB_ID SCREENSHOT_DIR

Signs in with TOKEN, finds FUNCTION on the overview, opens it, finds DEAD_JOB_ID among its dead
letters, redrives it by clicking, and watches the job's page turn `succeeded` without reloading
(Server-Sent Events). Also checks what an operator must not be able to do: the API refuses a
change made with the session cookie but without the CSRF header, and the token never appears
in a cookie a script can read. Saves a screenshot after each step. Exits non-zero (with the
reason) when a step fails.
"""

import json
import os
import sys

from playwright.sync_api import expect, sync_playwright

url, token, function, dead_job, shots = sys.argv[1:6]
chromium = os.environ.get("SLUICE_CHROMIUM", "/usr/bin/chromium")
os.makedirs(shots, exist_ok=True)
steps = []


def shot(page, name):
    path = os.path.join(shots, f"{len(steps) + 1:02d}-{name}.png")
    page.screenshot(path=path, full_page=True)
    steps.append({"step": name, "screenshot": path})


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(20_000)

    # Signed out: the login form; a wrong token is refused with a message.
    page.goto(f"{url}/ui")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", "not-a-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("unknown API token")
    shot(page, "login-refused")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login")).to_be_hidden()

    # The overview lists the function with its figures.
    row = page.locator(f'tr[data-function="{function}"]')
    expect(row).to_be_visible()
    shot(page, "overview")

    # The session cookie is HttpOnly: a script sees only the CSRF cookie.
    cookies = page.evaluate("document.cookie")
    assert "sluice_csrf=" in cookies and "sluice_session" not in cookies, cookies
    assert token not in cookies, "the token is readable by scripts"
    jar = {c["name"]: c for c in page.context.cookies()}
    assert jar["sluice_session"]["httpOnly"] and jar["sluice_session"]["sameSite"] == "Strict", jar

    # A change with the cookie but without the CSRF header is refused.
    refused = page.evaluate(
        """async (f) => {
            const r = await fetch(`/v1/functions/${f}/pause`, {method: "POST", credentials: "same-origin"});
            return [r.status, (await r.json()).error.code];
        }""",
        function,
    )
    assert refused == [403, "csrf_check_failed"], refused

    # The function's page: its dead letters; redrive the one by clicking.
    row.locator("a").first.click()
    dead_row = page.locator(f'tr[data-dead-letter="{dead_job}"]')
    expect(dead_row).to_be_visible()
    expect(page.locator('[data-figure="dead"] b, [data-figure="failed"] b').first).to_be_visible()
    shot(page, "function-with-dead-letter")
    page.evaluate("window.__sameDocument = true")
    dead_row.locator("button[data-redrive]").click()
    expect(dead_row).to_have_count(0)
    # Recent jobs follow the function's figures live: the redriven job shows succeeded
    # without a reload (the marker set on this document is still there).
    expect(page.locator(f'tr[data-job="{dead_job}"] [data-status]')).to_have_attribute(
        "data-status", "succeeded", timeout=30_000
    )
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    shot(page, "redriven-and-succeeded-live")

    # The job's page follows it live until it succeeds.
    page.goto(f"{url}/ui#/jobs/{dead_job}")
    expect(page.locator("#job-status [data-status]")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    expect(page.locator("[data-attempt]").first).to_be_visible()
    expect(page.locator("#output")).to_be_visible()
    shot(page, "job-succeeded")

    # Search by correlation id shows the job in the tree.
    page.fill("#search-input", dead_job)
    page.press("#search-input", "Enter")
    expect(page.locator("#job-status")).to_be_visible()

    # Topics page renders.
    page.click('a[data-nav="topics"]')
    expect(page.locator("main h1")).to_have_text("Topics")
    shot(page, "topics")

    # Signing out forgets the session.
    page.goto(f"{url}/ui")
    page.click("#sign-out")
    expect(page.locator("#login")).to_be_visible()
    assert not any(c["name"] == "sluice_session" for c in page.context.cookies())

    browser.close()
    if errors:
        raise SystemExit(f"script errors on the page: {errors}")

print(json.dumps({"steps": steps}))
