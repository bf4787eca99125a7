"""The page at `/` in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Not skipped when the browser is missing: `make test` installs it (as root), and a machine without it
fails here with the command that installs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wav2lip_trt.samples import float_to_int16, speechlike_audio, write_wav

from jobs_media import write_media
from serve_server import TOKEN, start_server

CHROMIUM = Path(os.environ.get("WAV2LIP_TRT_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: the page test needs Chromium (as root: apt-get install -y chromium; "
                    "`make test` does this), or set WAV2LIP_TRT_CHROMIUM to another Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield browser
        browser.close()


def test_page_uploads_follows_progress_plays_and_shows_errors(browser, checkpoints, tmp_path) -> None:
    media = write_media(tmp_path / "media")
    speech = write_wav(tmp_path / "media" / "speech.wav", float_to_int16(speechlike_audio(1.5, seed=6)), 16000)
    notes = tmp_path / "media" / "notes.mp4"
    notes.write_text("not a video\n" * 40)
    server = start_server(tmp_path / "server", checkpoints)
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('ready').textContent.includes('workers ready')")
        page.fill("#token", TOKEN)
        page.evaluate("""() => {
            window.seenFrames = [];
            new MutationObserver(() => window.seenFrames.push(Number(document.getElementById('bar').dataset.frames)))
                .observe(document.getElementById('bar'), {attributes: true, attributeFilter: ['data-frames']});
        }""")
        page.set_input_files("#face", str(media["face"]))
        page.set_input_files("#audio", str(speech))
        page.fill("#box", "30 110 40 120")
        page.click("#submit")
        page.wait_for_function("document.getElementById('video').duration > 0", timeout=120_000)
        seen = page.evaluate("window.seenFrames")
        total = page.evaluate("document.getElementById('bar').max")
        assert len(set(seen)) >= 2 and seen == sorted(seen) and seen[-1] == total > 30, seen  # 1.5 s at 25 fps
        assert page.text_content("#phase") == "succeeded"
        assert abs(page.evaluate("document.getElementById('video').duration") - 1.5) < 0.1  # the audio's length
        assert page.is_hidden("#error")
        page.wait_for_function("document.querySelectorAll('#jobs tr').length >= 1")
        assert "succeeded" in page.text_content("#jobs")
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        if os.environ.get("WAV2LIP_TRT_SCREENSHOT"):
            page.screenshot(path=os.environ["WAV2LIP_TRT_SCREENSHOT"], full_page=True)

        page.set_input_files("#face", str(notes))
        page.click("#submit")
        page.wait_for_selector("#error:not([hidden])")
        error = page.text_content("#error")
        assert error.startswith("Error: ") and "notes.mp4" in error and str(server.state_dir) not in error, error
        page.close()
    finally:
        code = server.stop()
    assert code == 0, server.output()
