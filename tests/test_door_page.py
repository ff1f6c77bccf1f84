"""The page at / of the HTTP door in a real browser: Debian's headless Chromium through chromium-driver.

The page speaks a two-sentence text over the WebSocket live endpoint; from
the page's own record (window.speakstream.last) the test checks that audio
began playing before the second sentence's first audio had arrived, that
the duration played (on the AudioContext clock, less any underrun) is the
duration the server sent, that every word was highlighted in order as it
was heard, and that the console holds no error. It also
refreshes docs/page.png when SPEAKSTREAM_SCREENSHOT is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from doors import TWO_SENTENCES, door_settings, doors_server, http_url

pytestmark = pytest.mark.slow

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_DRIVER = shutil.which("chromedriver")
_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "page.png"
# The network is closed: no first-run fetches, updates, sync or GPU; WebAudio may start without a gesture.
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
          "--window-size=900,860")


@pytest.fixture(scope="module")
async def app(tmp_path_factory):
    async with doors_server(door_settings(tmp_path_factory.mktemp("voices"))) as app:
        yield app


@pytest.fixture(scope="module")
def browser():
    if not (_CHROMIUM and _DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/system-deps installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _CHROMIUM
    profile = tempfile.mkdtemp(prefix="speakstream-chromium-")
    for flag in (*_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def _wait_for(browser, script: str, timeout: float = 60):
    """Poll the page (in a worker thread, Selenium blocks) until `script` returns something true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await asyncio.to_thread(browser.execute_script, script)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"the page never satisfied: {script}")


async def test_the_page_plays_the_audio_as_it_arrives(app, browser):
    await asyncio.to_thread(browser.get, http_url(app) + "/")
    await _wait_for(browser, "return document.getElementById('status').textContent === 'ready'")
    await asyncio.to_thread(browser.execute_script,
                            "document.getElementById('text').value = arguments[0];"
                            "document.getElementById('speak').click();", TWO_SENTENCES)
    if os.environ.get("SPEAKSTREAM_SCREENSHOT"):  # mid-speech: the words being heard are highlighted
        await _wait_for(browser, "return (window.speakstream.last?.wordsShown.length || 0) >= 8")
        await asyncio.to_thread(browser.save_screenshot, str(_SCREENSHOT))
    record = await _wait_for(browser, "const r = window.speakstream.last; return r && r.ended && r;")
    second = [c for c in record["chunks"] if c["sentence"] == 1]
    assert second, "the second sentence's audio never arrived"
    assert record["playStartAt"] < second[0]["arrivedAt"]  # playing before the second sentence came
    assert record["receivedSamples"] == record["serverSamples"]
    sent_s = record["serverAudioS"]
    assert record["scheduledS"] == pytest.approx(sent_s, abs=1e-3)
    # Played = the first buffer's start to the last one's end on the AudioContext clock, less the
    # time it waited for late audio; a render quantum (128 frames) either side at most.
    assert record["playedS"] - record["underrunS"] == pytest.approx(sent_s, abs=0.02)
    # Each word was highlighted, in order, as it was heard.
    assert len(record["words"]) == len(TWO_SENTENCES.split())
    assert record["wordsShown"] == record["words"]
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    ttfa = await asyncio.to_thread(browser.execute_script, "return document.getElementById('ttfa').textContent")
    assert ttfa.endswith(" ms")
