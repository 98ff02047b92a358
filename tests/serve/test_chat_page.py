"""The chat page in headless Chromium (Debian's): type, watch the answer stream in, keep the conversation."""

import os
import shutil

import pytest

# Record every length the assistant's answer passes through, to see it arrive token by token.
WATCH = """() => {
  window.seen = [];
  new MutationObserver(() => {
    const turns = document.querySelectorAll('.assistant');
    if (turns.length) window.seen.push(turns[turns.length - 1].textContent.length);
  }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
}"""


def test_chat_page_streams_answers_and_keeps_the_conversation(server, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_function("document.getElementById('model').textContent.length > 0")
        assert page.text_content("#model") == server.model
        page.evaluate(WATCH)
        # The stream trickles in at 4 kB/s (~2 s for 40 tokens): on a loaded machine the server can
        # otherwise finish before the page renders once, and the answer would appear whole.
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": 4000, "uploadThroughput": -1},
        )
        page.click("summary")  # open the settings
        page.fill("#max_tokens", "40")
        page.fill("#input", "Speak, friend.")
        page.keyboard.press("Enter")
        page.wait_for_function("document.getElementById('status').textContent.includes('first token')", timeout=60_000)
        answer = page.text_content(".assistant")
        seen = page.evaluate("window.seen")
        assert answer and len(set(seen)) > 3 and sorted(seen) == seen  # grew piece by piece
        assert "tokens/s" in page.text_content("#status")
        page.fill("#input", "And again?")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.assistant').length == 2")
        page.wait_for_function("!document.getElementById('send').disabled", timeout=60_000)
        assert page.locator(".user").all_text_contents() == ["Speak, friend.", "And again?"]
        page.screenshot(path=tmp_path / "chat.png", full_page=True)
        browser.close()
    assert (tmp_path / "chat.png").stat().st_size > 1000
