"""The web chat page in a real browser: Playwright driving Debian's Chromium against a live server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from http_server import LiveServer

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (skipped, with the reason, if that fails)."""
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None:
            pytest.skip(f"{CHROMIUM} is missing and there is no apt-get to install it")
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900)
            if done.returncode != 0:
                pytest.skip(f"could not install Chromium ({' '.join(command)}: {done.stderr.strip()[-300:]})")
    return CHROMIUM


@pytest.fixture
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# Records every length the streaming reply's text goes through, to see it grow piece by piece.
WATCH_STREAM = """() => {
  window.seenLengths = [];
  new MutationObserver(() => {
    const pending = document.querySelector('.message.assistant.pending .text');
    if (pending) window.seenLengths.push(pending.textContent.length);
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


def test_chat_in_the_browser_streams_and_records_feedback(browser, make_engine, real_base):
    engine = make_engine(real_base)
    live = LiveServer(engine)
    try:
        page = browser.new_page(viewport={"width": 1180, "height": 760})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(live.url + "/?temperature=0&max_tokens=16")
        page.fill("#user-name", "Ann")
        page.dispatch_event("#user-name", "change")
        page.click('.character[data-id="professor-quill"]')
        greeting = page.locator(".message.assistant").first.inner_text()
        assert engine.greeting(engine.catalog.get("professor-quill")) in greeting
        assert page.locator("#chat-name").inner_text() == "Professor Quill"

        page.evaluate(WATCH_STREAM)
        page.fill("#input", "What is the brightest star in the night sky?")
        page.keyboard.press("Enter")
        reply = page.locator(".message.assistant[data-message-id]").last
        reply.wait_for(timeout=300_000)
        lengths = page.evaluate("window.seenLengths")
        text = reply.locator(".text").inner_text()
        message_id = int(reply.get_attribute("data-message-id"))
        assert len(set(lengths)) >= 3, lengths  # the reply grew on screen piece by piece
        assert engine.store.message(message_id)["text"] == text and len(text.split()) >= 3

        reply.locator('.thumb[data-value="1"]').click()
        page.locator(".thumb.chosen").wait_for()
        feedback = engine.store.query("select * from feedback")
        assert len(feedback) == 1 and feedback[0]["message_id"] == message_id and feedback[0]["value"] == 1
        assert feedback[0]["user_id"].startswith("http:web-") and feedback[0]["source"] == "http"
        asked = engine.store.message(engine.store.message(message_id)["reply_to"])
        assert asked["user_name"] == "Ann" and asked["platform"] == "http"

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_chat.png"))

        page.click(".regenerate")
        swipe = page.locator(f'.message.assistant[data-message-id]:not([data-message-id="{message_id}"])')
        swipe.wait_for(timeout=300_000)
        assert engine.store.message(int(swipe.get_attribute("data-message-id")))["swipe_of"] == message_id

        page.click("#show-audits")
        page.locator("#audit-body .empty, #audit-body figure").first.wait_for()
        assert page.locator("#audit-dialog").is_visible()
        page.screenshot(path=str(ARTIFACTS / "web_audits.png"))
        assert errors == []
    finally:
        live.close()
