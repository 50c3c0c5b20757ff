"""The web app (issue 17): its flows through `gradio_client`, the same in a real browser (Debian's chromium driven
by playwright, against `ast-hf app` as a person starts it), and its pieces without a server.

Set AST_HF_SCREENSHOTS=DIR to keep the browser test's screenshots there (docs/ holds the README's).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio", reason="the web app's extra is not installed (pip install 'ast-hf[app]')")

from helpers import RATE, noise, speech, tone

MAX_SECONDS = 120.0  # the served app's limit; clips.long is beyond it
TIMELINE_WIDTH = 1320  # 12 in at 110 dpi (plotting.plot_timeline)
EXPLANATION_WIDTH = 1430  # 13 in at 110 dpi (plotting.explanation_figure)
LOOPBACK = ("127.", "::1", "localhost")


class Clips:
    """Uploads for the flows: good ones, bad ones, one beyond the length limit."""

    def __init__(self, folder: Path):
        self.speech = folder / "speech.wav"
        sf.write(self.speech, speech(2.0, seed=3), RATE)
        t = np.arange(round(2.0 * 44100)) / 44100  # a 44.1 kHz stereo upload: resampled to 16 kHz
        self.tone = folder / "tone.flac"
        sf.write(self.tone, np.stack([0.4 * np.sin(2 * np.pi * 700 * t)] * 2, axis=1), 44100)
        self.bad = folder / "bad.wav"  # a text file renamed .wav
        self.bad.write_text("this is a shopping list, not a recording\n")
        self.empty = folder / "empty.wav"
        self.empty.write_bytes(b"")
        self.long = folder / "long.flac"  # 150 s: beyond MAX_SECONDS, refused from its header
        sf.write(self.long, np.zeros(150 * 8000, np.float32), 8000)
        self.noise_then_tone = folder / "noise_then_tone.wav"  # white noise 0-3 s, a 440 Hz tone 3-6 s
        sf.write(self.noise_then_tone, np.concatenate([noise(3.0, "white", seed=1), tone(3.0, 440.0)]), RATE)
        # What chromium's fake microphone plays (in a loop): pink noise 0-2 s, a 440 Hz tone 2-4 s, at 48 kHz.
        t = np.arange(2 * 48000) / 48000
        self.microphone = folder / "microphone.wav"
        sf.write(self.microphone, np.concatenate([np.repeat(noise(2.0, "pink", seed=2), 3) * 0.8,
                                                  0.4 * np.sin(2 * np.pi * 440 * t)]), 48000, subtype="PCM_16")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained) -> Path:
    """The tiny AST trained on speech / tone / noise, saved as a model folder."""
    model, fe = trained
    folder = tmp_path_factory.mktemp("models") / "ast-tiny-speech-tone-noise"
    model.save_pretrained(folder)
    fe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Clips:
    return Clips(tmp_path_factory.mktemp("clips"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NetworkGuard:
    """Records every connection and name lookup this process makes outside the loopback range."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.outside: list[str] = []
        connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

        def guarded_connect(sock, address):
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(LOOPBACK):
                self.outside.append(f"connect {address}")
            return connect(sock, address)

        def guarded_getaddrinfo(host, *args, **kwargs):
            if host is not None and not str(host).startswith(LOOPBACK):
                self.outside.append(f"lookup {host}")
            return getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


@pytest.fixture(scope="module")
def served(model_dir):
    """(URL, network guard) of the app serving the tiny model in this process, on a free loopback port."""
    from ast_hf.app import build_app, launch_app
    from ast_hf.model_loading import load_for_inference

    with pytest.MonkeyPatch.context() as monkeypatch:
        guard = NetworkGuard(monkeypatch)
        model, fe = load_for_inference(model_dir, "cpu")
        demo = build_app(model, fe, max_seconds=MAX_SECONDS, examples=[])
        url = launch_app(demo, port=_free_port(), block=False)
        try:
            yield url, guard
        finally:
            demo.close()


def _png_size(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


# --------------------------------------------------------------------------------------------------------------
# gradio_client: the flows, fast
# --------------------------------------------------------------------------------------------------------------


def test_client_tags_a_clip_refuses_bad_uploads_and_keeps_serving(served, clips):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, guard = served
    client = Client(url, verbose=False)

    def analyse(path, start=0.0):
        return client.predict(handle_file(str(path)), start, api_name="/analyse")

    labels, timeline, explanation, files, summary = analyse(clips.speech)
    assert labels["label"] == "speech"
    assert labels["confidences"][0]["label"] == "speech"
    assert _png_size(timeline)[0] == TIMELINE_WIDTH and _png_size(timeline)[1] > 300
    assert _png_size(explanation)[0] == EXPLANATION_WIDTH and _png_size(explanation)[1] > 300
    # gradio_client downloads each file into a folder of its own with a random name: pick them by name, not path
    csv_path, json_path = sorted(files, key=lambda path: Path(path).suffix)
    assert Path(csv_path).name == "speech_timeline.csv"
    assert Path(csv_path).read_text().splitlines()[0] == "window,start,end,rank,label,score"
    record = json.loads(Path(json_path).read_text())
    assert record["file"] == "speech.wav" and record["duration"] == pytest.approx(2.0)
    assert [row["label"] for row in record["labels"]] == [c["label"] for c in labels["confidences"]]
    assert "**2.0 s** of audio" in summary and "resampled" not in summary

    for path, message in [(clips.bad, "bad.wav is not audio that ast-hf can decode"),
                          (clips.empty, "empty.wav is empty (0 bytes)"),
                          (clips.long,
                           "long.flac is 2 min 30 s long; this app takes recordings of at most 2 min 00 s")]:
        with pytest.raises(AppError, match=re.escape(message)):
            analyse(path)
    with pytest.raises(AppError, match="must start inside the recording"):
        analyse(clips.speech, start=5.0)

    labels, *_, summary = analyse(clips.tone)  # the server still serves, and resamples a 44.1 kHz upload
    assert labels["label"] == "tone"
    assert "resampled from 44100 Hz to 16000 Hz" in summary
    labels, *_ = analyse(clips.speech, start=0.5)
    assert labels["label"] == "speech"
    assert guard.outside == [], f"the app reached beyond the loopback: {guard.outside}"


def test_client_finds_the_events_of_a_known_scene_and_refuses_bad_input(served, clips):
    """Noise for 3 s, then a tone: a noise event ending and a tone event starting near 3 s, in the table, the TSV
    and the picture; bad controls and bad files get a message and the server keeps serving."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served[0], verbose=False)

    def detect(path, on=0.4, off=0.3, median=5, shortest=0.5, gap=0.3):  # no blip at the transition
        return client.predict(handle_file(str(path)), on, off, median, shortest, gap, api_name="/detect_events")

    table, plot, tsv, summary = detect(clips.noise_then_tone)
    assert table["headers"] == ["label", "onset (s)", "offset (s)"]
    events = {label: (onset, offset) for label, onset, offset in table["data"]}
    assert sorted(events) == ["noise", "tone"], table["data"]
    assert events["noise"][0] == pytest.approx(0.0, abs=0.2) and events["noise"][1] == pytest.approx(3.0, abs=0.3)
    assert events["tone"][0] == pytest.approx(3.0, abs=0.3) and events["tone"][1] == pytest.approx(6.0, abs=0.3)
    lines = Path(tsv).read_text().splitlines()
    assert Path(tsv).name == "noise_then_tone_events.tsv" and lines[0] == "filename\tonset\toffset\tevent_label"
    assert [line.split("\t") for line in lines[1:]] == [["noise_then_tone.wav", f"{onset:.3f}", f"{offset:.3f}", label]
                                                        for label, onset, offset in table["data"]]
    width, height = _png_size(plot)
    assert width == TIMELINE_WIDTH and height > 300
    assert summary.startswith("**noise_then_tone.wav**: 2 events in 6.0 s") and "every 100 ms" in summary

    for args, message in [((clips.noise_then_tone, 0.3, 0.5), "the off threshold (0.5) must not exceed the on "
                                                               "threshold (0.3)"),
                          ((clips.noise_then_tone, 0.5, 0.3, 4), "median_steps must be a positive odd number"),
                          ((clips.bad,), "bad.wav is not audio that ast-hf can decode"),
                          ((clips.long,), "long.flac is 2 min 30 s long")]:
        with pytest.raises(AppError, match=re.escape(message)):
            detect(*args)
    table, *_ = detect(clips.noise_then_tone, 0.99, 0.99)  # still serving; nothing scores 0.99 for long enough
    assert table["data"] == [] or all(label in ("noise", "tone") for label, *_ in table["data"])


def test_concurrent_requests_are_queued_and_all_answered(served, clips):
    from gradio_client import Client, handle_file

    client = Client(served[0], verbose=False)
    jobs = [client.submit(handle_file(str(clips.speech)), 0.0, api_name="/analyse") for _ in range(3)]
    results = [job.result(timeout=120) for job in jobs]
    assert [r[0]["label"] for r in results] == ["speech"] * 3
    assert len({json.dumps(r[0], sort_keys=True) for r in results}) == 1  # one model, the same answer


def test_tagging_and_event_detection_take_the_model_in_turn(served, clips, tmp_path):
    """One model, one request at a time, whichever tab asked: events asked for while a long recording is tagged
    wait for it (each event had its own queue: the short detection ran beside the tagging and ended first)."""
    from gradio_client import Client, handle_file

    long = tmp_path / "long_noise.wav"  # within the served limit; its tagging takes seconds with the tiny model
    sf.write(long, noise(100.0, "white", seed=7), RATE)
    client = Client(served[0], verbose=False)
    tagging = client.submit(handle_file(str(long)), 0.0, api_name="/analyse")
    deadline = time.monotonic() + 60
    while tagging.status().code.name not in ("PROCESSING", "PROGRESS") and time.monotonic() < deadline:
        time.sleep(0.02)  # until the server works on it (PROGRESS: its progress bar)
    assert not tagging.done(), "the tagging ended before the test could ask for events beside it"
    detecting = client.submit(handle_file(str(clips.speech)), 0.5, 0.3, 5, 0.2, 0.3, api_name="/detect_events")
    detecting.result(timeout=300)
    assert tagging.done(), "event detection ran beside the tagging of another request"
    assert tagging.result(timeout=60)[-1].startswith("**1 min 40 s** of audio")


def test_progress_follows_the_tagging_windows(served, tmp_path):
    """A long recording shows its progress: the page gets (windows done, windows in all) while tagging runs."""
    from gradio_client import Client, handle_file

    path = tmp_path / "noise_90s.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(90 * RATE)).astype(np.float32), RATE)
    job = Client(served[0], verbose=False).submit(handle_file(str(path)), 0.0, api_name="/analyse")
    seen, deadline = [], time.monotonic() + 120
    while not job.done() and time.monotonic() < deadline:
        seen += [(unit.desc, unit.index, unit.length) for unit in job.status().progress_data or []]
        time.sleep(0.05)
    windows = job.result(timeout=120)[4].split("; ")[1].split()[0]  # "... audio; N windows scored. ..."
    tagging = [(index, length) for desc, index, length in seen if desc == "tagging"]
    assert tagging and all(length == int(windows) for _, length in tagging), seen
    assert 0 < max(index for index, _ in tagging) < int(windows)  # seen midway, not only at the end


# --------------------------------------------------------------------------------------------------------------
# A real browser, against `ast-hf app`
# --------------------------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _start_cli_app(model_dir: Path, temporary: Path) -> tuple[subprocess.Popen, str, int]:
    """`ast-hf app --model DIR --port P` in a subprocess, as a person starts it, with its temporary files under
    `temporary`; (the process, its URL, its port) once it serves."""
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(temporary)}
    process = subprocess.Popen([sys.executable, "-m", "ast_hf.cli", "app", "--model", str(model_dir), "--port",
                                str(port), "--max-seconds", str(MAX_SECONDS)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline, lines = time.monotonic() + 180, []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if line.startswith("ast-hf app: serving"):
            break
    if not (lines and lines[-1].startswith(f"ast-hf app: serving http://127.0.0.1:{port}")):
        _stop(process)
        pytest.fail("ast-hf app did not start:\n" + "".join(lines))
    return process, f"http://127.0.0.1:{port}/", port


def _stop(process: subprocess.Popen) -> int:
    """SIGTERM, as `kill` or a service manager sends it; its exit code."""
    process.terminate()
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture(scope="module")
def cli_app(model_dir, tmp_path_factory):
    """`ast-hf app` in a subprocess; its URL and port once it serves."""
    process, url, port = _start_cli_app(model_dir, tmp_path_factory.mktemp("app_tmp"))
    try:
        yield url, port
    finally:
        _stop(process)


def test_cli_app_stopped_by_sigterm_removes_its_work_folder(model_dir, tmp_path):
    """The served app keeps results and example clips in a work folder; a SIGTERM (`kill`, `docker stop`) ends it
    cleanly (exit 0) and that folder goes with it, as with Ctrl-C."""
    process, url, _ = _start_cli_app(model_dir, tmp_path)
    assert len(list(tmp_path.glob("ast-hf-app-*"))) == 1
    assert _stop(process) == 0, process.stdout.read()
    assert not list(tmp_path.glob("ast-hf-app-*"))


def _rendered_image(page, selector: str) -> tuple[int, int, float]:
    """(natural width, natural height, pixel standard deviation) of the PNG an <img> shows."""
    from PIL import Image

    image = page.locator(f"{selector} img").first
    image.wait_for(state="visible", timeout=60_000)
    page.wait_for_function("s => { const i = document.querySelector(s + ' img'); return i && i.complete && "
                           "i.naturalWidth > 0; }", arg=selector, timeout=60_000)
    width, height = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    pixels = np.asarray(Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body())).convert("L"))
    assert pixels.shape == (height, width)
    return width, height, float(pixels.std())


def _table_rows(page, selector: str) -> int:
    """Data rows a gr.Dataframe shows (its rows are role=row elements, the header's included)."""
    return page.locator(f"{selector} [role=row]").count() - 1


def _top_label(page) -> str:
    lines = [line for line in page.locator("#labels").inner_text().splitlines() if line.strip()]
    return lines[1]  # the first line is the component's label


def test_browser_uploads_clips_sees_results_events_live_tags_and_messages(cli_app, clips, tmp_path):
    pytest.importorskip("playwright", reason="playwright is not installed (pip install 'ast-hf[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's chromium is not installed here (scripts/setup.sh installs it where it can)")
    from playwright.sync_api import expect, sync_playwright

    url, port = cli_app
    assert _listening_addresses(port) == {"0100007F"}, "ast-hf app must bind 127.0.0.1 only by default"
    keep = Path(os.environ["AST_HF_SCREENSHOTS"]) if os.environ.get("AST_HF_SCREENSHOTS") else None
    started = time.monotonic()

    def screenshot(page, name, full_page=True):
        page.screenshot(path=tmp_path / name, full_page=full_page, animations="disabled")
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / name, keep / name)

    def upload_and_tag(page, path):
        clear = page.locator("#recording button[aria-label=Clear]")
        if clear.count():
            clear.first.click()
        page.locator("#recording input[type=file]").set_input_files(str(path))
        clear.first.wait_for(timeout=30_000)  # the upload arrived: the input holds a value
        page.click("#tag-button")

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=[*CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={clips.microphone}"],
            viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url, timeout=60_000)
            page.wait_for_selector("#recording input[type=file]", state="attached", timeout=60_000)

            upload_and_tag(page, clips.speech)
            expect(page.locator("#summary")).to_contain_text("2.0 s", timeout=120_000)
            assert _top_label(page) == "speech"
            width, height, spread = _rendered_image(page, "#timeline")
            assert width == TIMELINE_WIDTH and height > 300 and spread > 5
            width, height, spread = _rendered_image(page, "#explanation")
            assert width == EXPLANATION_WIDTH and height > 300 and spread > 5
            links = {Path(a.get_attribute("href")).name: a.get_attribute("href")
                     for a in page.locator("#downloads a[href]").all()}
            assert sorted(links) == ["speech_labels.json", "speech_timeline.csv"]
            csv_text = page.request.get(links["speech_timeline.csv"]).text()
            assert csv_text.startswith("window,start,end,rank,label,score")
            assert json.loads(page.request.get(links["speech_labels.json"]).text())["labels"][0]["label"] == "speech"

            upload_and_tag(page, clips.bad)
            toast = page.locator("[data-testid=toast-body]")
            expect(toast.first).to_contain_text("bad.wav is not audio that ast-hf can decode", timeout=60_000)
            page.wait_for_function("() => getComputedStyle(document.querySelector('[data-testid=toast-body]'))"
                                   ".opacity === '1'", timeout=10_000)  # faded in, for the screenshot
            screenshot(page, "app_error.png", full_page=False)  # the message is pinned to the window
            page.locator("[data-testid=toast-close]").first.click()

            upload_and_tag(page, clips.tone)  # the next good upload still works
            expect(page.locator("#summary")).to_contain_text("resampled from 44100 Hz", timeout=120_000)
            assert _top_label(page) == "tone"

            page.get_by_role("button", name="scene speech tone noise").click()  # an example made offline
            expect(page.locator("#summary")).to_contain_text("12.0 s", timeout=120_000)
            _rendered_image(page, "#timeline")
            screenshot(page, "app_recording.png")

            page.get_by_role("tab", name="Sound events").click()  # the events of the same recording
            page.click("#detect-button")
            expect(page.locator("#events-summary")).to_contain_text("scene_speech_tone_noise.wav", timeout=120_000)
            events_shown = _table_rows(page, "#events-table")
            assert events_shown >= 1 and "tone" in page.locator("#events-table").inner_text()
            width, height, spread = _rendered_image(page, "#events-plot")
            assert width == TIMELINE_WIDTH and height > 300 and spread > 5
            tsv_link = page.locator("#events-download a[href]").first.get_attribute("href")
            tsv_lines = page.request.get(tsv_link).text().splitlines()
            assert tsv_lines[0] == "filename\tonset\toffset\tevent_label" and len(tsv_lines) == events_shown + 1
            screenshot(page, "app_events.png")

            # Chromium's fake microphone plays clips.microphone (noise, then a tone) into the streaming input.
            page.get_by_role("tab", name="Live").click()
            page.locator("#live-microphone button", has_text="Record").click()
            # generous waits: the stream is real time, and a loaded machine (a parallel job) delays every chunk
            try:
                expect(page.locator("#live-labels")).to_contain_text("tone", timeout=60_000)
            except AssertionError:
                # Once in a full suite run on 2026-12-02 no tag appeared in 90 s (and the test passed alone, three
                # times): record again once, and say what the page showed the first time if that fails too.
                first = page.locator("#live-status").inner_text()
                page.locator("#live-microphone button", has_text="Stop").click()
                expect(page.locator("#live-microphone button", has_text="Record")).to_be_visible(timeout=60_000)
                page.locator("#live-microphone button", has_text="Record").click()
                try:
                    expect(page.locator("#live-labels")).to_contain_text("tone", timeout=90_000)
                except AssertionError as error:
                    raise AssertionError(f"no live tag 'tone'; status the first time: {first!r}, now: "
                                         f"{page.locator('#live-status').inner_text()!r}") from error
            expect(page.locator("#live-status")).to_contain_text("windows of 1.28 s", timeout=10_000)
            page.wait_for_function("() => /Heard ([5-9]|\\d\\d)\\./.test(document.querySelector('#live-status')"
                                   ".innerText)", timeout=90_000)  # the tone of the loop has ended once
            page.locator("#live-microphone button", has_text="Stop").click()
            expect(page.locator("#live-status")).to_contain_text("recording ended", timeout=60_000)
            assert _table_rows(page, "#live-events") >= 1 and "tone" in page.locator("#live-events").inner_text()
            screenshot(page, "app_live.png")

            page.get_by_role("tab", name="Model").click()
            expect(page.locator("#model-info")).to_contain_text("speech, tone, noise")
            screenshot(page, "app_model.png")
        finally:
            context.close()
    hosts = {request.split("/")[2] for request in requested if request.startswith("http")}
    assert hosts == {f"127.0.0.1:{port}"}, f"the page fetched from elsewhere: {hosts}"
    print(f"browser flows: {time.monotonic() - started:.1f} s")


# --------------------------------------------------------------------------------------------------------------
# The pieces, without a server
# --------------------------------------------------------------------------------------------------------------


def test_check_recording_messages_and_limits(clips):
    from ast_hf.app import check_recording

    assert check_recording(clips.speech) == (pytest.approx(2.0), RATE)
    assert check_recording(clips.tone) == (pytest.approx(2.0), 44100)
    with pytest.raises(ValueError, match="Upload a recording or record one"):
        check_recording(None)
    with pytest.raises(ValueError, match=r"at most 10\.0 s"):
        check_recording(clips.long, max_seconds=10)


def _live_handlers(demo):
    """The live tab's (chunk handler, end-of-recording handler), as Gradio calls them."""
    fns = {fn.api_name: fn.fn for fn in demo.fns.values()}
    return fns["listen"], fns["listen_end"]


def test_the_live_handler_tags_as_the_streaming_tagger_does(trained):
    """Chunks through the page's handler give the windows and events of `StreamingTagger` fed the same audio:
    exactly for a 16 kHz mono browser, up to resampling rounding for 48 kHz stereo; the end resets the session."""
    from ast_hf import StreamingTagger
    from ast_hf.app import LIVE_EVENTS, build_app, live_hop_seconds
    from ast_hf.audio_io import resample
    from ast_hf.inference import label_names, select_top

    model, fe = trained
    listen, end = _live_handlers(build_app(model, fe, examples=[]))
    names = label_names(model.config)
    top = lambda window: dict(select_top(np.asarray(window.scores), names, 5))  # noqa: E731
    rows = lambda events: [[e.label, e.onset, e.offset] for e in sorted(events, key=lambda e: (e.onset, e.label))]  # noqa: E731
    wave = np.concatenate([noise(2.0, "white", seed=4), tone(2.0, 440.0), noise(2.0, "pink", seed=4)])

    # A browser recording at 16 kHz, mono int16, half a second per chunk.
    pcm = np.round(wave * 32767).astype(np.int16)
    tagger = StreamingTagger(model, fe, hop=live_hop_seconds(model.config), events=LIVE_EVENTS)
    session, latest, events = None, None, []
    for first in range(0, len(pcm), RATE // 2):
        labels, shown_events, status, session = listen((RATE, pcm[first:first + RATE // 2]), session)
        windows = tagger.feed(pcm[first:first + RATE // 2] / 32768.0)
        latest, events = (windows[-1] if windows else latest), events + tagger.pop_events()
        assert labels == (top(latest) if latest else None) and shown_events == rows(events)
    labels, shown_events, status, session = end(session)
    final = tagger.flush()
    events += tagger.pop_events()
    assert labels == top(final[-1] if final else latest) and shown_events == rows(events)
    assert {e.label for e in events} >= {"tone", "noise"}, events  # something to compare
    assert session is None and status.endswith("recording ended.")  # the next recording starts afresh

    # A browser at 48 kHz in stereo: resampled as a stream, it is the whole recording resampled at once.
    wave48 = resample(wave, RATE, 48000)
    pcm48 = np.round(np.clip(wave48, -1, 1) * 32767).astype(np.int16)
    whole = StreamingTagger(model, fe, hop=live_hop_seconds(model.config), events=LIVE_EVENTS)
    expected = whole.feed(resample(pcm48 / 32768.0, 48000, RATE)) + whole.flush()
    seen = []  # labels after each chunk; a quarter-second chunk completes one window at most
    for first in range(0, len(pcm48), 12000):
        labels, _, _, session = listen((48000, np.stack([pcm48[first:first + 12000]] * 2, axis=1)), session)
        if labels is not None and (not seen or labels != seen[-1]):
            seen.append(labels)
    labels, shown_events, status, session = end(session)
    seen.append(labels)
    assert len(seen) == len(expected)
    for got, window in zip(seen, expected):
        assert list(got) == list(top(window)) and np.allclose(list(got.values()), list(top(window).values()),
                                                               atol=1e-4)
    assert [row[0] for row in shown_events] == [row[0] for row in rows(whole.pop_events())]
    assert f"{len(expected)} windows" in status and "Heard 6.0 s" in status

    assert end(None)[-1] is None  # a stop with nothing recorded changes nothing


def test_example_clips_are_made_offline(tmp_path):
    from ast_hf.app import write_example_clips

    paths = write_example_clips(tmp_path)
    assert [p.stem for p in paths] == ["speech", "tone_440hz", "sweep", "pink_noise", "scene_speech_tone_noise"]
    assert sf.info(paths[-1]).duration == pytest.approx(12.0)
    assert all(sf.info(p).samplerate == RATE for p in paths)


def test_cli_app_refuses_bad_arguments_before_loading_a_model(capsys):
    from ast_hf.cli import main

    assert main(["app", "--model", "/no/such/model", "--max-seconds", "0"]) == 1
    assert "--max-seconds must be positive" in capsys.readouterr().err
    assert main(["app", "--model", "/no/such/model"]) == 1
    assert "no model folder at /no/such/model" in capsys.readouterr().err


def test_the_space_script_serves_the_model_it_is_given(model_dir, monkeypatch):
    """examples/app.py: the model from its argument (else AST_HF_MODEL), loopback unless the Space says 0.0.0.0."""
    import runpy

    import ast_hf.app

    launched = []
    monkeypatch.setattr(ast_hf.app, "launch_app", lambda demo, host, port: launched.append((demo, host, port)))
    monkeypatch.setenv("AST_HF_MAX_SECONDS", "60")
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    space = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "app.py"))
    space["main"](["app.py", str(model_dir)])
    demo, host, port = launched[0]
    assert (host, port) == ("127.0.0.1", 7860)
    assert demo.title == f"ast-hf: {model_dir}"
    assert space["DEFAULT_MODEL"] == "MIT/ast-finetuned-audioset-10-10-0.4593"


def test_an_explained_segment_past_the_end_is_refused_before_tagging(trained, clips, tmp_path, monkeypatch):
    """The header says how long the recording is: a start past its end is refused before tagging (which takes
    minutes on a long recording); the decoded length still decides for starts within the header's slack."""
    import ast_hf.long_audio
    from ast_hf.app import analyse_recording

    model, fe = trained
    tagged = []
    real = ast_hf.long_audio.tag_long_audio
    monkeypatch.setattr(ast_hf.long_audio, "tag_long_audio", lambda *a, **k: tagged.append(1) or real(*a, **k))
    for start in (-1.0, 2.5, 2.2):  # clips.speech lasts 2.0 s
        with pytest.raises(ValueError, match="start inside the recording"):
            analyse_recording(model, fe, clips.speech, tmp_path, explain_start=start)
    assert tagged == []
    # 1.99 s leaves 10 ms, under one 25 ms frame: within the header's slack, so the decoded length refuses it
    with pytest.raises(ValueError, match="shorter than one 25 ms frame"):
        analyse_recording(model, fe, clips.speech, tmp_path, explain_start=1.99)
    assert tagged == [1]
    analysis = analyse_recording(model, fe, clips.speech, tmp_path, explain_start=1.0)
    assert tagged == [1, 1] and analysis.segment == (1.0, pytest.approx(2.0))


def test_top_k_0_means_every_label_in_the_app_as_elsewhere(trained, clips, tmp_path):
    from ast_hf.app import analyse_recording, build_app

    model, fe = trained
    every = len(model.config.id2label)
    analysis = analyse_recording(model, fe, clips.speech, tmp_path, top_k=0)
    assert len(analysis.labels) == every
    assert len(json.loads(analysis.labels_json.read_text())["labels"]) == every
    assert len(analyse_recording(model, fe, clips.speech, tmp_path, top_k=1).labels) == 1
    demo = build_app(model, fe, top_k=0, examples=[])
    label_boxes = [block for block in demo.blocks.values() if type(block).__name__ == "Label"]
    assert label_boxes and all(box.num_top_classes == every for box in label_boxes)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="top_k must be a whole number >= 0"):
            build_app(model, fe, top_k=bad, examples=[])


def _recording_handlers(demo):
    """The recording tab's and the events tab's handlers, as Gradio calls them."""
    fns = {fn.api_name: fn.fn for fn in demo.fns.values()}
    return fns["analyse"], fns["detect_events"]


def test_messages_name_an_upload_by_its_name_not_the_servers_copy(trained, tmp_path):
    """Gradio hands the handlers its temporary copy of an upload (/tmp/gradio/<hash>/name.flac): a decoder's
    error or warning during tagging names the file as the person knows it, as the header checks do."""
    import gradio as gr

    from ast_hf.app import build_app

    model, fe = trained
    analyse, detect = _recording_handlers(build_app(model, fe, examples=[]))
    server_copy = tmp_path / "gradio" / "0123abcd"
    server_copy.mkdir(parents=True)
    rng = np.random.default_rng(5)
    wave = (0.1 * rng.standard_normal(3 * RATE)).astype(np.float32)
    broken = server_copy / "broken.wav"  # a float WAV with a run of NaN: passes the header, refused decoded
    sf.write(broken, np.where(np.arange(wave.size) // 100 == 20, np.nan, wave), RATE, subtype="FLOAT")
    truncated = server_copy / "cut.wav"  # the header declares 3 s, half of it is present: a warning
    sf.write(server_copy / "whole.wav", wave, RATE)
    data = (server_copy / "whole.wav").read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    for handler, args in ((analyse, (0.0,)), (detect, (0.5, 0.3, 5, 0.2, 0.3))):
        with pytest.raises(gr.Error) as refused:
            handler(str(broken), *args)
        assert "broken.wav" in refused.value.message and str(server_copy) not in refused.value.message
        with pytest.warns(UserWarning) as caught:
            handler(str(truncated), *args)
        said = [str(w.message) for w in caught if "truncated" in str(w.message)]
        assert said and all("cut.wav" in m and str(server_copy) not in m for m in said), said


def test_a_recording_shorter_than_one_frame_is_refused_by_its_name(trained, tmp_path):
    """A click on record and stop gives a recording of a few ms: the message names the file and its length (the
    feature extractor's own refusal spoke of 'clip 0' and a sample count)."""
    from ast_hf.app import analyse_recording

    model, fe = trained
    click = tmp_path / "click.wav"
    sf.write(click, np.full(160, 0.1, np.float32), RATE)  # 10 ms
    with pytest.raises(ValueError, match=r"^click\.wav lasts 10 ms, shorter than one 25 ms frame"):
        analyse_recording(model, fe, click, tmp_path)
    sf.write(click, np.full(RATE // 25, 0.1, np.float32), RATE)  # 40 ms: tagged
    assert analyse_recording(model, fe, click, tmp_path).windows == 1


def test_the_space_script_names_a_bad_setting_before_loading_the_model(monkeypatch):
    """A Space's variables are typed by hand: one that is not a number stops examples/app.py with a message naming
    the variable (it was `could not convert string to float` or `max_seconds must be ...`), before the model is
    loaded (the model here does not exist: loading would fail with another message)."""
    import runpy

    space = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "app.py"))
    for name, value in (("AST_HF_MAX_SECONDS", "one hour"), ("AST_HF_MAX_SECONDS", "0"),
                        ("GRADIO_SERVER_PORT", "http")):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(SystemExit) as stopped:
                space["main"](["app.py", "/no/such/model"])
            assert str(stopped.value).startswith(f"{name} must be") and repr(value) in str(stopped.value)
