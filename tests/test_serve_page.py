"""The page at `/` in a real browser: headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Not skipped when the browser is missing: `make test` installs it (as root), and a machine without it
fails here with the command that installs it. Chromium's fake capture device (a beep) stands in for
the microphone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from wav2lip_trt.samples import float_to_int16, speechlike_audio, write_wav

from jobs_media import write_media
from serve_server import BOX, TOKEN, Server, start_server

CHROMIUM = Path(os.environ.get("WAV2LIP_TRT_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


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


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory) -> Any:
    """One server for the avatar and live tests (each prepares what it uses)."""
    server = start_server(tmp_path_factory.mktemp("serve-page"), checkpoints)
    yield server
    code = server.stop()
    assert code == 0, server.output()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("page-media")
    files = write_media(folder)
    files["speech"] = write_wav(folder / "speech.wav", float_to_int16(speechlike_audio(1.0, seed=7)), 16000)
    files["notes"] = folder / "notes.wav"
    files["notes"].write_text("not audio\n" * 40)
    return files


def open_page(browser: Any, server: Server, tab: str) -> Any:
    page = browser.new_page()
    page.goto(f"{server.url}/#{tab}")
    page.wait_for_function("document.getElementById('ready').textContent.includes('workers ready')")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    return page


def ready_avatar(server: Server, face: Path, **options: Any) -> str:
    """An avatar prepared through the API (the page's own form is tested once, below)."""
    with server.client() as client, open(face, "rb") as f:
        response = client.post("/v1/avatars", files={"face": (face.name, f)}, data={"options": json.dumps(options)})
        assert response.status_code == 202, response.text
        avatar = response.json()["id"]
        deadline = time.monotonic() + 120
        while (view := client.get(f"/v1/avatars/{avatar}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, view
            time.sleep(0.2)
    assert view["status"] == "succeeded", view
    return avatar


def test_page_prepares_an_avatar_and_lip_syncs_with_it(browser, server, media) -> None:
    page = open_page(browser, server, "avatars")
    page.set_input_files("#avatar-face", str(media["notes"]))
    page.click("#avatar-submit")
    page.wait_for_selector("#error:not([hidden])")
    error = page.text_content("#error")
    assert error.startswith("Error: ") and "notes.wav" in error and str(server.state_dir) not in error, error

    page.set_input_files("#avatar-face", str(media["face"]))
    page.fill("#avatar-box", " ".join(map(str, BOX)))
    page.select_option("#avatar-loop", "pingpong")
    page.click("#avatar-submit")
    row = page.wait_for_selector("#avatars tr:has(.status-succeeded)", timeout=120_000)
    avatar = row.get_attribute("data-id")
    with server.client() as client:
        view = client.get(f"/v1/avatars/{avatar}").json()
    assert view["status"] == "succeeded" and view["loop"] == "pingpong", view
    assert (view["width"], view["height"]) == (160, 128), view
    assert "160×128" in row.text_content() and page.is_hidden("#error")

    page.click("#tab-button-jobs")
    page.select_option("#job-avatar", avatar)
    assert page.is_disabled("#face") and page.is_disabled("#box")
    page.set_input_files("#audio", str(media["speech"]))
    page.click("#submit")
    page.wait_for_function("document.getElementById('video').duration > 0", timeout=120_000)
    assert page.text_content("#phase") == "succeeded" and page.is_hidden("#error")
    assert abs(page.evaluate("document.getElementById('video').duration") - 1.0) < 0.1  # the audio's length
    page.wait_for_selector(f"#jobs tr:has-text('{avatar}')")

    page.click("#tab-button-avatars")
    page.click(f"#avatars tr[data-id='{avatar}'] a:has-text('delete')")
    page.wait_for_selector(f"#avatars tr[data-id='{avatar}']", state="detached")
    assert page.locator(f"#job-avatar option[value='{avatar}']").count() == 0
    with server.client() as client:
        assert client.get(f"/v1/avatars/{avatar}").status_code == 404
    page.close()


def live_numbers(page: Any) -> dict[str, Any]:
    """What the Live tab shows once its session ended (the last frame drawn: JPEGs decode asynchronously)."""
    page.wait_for_selector("#live-end:not([hidden])", timeout=120_000)
    page.wait_for_function("""() => Number(document.getElementById('live-canvas').dataset.index) + 1
                                    >= Number(document.getElementById('live-frames').textContent)""")
    return page.evaluate("""() => {
        const canvas = document.getElementById('live-canvas');
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const text = (id) => document.getElementById(id).textContent;
        return {frames: Number(text('live-frames')), p50: text('live-latency-p50'), last: text('live-latency-last'),
                fps: text('live-fps'), state: text('live-state'), drawn: canvas.dataset.index,
                size: [canvas.width, canvas.height], lit: pixels.filter((v, i) => i % 4 < 3 && v > 0).length,
                report: text('live-report')};
    }""")


def test_live_tab_streams_an_audio_file_and_shows_the_frames(browser, server, media) -> None:
    avatar = ready_avatar(server, media["face"], box=BOX)
    page = open_page(browser, server, "live")
    page.wait_for_selector(f"#live-avatar option[value='{avatar}']", state="attached")
    page.select_option("#live-avatar", avatar)
    page.set_input_files("#live-file", str(media["notes"]))
    page.click("#live-start")
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error").startswith("Error: notes.wav: ")  # decoded in the browser: never sent
    assert page.text_content("#live-frames") == "0" and page.is_enabled("#live-start")

    page.set_input_files("#live-file", str(media["speech"]))
    page.click("#live-start")  # at the speed it is spoken, in 200 ms chunks
    page.wait_for_function("Number(document.getElementById('live-frames').textContent) > 0", timeout=60_000)
    assert page.is_hidden("#error")
    seen = live_numbers(page)
    report = json.loads(seen["report"])
    assert seen["frames"] == report["frames"] > 20, seen  # 1 s at 25 fps
    assert int(seen["drawn"]) == seen["frames"] - 1 and seen["size"] == [160, 128] and seen["lit"] > 1000, seen
    assert float(seen["p50"]) > 0 and float(seen["last"]) > 0 and float(seen["fps"]) > 0, seen
    assert seen["state"] == "finished" and abs(report["audio_seconds"] - 1.0) < 0.01, seen
    assert report["clock"] == "audio" and report["dropped"] == 0, report
    assert page.is_hidden("#error")

    page.evaluate("document.getElementById('live-avatar').add(new Option('gone', 'no-such-avatar'))")
    page.select_option("#live-avatar", "no-such-avatar")
    page.check("#live-fast")
    page.click("#live-start")
    page.wait_for_selector("#error:not([hidden])")
    page.wait_for_function("document.getElementById('live-state').textContent === 'failed'")
    assert "no-such-avatar" in page.text_content("#error"), page.text_content("#error")
    page.close()


def test_live_tab_streams_the_microphone(browser, server, media) -> None:
    avatar = ready_avatar(server, media["face"], box=BOX, loop="pingpong")
    page = open_page(browser, server, "live")
    page.wait_for_selector(f"#live-avatar option[value='{avatar}']", state="attached")
    page.select_option("#live-avatar", avatar)
    page.check("#live-source-mic")
    page.select_option("#live-clock", "wall")  # frames on time, late ones dropped: how a microphone is used
    page.click("#live-start")
    page.wait_for_function("Number(document.getElementById('live-sent').textContent) >= 0.6", timeout=60_000)
    page.click("#live-stop")  # the server then makes the frames of what it has, and ends
    seen = live_numbers(page)
    report = json.loads(seen["report"])
    sent = float(page.text_content("#live-sent"))
    assert report["clock"] == "wall" and abs(report["audio_seconds"] - sent) < 0.01, (report, sent)
    assert seen["frames"] == report["frames"] > 0, seen  # as many as the server says it sent (the rest dropped)
    assert float(seen["p50"]) > 0 and seen["lit"] > 1000 and seen["state"] == "finished", seen
    assert page.is_hidden("#error")
    page.close()
