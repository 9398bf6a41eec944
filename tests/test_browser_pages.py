"""The jobs pages in headless Chromium: sign in, watch jobs arrive and finish live, filter,
open a job and follow its events, sign out."""

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser import browser_page, screenshot
from tests.harness import Kiln

ONE_DATABASE = True  # the browser side; the pages' queries run on both databases in test_pages

LIVE_TIMEOUT_MS = 60_000  # a held worker restarts, then the job runs


@pytest.fixture(scope="module")
def kiln_env() -> dict[str, str]:
    return {"KILN_LLM_PROVIDER": "template"}


def sign_in(page: Page, kiln: Kiln, key: str) -> None:
    page.goto(kiln.url + "/")
    expect(page).to_have_url(kiln.url + "/login")
    page.fill("#key", key)
    page.click("button[type=submit]")
    expect(page).to_have_url(kiln.url + "/")


def test_a_job_is_listed_followed_live_and_filtered(kiln: Kiln, backend: str) -> None:
    key = kiln.new_key("browser")
    with browser_page() as page:
        page.goto(kiln.url + "/login")
        page.fill("#key", "kiln_wrong")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_be_visible()

        with kiln.held("worker-gpu"):
            queued = kiln.submit(key, "watched from a browser")
            sign_in(page, kiln, key)
            row = page.locator(f"tr[data-job-id='{queued['id']}']")
            expect(row.locator(".status")).to_have_text("queued")
            # A job submitted while the list is open shows up without a reload.
            chat = kiln.client(key).post(
                "/v1/jobs",
                json={"kind": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}},
            )
            assert chat.status_code == 202, chat.text
            chat_row = page.locator(f"tr[data-job-id='{chat.json()['id']}']")
            expect(chat_row.locator(".kind")).to_have_text("chat", timeout=LIVE_TIMEOUT_MS)

            row.locator("a").click()
            expect(page.locator("#status")).to_have_text("queued")
            expect(page.locator("#events li").first).to_have_text("status: queued (attempt 1)")
        # The worker is back: the open page follows the job to its end.
        expect(page.locator("#status")).to_have_text("succeeded", timeout=LIVE_TIMEOUT_MS)
        expect(page.locator("#result")).to_contain_text("watched from a browser")
        expect(page.locator("#output")).to_contain_text("watched from a browser")
        expect(page.locator("#events")).to_contain_text("status: running")
        assert screenshot(page, f"jobs-page-detail-{backend}").stat().st_size > 0

        page.goto(kiln.url + "/")
        page.select_option("#kind", "chat")
        page.click("#filters button")
        expect(page).to_have_url(kiln.url + "/?status=&kind=chat")
        expect(page.locator("#jobs tbody tr")).to_have_count(1)
        expect(page.locator("#jobs .kind")).to_have_text(["chat"])
        page.select_option("#kind", "")
        page.select_option("#status", "succeeded")
        page.click("#filters button")
        expect(row.locator(".status")).to_have_text("succeeded")
        expect(row.locator(".duration")).to_have_text(re.compile(r"^\d+\.\d\d s$"))
        assert screenshot(page, f"jobs-page-list-{backend}").stat().st_size > 0

        page.click("header button")
        expect(page).to_have_url(kiln.url + "/login")
        page.goto(kiln.url + "/")
        expect(page).to_have_url(kiln.url + "/login")
