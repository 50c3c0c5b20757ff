"""The web app: a Gradio page that tags a recording of any length, draws its timeline and explains it.

`build_app(model, feature_extractor, ...)` returns a `gradio.Blocks`; `launch_app` serves it on 127.0.0.1 unless
another host (or a public `share` link) is asked for. `ast-hf app` and `examples/app.py` (a Hugging Face Space)
are these two calls.

* Each tab is one `_add_<name>_tab(app)` function, listed in `_TABS`; a tab for a feature the package may lack
  (the live tagger) checks for it with `hasattr(ast_hf, ...)` and adds nothing when it is absent.
* The page's work is done by plain functions that know nothing of Gradio (`check_recording`,
  `analyse_recording`, `write_example_clips`); the handlers turn their `ValueError`s into a message in the page
  (`gradio.Error`) and their warnings into `gradio.Warning`, so a bad upload never stops the server.
* One model serves everyone: requests are queued and run one at a time (`queue(default_concurrency_limit=1)`).
* Gradio's analytics and version check are off and nothing is fetched at launch (the default theme's fonts are
  served by Gradio itself): the app runs on a machine with no internet.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .audio_io import AudioStream, probe
from .inference import label_names

DEFAULT_MAX_SECONDS = 3600.0  # one hour: a longer upload is refused from its header, before decoding
MAX_EXPLAIN_SECONDS = 30.0  # eager attention over longer segments needs gigabytes for a base-size model
MAX_QUEUE = 32  # requests waiting behind the running one; more are told the app is busy
KEEP_RESULTS_SECONDS = 3600.0  # result files (PNG, CSV, JSON) are deleted after an hour
DEFAULT_HOST = "127.0.0.1"
EXAMPLE_TEXT = "the quick brown fox jumps over the lazy dog"


# --------------------------------------------------------------------------------------------------------------
# The work, without Gradio
# --------------------------------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 00 min: a length as a person reads it."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _streamed_seconds(path: Path, limit: float, rate: int = 16000) -> float:
    """Seconds of audio in a file whose header states no length, decoded in blocks; stops once past `limit`."""
    samples = 0
    for block in AudioStream(path, rate):
        samples += len(block)
        if samples > limit * rate:
            break
    return samples / rate


def check_recording(path: str | Path | None, max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[float, int]:
    """(length in seconds, native sampling rate in Hz) of an uploaded recording, from its header.

    Raises:
        ValueError: with a message for the person who uploaded it: no file, an empty file, a file that is not
            audio ast-hf decodes, or a recording longer than `max_seconds`.
    """
    if path is None:
        raise ValueError("Upload a recording or record one with the microphone first.")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path.name} was not received; upload it again.")
    if path.stat().st_size == 0:
        raise ValueError(f"{path.name} is empty (0 bytes): there is no audio in it to tag.")
    try:
        info = probe(path, name=path.name)
    except ValueError as error:
        # The decoders name the upload by its temporary path, twice: once is enough, by its own name.
        reason = str(error).replace(str(path), path.name)
        for prefix in (f"cannot decode {path.name}: ", f"{path.name}: "):
            reason = reason.removeprefix(prefix)
        raise ValueError(f"{path.name} is not audio that ast-hf can decode ({reason}). Upload a recording: WAV, "
                         f"FLAC, MP3, Ogg, M4A, WebM, ...") from None
    seconds = (info.frames / info.sampling_rate if info.frames is not None
               else _streamed_seconds(path, max_seconds))
    if seconds <= 0:
        raise ValueError(f"{path.name} holds no audio samples (a zero-length recording).")
    if seconds > max_seconds:
        raise ValueError(f"{path.name} is {_clock(seconds)} long; this app takes recordings of at most "
                         f"{_clock(max_seconds)}. Tag longer ones with `ast-hf predict FILE --model M`, or start the "
                         f"app with a larger --max-seconds.")
    return seconds, info.sampling_rate


def read_segment(path: str | Path, sampling_rate: int, start: float, seconds: float) -> np.ndarray:
    """Mono float32 samples [n] of `seconds` from `start` (both in seconds) of a file at `sampling_rate` Hz,
    decoded block by block up to the segment's end only (an hour-long file is not decoded whole)."""
    first, last = round(start * sampling_rate), round((start + seconds) * sampling_rate)
    pieces, read = [], 0
    for block in AudioStream(path, sampling_rate):
        pieces.append(block[max(0, first - read):max(0, last - read)])
        read += len(block)
        if read >= last:
            break
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def explain_seconds(config) -> float:
    """Length of the explained segment: the model's own input (10.24 s for the AudioSet models), at most 30 s."""
    return min(MAX_EXPLAIN_SECONDS, config.max_length * 0.01)


@dataclass
class Analysis:
    """What the page shows for one recording.

    Attributes:
        labels: the top clip-level labels -> score (mean over windows), best first.
        duration: the recording's length in seconds.
        windows: how many windows were scored.
        segment: (start, end) in seconds of the explained segment.
        timeline_png, explanation_png: the figures (timeline over the whole recording; attention rollout).
        timeline_csv: per-window labels (window,start,end,rank,label,score; seconds).
        labels_json: the clip-level labels and how they were computed.
    """

    labels: dict[str, float]
    duration: float
    windows: int
    segment: tuple[float, float]
    timeline_png: Path
    explanation_png: Path
    timeline_csv: Path
    labels_json: Path


def analyse_recording(model, feature_extractor, path: str | Path, out_dir: str | Path, explain_start: float = 0.0,
                      top_k: int = 5, name: str | None = None, progress: bool = False) -> Analysis:
    """Tag a recording with sliding windows, draw its timeline, explain one segment, write the downloads.

    Args:
        path: an audio file of any length (decoded by `ast_hf.audio_io`, streamed).
        out_dir: folder for the PNG, CSV and JSON files (named after `name`, default the file's stem).
        explain_start: where the explained segment starts, in seconds; it lasts `explain_seconds(config)` (or to
            the end).
        progress: a tqdm bar over the windows (the page follows it).

    Raises:
        ValueError: the recording cannot be decoded, or `explain_start` is outside it.
    """
    from .atomic_io import write_text_atomic
    from .explanation import explain
    from .long_audio import tag_long_audio

    out_dir, stem = Path(out_dir), name or Path(path).stem
    tags = tag_long_audio(model, feature_extractor, path, progress=progress)
    if not 0 <= explain_start < tags.duration:
        raise ValueError(f"the explained segment must start inside the recording (0 to {tags.duration:.2f} s), got "
                         f"{explain_start:g} s")
    length = min(explain_seconds(model.config), tags.duration - explain_start)
    rate = feature_extractor.sampling_rate
    segment = read_segment(path, rate, explain_start, length)
    explanation = replace(explain(model, feature_extractor, segment, sampling_rate=rate), start=explain_start)
    top = tags.top(top_k)
    timeline_png = tags.plot(out_dir / f"{stem}_timeline.png", top_k=max(1, min(top_k, len(tags.labels))),
                             title=f"{stem}: {_clock(tags.duration)}, {len(tags.starts)} windows")
    explanation_png = explanation.plot(
        out_dir / f"{stem}_explanation.png",
        title=f"{explain_start:.2f}-{explain_start + length:.2f} s: attention rollout; top: "
              + ", ".join(f"{label} {score:.2f}" for label, score in explanation.top[:3]))
    timeline_csv = tags.write_csv(out_dir / f"{stem}_timeline.csv", top_k=top_k)
    record = {"file": Path(path).name if name is None else name, "duration": tags.duration,
              "windows": len(tags.starts), "window_seconds": float(tags.ends[0] - tags.starts[0]),
              "aggregate": tags.aggregate, "activation": tags.activation,
              "labels": [{"label": label, "score": score} for label, score in top]}
    labels_json = out_dir / f"{stem}_labels.json"
    write_text_atomic(labels_json, json.dumps(record, indent=2) + "\n")
    return Analysis(labels=dict(top), duration=tags.duration, windows=len(tags.starts),
                    segment=(explain_start, explain_start + length), timeline_png=timeline_png,
                    explanation_png=explanation_png, timeline_csv=timeline_csv, labels_json=labels_json)


def write_example_clips(folder: str | Path, sampling_rate: int = 16000) -> list[Path]:
    """Example recordings made offline by `ast_hf.synthetic` (espeak-ng speech, sox tones), as 16-bit WAVs:
    speech, a 440 Hz tone, a rising sweep, pink noise, and a 12 s scene of speech, a tone and noise in turn (a
    timeline with something to show). Clips whose program is not installed are left out with a warning."""
    import soundfile as sf

    from .synthetic import sox_synth, speak

    makers: dict[str, Callable[[], np.ndarray]] = {
        "speech": lambda: speak(EXAMPLE_TEXT, sampling_rate=sampling_rate),
        "tone_440hz": lambda: 0.5 * sox_synth(["sine", "440"], 3.0, sampling_rate),
        "sweep": lambda: 0.5 * sox_synth(["sine", "200-3000"], 3.0, sampling_rate),
        "pink_noise": lambda: 0.5 * sox_synth(["pinknoise"], 3.0, sampling_rate),
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clips: dict[str, np.ndarray] = {}
    for name, make in makers.items():
        try:
            clips[name] = np.asarray(make(), dtype=np.float32)
        except RuntimeError as error:  # espeak-ng or sox is not installed
            warnings.warn(f"example {name!r} left out: {error}", stacklevel=2)
    if {"speech", "tone_440hz", "pink_noise"} <= clips.keys():
        four = 4 * sampling_rate
        clips["scene_speech_tone_noise"] = np.concatenate(
            [np.resize(clips["speech"], four), np.resize(clips["tone_440hz"], four), np.resize(clips["pink_noise"],
                                                                                               four)])
    paths = []
    for name, wave in clips.items():
        path = folder / f"{name}.wav"
        sf.write(path, np.clip(wave, -1.0, 1.0), sampling_rate, subtype="PCM_16")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------


def disable_telemetry() -> None:
    """No analytics, no version check, no Hub telemetry: set before Gradio is imported (some read it then)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def require_gradio():
    """The `gradio` module, or an ImportError saying how to install it."""
    disable_telemetry()
    try:
        import gradio
    except ImportError as error:
        raise ImportError("the web app needs Gradio: pip install 'ast-hf[app]'") from error
    return gradio


@dataclass
class AppParts:
    """What every tab builder shares: the model, its limits, the folders it writes to and the components that
    other tabs may read (`recording`: the upload / microphone input of the recording tab)."""

    model: object
    feature_extractor: object
    max_seconds: float
    top_k: int
    results_dir: Path
    examples: list[Path]
    recording: object = None


def _fresh_folder(root: Path) -> Path:
    """A new folder for one request's files; folders older than `KEEP_RESULTS_SECONDS` are deleted first, so a
    long-running server does not fill the disk."""
    for old in root.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > KEEP_RESULTS_SECONDS:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def _summary(analysis: Analysis, seconds: float, native_rate: int, target_rate: int) -> str:
    start, end = analysis.segment
    resampled = f", resampled from {native_rate} Hz to {target_rate} Hz" if native_rate != target_rate else ""
    return (f"**{_clock(analysis.duration)}** of audio{resampled}; {analysis.windows} windows scored. "
            f"Attention explained on {start:.2f}-{end:.2f} s.")


def _add_recording_tab(app: AppParts) -> None:
    """Upload or record; top labels, the timeline over the whole recording, the attention rollout of one
    segment, and the CSV / JSON downloads."""
    import gradio as gr

    rate = app.feature_extractor.sampling_rate
    with gr.Tab("Tag a recording", id="recording"):
        with gr.Row():
            with gr.Column(scale=2) as inputs_column:
                app.recording = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording",
                                         elem_id="recording")
                explain_start = gr.Number(value=0.0, minimum=0.0, label="Explain from (seconds)",
                                          info=f"attention is explained on {explain_seconds(app.model.config):g} s "
                                               f"from here", elem_id="explain-start")
                run = gr.Button("Tag", variant="primary", elem_id="tag-button")
            with gr.Column(scale=3):
                summary = gr.Markdown(elem_id="summary")
                labels = gr.Label(num_top_classes=app.top_k, label="Top labels (whole recording)",
                                  elem_id="labels")
                files = gr.File(label="Downloads: timeline CSV, labels JSON", file_count="multiple",
                                elem_id="downloads")
        timeline = gr.Image(type="filepath", label="Timeline: top labels over time, above the spectrogram",
                            elem_id="timeline", format="png", buttons=["download", "fullscreen"])
        explanation = gr.Image(type="filepath", label="Attention rollout over the spectrogram", elem_id="explanation",
                               format="png", buttons=["download", "fullscreen"])

        # Gradio finds the progress tracker by its default value; track_tqdm follows tag_long_audio's windows.
        def analyse(path, start, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            progress(0.0, desc="reading the header")
            try:
                seconds, native_rate = check_recording(path, app.max_seconds)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    analysis = analyse_recording(app.model, app.feature_extractor, path,
                                                 _fresh_folder(app.results_dir), float(start or 0.0), app.top_k,
                                                 progress=True)
            except (ValueError, FileNotFoundError) as error:
                # It stays until closed (duration None): the person reads it, the server goes on.
                raise gr.Error(str(error), duration=None, print_exception=False) from None
            for warning in caught:
                if issubclass(warning.category, UserWarning):  # e.g. a file cut short (TruncatedAudioWarning)
                    gr.Warning(str(warning.message))
            return (analysis.labels, str(analysis.timeline_png), str(analysis.explanation_png),
                    [str(analysis.timeline_csv), str(analysis.labels_json)],
                    _summary(analysis, seconds, native_rate, rate))

        outputs = [labels, timeline, explanation, files, summary]
        # The last recording's results go first: a message about this one must not sit over that one's.
        run.click(lambda: [None] * len(outputs), None, outputs, queue=False, api_visibility="private").then(
            analyse, [app.recording, explain_start], outputs, api_name="analyse")
        if app.examples:
            with inputs_column:  # under the input they fill; they are built last because they name the outputs
                gr.Examples([[str(p), 0.0] for p in app.examples], [app.recording, explain_start], outputs, analyse,
                            cache_examples=False, run_on_click=True, label="Examples made offline (espeak-ng, sox)",
                            example_labels=[p.stem.replace("_", " ") for p in app.examples])


def _add_live_tab(app: AppParts) -> None:
    """Tags from the microphone as it hears, through issue 14's `ast_hf.StreamingTagger(model, feature_extractor)`
    (`feed(samples) -> scored windows`, each with `scores` [labels]); absent from ast-hf versions without it."""
    import gradio as gr

    import ast_hf

    if not hasattr(ast_hf, "StreamingTagger"):
        return
    from .audio_io import resample
    from .inference import select_top

    rate = app.feature_extractor.sampling_rate
    names = label_names(app.model.config)
    with gr.Tab("Live", id="live"):
        microphone = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Microphone",
                              elem_id="live-microphone")
        live_labels = gr.Label(num_top_classes=app.top_k, label="Latest window", elem_id="live-labels")
        tagger = gr.State(None)

        def listen(chunk, state):
            if chunk is None:
                return gr.skip(), state
            native_rate, samples = chunk  # int16 [samples] or [samples, channels] at the browser's rate
            samples = np.asarray(samples, dtype=np.float32) / 32768.0
            samples = samples.mean(axis=1) if samples.ndim == 2 else samples
            state = state or ast_hf.StreamingTagger(app.model, app.feature_extractor)
            windows = state.feed(resample(samples, native_rate, rate))
            if not windows:
                return gr.skip(), state
            return dict(select_top(np.asarray(windows[-1].scores), names, app.top_k)), state

        microphone.stream(listen, [microphone, tagger], [live_labels, tagger], stream_every=0.5,
                          concurrency_limit=1, concurrency_id="live", api_name="listen")
        microphone.stop_recording(lambda: None, None, tagger)  # the next recording starts a fresh tagger


def _add_model_tab(app: AppParts) -> None:
    """What the served model is: its labels, input length, the app's limits."""
    import gradio as gr

    config = app.model.config
    names = label_names(config)
    shown = ", ".join(names[:50]) + (f", ... ({len(names)} in all)" if len(names) > 50 else "")
    with gr.Tab("Model", id="model"):
        gr.Markdown(
            f"| model | {getattr(config, 'name_or_path', '') or 'in memory'} |\n|---|---|\n"
            f"| layers, width | {config.num_hidden_layers}, {config.hidden_size} |\n"
            f"| input | {config.max_length} frames = {config.max_length * 0.01:g} s windows, "
            f"{app.feature_extractor.sampling_rate} Hz |\n"
            f"| labels | {len(names)}: {shown} |\n"
            f"| longest upload | {_clock(app.max_seconds)} |\n"
            f"| explained segment | {explain_seconds(config):g} s |\n",
            elem_id="model-info")


# Tabs, in page order. Add one `_add_<name>_tab` per tab above and list it.
_TABS = [_add_recording_tab, _add_live_tab, _add_model_tab]


def build_app(model, feature_extractor, max_seconds: float = DEFAULT_MAX_SECONDS, top_k: int = 5,
              examples: list[str | Path] | None = None, title: str = "ast-hf: Audio Spectrogram Transformer"):
    """The Gradio page for `model` (an `ASTForAudioClassification` in eval mode) and its feature extractor.

    Args:
        max_seconds: longest recording accepted, checked from the file's header before decoding.
        top_k: labels shown and written.
        examples: example recordings under the input; None makes them with `write_example_clips` (espeak-ng,
            sox); [] shows none.

    Returns:
        a `gradio.Blocks`, queued (one request at a time, at most `MAX_QUEUE` waiting); serve it with
        `launch_app`.
    """
    if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    gr = require_gradio()
    work = tempfile.TemporaryDirectory(prefix="ast-hf-app-")
    root = Path(work.name)
    (root / "results").mkdir()
    if examples is None:
        examples = write_example_clips(root / "examples", feature_extractor.sampling_rate)
    app = AppParts(model=model, feature_extractor=feature_extractor, max_seconds=float(max_seconds), top_k=top_k,
                   results_dir=root / "results", examples=[Path(p) for p in examples])
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, KEEP_RESULTS_SECONDS)) as demo:
        gr.Markdown(f"## {title}\nTags a recording of any length with sliding windows, draws the labels over time "
                    f"and shows where the model looks (attention rollout).")
        for add in _TABS:
            add(app)
    demo.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    demo.ast_hf_workdir = work  # removed with the app
    return demo


def launch_app(demo, host: str = DEFAULT_HOST, port: int | None = None, share: bool = False, block: bool = True):
    """Serve `demo` on `host`:`port` (default 127.0.0.1, this machine only; port None: Gradio's first free one
    from 7860). `share` also opens a public gradio.live link (needs internet). `block=True` prints the URL and
    serves until Ctrl-C; `block=False` returns the app's local URL at once (close it with `demo.close()`)."""
    require_gradio()
    # Server-side rendering would start a Node process; Gradio's own start-up lines speak of launch() arguments.
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True, inbrowser=False,
                show_error=True, ssr_mode=False, quiet=True)
    if block:
        public = f" and {demo.share_url}" if share and demo.share_url else ""
        print(f"ast-hf app: serving {demo.local_url}{public} (Ctrl-C stops it)", flush=True)
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo.local_url


__all__ = ["DEFAULT_MAX_SECONDS", "Analysis", "analyse_recording", "build_app", "check_recording", "explain_seconds",
           "launch_app", "read_segment", "write_example_clips"]
