"""The web app: a Gradio page that tags a recording of any length, draws its timeline, explains it, finds its sound
events, and tags the microphone live.

`build_app(model, feature_extractor, ...)` returns a `gradio.Blocks`; `launch_app` serves it on 127.0.0.1 unless
another host (or a public `share` link) is asked for. `ast-hf app` and `examples/app.py` (a Hugging Face Space)
are these two calls.

* Each tab is one `_add_<name>_tab(app)` function, listed in `_TABS`: tag a recording, its sound events, live
  tags from the microphone, the model.
* The page's work is done by plain functions and classes that know nothing of Gradio (`check_recording`,
  `analyse_recording`, `detect_recording_events`, `LiveSession`, `write_example_clips`); the handlers only
  translate: their `ValueError`s become a message in the page (`gradio.Error`) and their warnings a
  `gradio.Warning`, so a bad upload never stops the server.
* One model serves everyone: requests are queued and run one at a time (one concurrency group, "model", for
  tagging and events; the live tab's chunks have their own, "live", so that the microphone is not stalled).
* Gradio's analytics and version check are off and nothing is fetched at launch (the default theme's fonts are
  served by Gradio itself): the app runs on a machine with no internet.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .audio_io import AudioStream, StreamResampler, probe
from .event_tsv import SoundEvent, write_event_tsv
from .inference import label_names
from .long_audio import FRAME_SHIFT_SECONDS
from .sound_events import EventPostprocessing, detect_events
from .streaming import ScoredWindow, StreamingTagger

DEFAULT_MAX_SECONDS = 3600.0  # one hour: a longer upload is refused from its header, before decoding
MAX_EXPLAIN_SECONDS = 30.0  # eager attention over longer segments needs gigabytes for a base-size model
MAX_QUEUE = 32  # requests waiting behind the running one; more are told the app is busy
KEEP_RESULTS_SECONDS = 3600.0  # result files (PNG, CSV, JSON) are deleted after an hour
DEFAULT_HOST = "127.0.0.1"
EXAMPLE_TEXT = "the quick brown fox jumps over the lazy dog"
# The events tab's starting controls, for frame scores every 100 ms: hysteresis, a 0.5 s median filter, and no
# event shorter than 0.2 s or split by a gap under 0.3 s.
DEFAULT_EVENTS = EventPostprocessing(on_threshold=0.5, off_threshold=0.3, median_steps=5, min_duration=0.2,
                                     merge_gap=0.3)
# Live events: one step per window (a second apart), so no median filter (it would delay each report by steps).
LIVE_EVENTS = EventPostprocessing(on_threshold=0.5, off_threshold=0.3)
LIVE_HOP_FRAMES = 100  # a live window each second (10 ms frames); the CLI's up-to-5 s default is slow to watch


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


# How far a header's stated duration may be from the decoded one (ffprobe's estimate from the container).
HEADER_SLACK_SECONDS = 0.05


def _explained_length(explain_start: float, duration: float, config, feature_extractor) -> float:
    """Seconds of the explained segment from `explain_start` in a recording of `duration` seconds.

    Raises:
        ValueError: the segment starts outside the recording, or would be shorter than one 25 ms frame.
    """
    if not 0 <= explain_start < duration:
        raise ValueError(f"the explained segment must start inside the recording (0 to {duration:.2f} s), got "
                         f"{explain_start:g} s")
    length = min(explain_seconds(config), duration - explain_start)
    shortest = feature_extractor.min_samples / feature_extractor.sampling_rate  # one 25 ms frame
    if length < shortest:
        raise ValueError(f"the explained segment from {explain_start:g} s would last {length * 1000:.0f} ms, shorter "
                         f"than one {shortest * 1000:g} ms frame: start it at most at "
                         f"{duration - shortest:.2f} s (the recording ends at {duration:.2f} s)")
    return length


def analyse_recording(model, feature_extractor, path: str | Path, out_dir: str | Path, explain_start: float = 0.0,
                      top_k: int = 5, name: str | None = None, progress: bool = False) -> Analysis:
    """Tag a recording with sliding windows, draw its timeline, explain one segment, write the downloads.

    Args:
        path: an audio file of any length (decoded by `ast_hf.audio_io`, streamed).
        out_dir: folder for the PNG, CSV and JSON files (named after `name`, default the file's stem).
        explain_start: where the explained segment starts, in seconds; it lasts `explain_seconds(config)` (or to
            the end). Checked against the file's header before tagging, and against the decoded length after.
        top_k: labels listed, drawn and written (0: all).
        progress: a tqdm bar over the windows (the page follows it).

    Raises:
        ValueError: the recording cannot be decoded, or `explain_start` is outside it.
    """
    from .atomic_io import write_text_atomic
    from .explanation import explain
    from .long_audio import tag_long_audio

    out_dir, stem = Path(out_dir), name or Path(path).stem
    top_k = top_k or len(model.config.id2label)  # 0: every label, as elsewhere
    # Checked against the header first, so that a start past the end is refused before minutes of tagging; the
    # header's duration can be an estimate (ffprobe's) a few ms off, hence the slack, and the decoded duration
    # decides below.
    info = probe(path)
    if info.frames is not None:
        _explained_length(explain_start, info.frames / info.sampling_rate + HEADER_SLACK_SECONDS, model.config,
                          feature_extractor)
    rate, shortest = feature_extractor.sampling_rate, feature_extractor.min_samples
    # A click on the microphone's record and stop makes a recording of a few ms: named here, by its file (the
    # feature extractor's refusal speaks of "clip 0" and samples). Decodes the first 25 ms only.
    head = len(read_segment(path, rate, 0.0, shortest / rate))
    if head < shortest:
        raise ValueError(f"{Path(path).name if name is None else name} lasts {head / rate * 1000:.0f} ms, shorter "
                         f"than one {shortest / rate * 1000:g} ms frame: there is too little audio to tag")
    tags = tag_long_audio(model, feature_extractor, path, progress=progress)
    length = _explained_length(explain_start, tags.duration, model.config, feature_extractor)
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



def event_postprocessing(on_threshold: float | None, off_threshold: float | None, median_steps: float | None,
                         min_duration: float | None, merge_gap: float | None) -> EventPostprocessing:
    """The events tab's controls as a checked `EventPostprocessing`: thresholds in score units, the median filter
    in steps (odd), durations in seconds.

    Raises:
        ValueError: with a message for the page: a control left empty, off > on, an even or non-positive median
            filter, negative durations.
    """
    values = {"on threshold": on_threshold, "off threshold": off_threshold, "median filter": median_steps,
              "minimum duration": min_duration, "merge gap": merge_gap}
    empty = [name for name, value in values.items() if value is None]
    if empty:
        raise ValueError(f"set the {', '.join(empty)} of the event detection")
    if off_threshold > on_threshold:
        raise ValueError(f"the off threshold ({off_threshold:g}) must not exceed the on threshold ({on_threshold:g}): "
                         f"an event opens at the on threshold and stays open while the score is at least the off one")
    steps = int(median_steps) if float(median_steps).is_integer() else median_steps
    params = EventPostprocessing(on_threshold=float(on_threshold), off_threshold=float(off_threshold),
                                 median_steps=steps, min_duration=float(min_duration), merge_gap=float(merge_gap))
    params.check()
    return params


@dataclass
class EventDetection:
    """The sound events of one recording, as the events tab shows them.

    Attributes:
        events: the events (onset, offset in seconds; label; filename), sorted by onset.
        duration: the recording's length in seconds.
        hop: seconds per frame score (time_stride x 10 ms).
        plot_png: frame scores as a heat map with the events outlined, above the spectrogram.
        events_tsv: the events as DCASE TSV (filename, onset, offset, event_label).
    """

    events: list[SoundEvent]
    duration: float
    hop: float
    plot_png: Path
    events_tsv: Path


def detect_recording_events(model, feature_extractor, path: str | Path, out_dir: str | Path,
                            params: EventPostprocessing = DEFAULT_EVENTS, top_k: int = 5, name: str | None = None,
                            progress: bool = False) -> EventDetection:
    """Frame scores over a recording of any length (`ast_hf.frame_scores`), its events (`detect_events`), their
    picture (`plot_events`) and DCASE TSV, as `ast-hf detect` does for one file.

    Args:
        path: an audio file (decoded by `ast_hf.audio_io`, streamed).
        out_dir: folder for the PNG and TSV (named after `name`'s stem).
        name: the recording's name in the TSV (default the file's name).
        top_k: label rows in the picture (labels with events first; 0: all).
        progress: a tqdm bar over the windows (the page follows it).

    Raises:
        ValueError: the recording cannot be decoded or is shorter than one patch (~0.17 s); bad `params`.
    """
    from .frame_level import frame_scores
    from .plotting import plot_events

    out_dir, name = Path(out_dir), name or Path(path).name
    stem = Path(name).stem
    frames = frame_scores(model, feature_extractor, path, progress=progress)
    events = detect_events(frames.scores, frames.labels, frames.hop, params, filename=name, duration=frames.duration)
    plot_png = plot_events(frames, events, out_dir / f"{stem}_events.png",
                           top_k=min(top_k or len(frames.labels), len(frames.labels)))
    events_tsv = write_event_tsv(out_dir / f"{stem}_events.tsv", {name: events})
    return EventDetection(events=events, duration=frames.duration, hop=frames.hop, plot_png=plot_png,
                          events_tsv=events_tsv)


def live_hop_seconds(config) -> float:
    """Seconds between live windows: 1 s, or half the model's input when that is shorter; whole 10 ms frames
    (`StreamingTagger` slices its incremental features at frame boundaries)."""
    return min(LIVE_HOP_FRAMES, config.max_length // 2) * FRAME_SHIFT_SECONDS


def browser_samples(samples: np.ndarray) -> np.ndarray:
    """Mono float32 [n] in [-1, 1] from a browser's audio chunk: integer PCM (Gradio's numpy audio is int16) or
    float, [n] or [n, channels] (channels averaged)."""
    array = np.asarray(samples)
    if np.issubdtype(array.dtype, np.integer):
        array = array / float(np.iinfo(array.dtype).max + 1)
    array = array.astype(np.float32)
    return array.mean(axis=1) if array.ndim == 2 else array


class LiveSession:
    """One listener's microphone recording, tagged as it is heard: chunks at the browser's rate in, scored windows
    and events out (a `StreamingTagger` behind a `StreamResampler` to the model's rate).

    Attributes:
        tagger: the `StreamingTagger` (window: the model's input; hop: `live_hop_seconds`; events: `events`).
        latest: the last scored window (`scores` [labels], `start`/`end` in seconds), None before the first.
        windows: windows scored so far.
        events: every event reported so far, each occurrence once (seconds of the recording).
        heard: seconds of audio received.
    """

    def __init__(self, model, feature_extractor, events: EventPostprocessing = LIVE_EVENTS):
        self.tagger = StreamingTagger(model, feature_extractor, hop=live_hop_seconds(model.config), events=events)
        self.resampler: StreamResampler | None = None  # made at the first chunk, at the browser's rate
        self.latest: ScoredWindow | None = None
        self.windows = 0
        self.events: list[SoundEvent] = []
        self.heard = 0.0

    def hear(self, sampling_rate: int, samples: np.ndarray) -> list[ScoredWindow]:
        """Add a chunk (`browser_samples` formats, `sampling_rate` Hz); return the windows it completed.

        Raises:
            ValueError: the rate changed within the recording, or a bad rate or samples.
        """
        if self.resampler is None:
            self.resampler = StreamResampler(sampling_rate, self.tagger.rate)
        elif sampling_rate != self.resampler.orig_rate:
            raise ValueError(f"the microphone's sampling rate changed from {self.resampler.orig_rate} Hz to "
                             f"{sampling_rate} Hz within one recording; stop and record again")
        mono = browser_samples(samples)
        self.heard += len(mono) / sampling_rate
        return self._scored(self.tagger.feed(self.resampler.push(mono)))

    def finish(self) -> list[ScoredWindow]:
        """End of the recording: the rest of the audio and the last window (aligned to the end, or the whole
        recording when shorter than a window) scored, open events closed. Nothing when under one 25 ms frame was
        heard."""
        if self.resampler is None:
            return []
        windows = self.tagger.feed(self.resampler.flush())
        if self.tagger.seconds_fed * self.tagger.rate >= self.tagger.fe.min_samples:
            windows += self.tagger.flush()
        return self._scored(windows)

    def _scored(self, windows: list[ScoredWindow]) -> list[ScoredWindow]:
        if windows:
            self.latest = windows[-1]
            self.windows += len(windows)
        self.events += self.tagger.pop_events()
        return windows


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


@contextmanager
def _messages_in_page(upload: str | Path | None = None) -> Iterator[None]:
    """Run a handler's work so that its `ValueError`s (and `FileNotFoundError`s) become a message in the page
    (`gradio.Error`, which stays until closed) and its `UserWarning`s (e.g. a file cut short) a `gradio.Warning`:
    the person reads them, the server goes on. The decoders name a file by its path, which for an `upload` is
    Gradio's temporary copy on the server: the messages name it by its own name, as `check_recording` does."""
    import gradio as gr

    def said(message) -> str:
        return str(message) if upload is None else str(message).replace(str(upload), Path(upload).name)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(said(error), duration=None, print_exception=False) from None
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            gr.Warning(said(warning.message))


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
            with _messages_in_page(path):
                seconds, native_rate = check_recording(path, app.max_seconds)
                analysis = analyse_recording(app.model, app.feature_extractor, path, _fresh_folder(app.results_dir),
                                             float(start or 0.0), app.top_k, progress=True)
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


def _add_events_tab(app: AppParts) -> None:
    """Sound events of the recording tab's recording: frame scores, events with onsets and offsets (a table and
    `plot_events`' picture), the DCASE TSV to download; thresholds, median filter and durations as controls."""
    import gradio as gr

    rate = app.feature_extractor.sampling_rate
    hop_ms = app.model.config.time_stride * FRAME_SHIFT_SECONDS * 1000
    with gr.Tab("Sound events", id="events"):
        gr.Markdown(f"Events in the recording chosen in **Tag a recording** (upload, record or pick an example "
                    f"there): the clip head scores every {hop_ms:g} ms, then per label a median filter, hysteresis "
                    f"thresholds (an event opens at the on threshold and lasts while the score stays at or above "
                    f"the off threshold), close events joined and short ones dropped.")
        with gr.Row():
            on_threshold = gr.Slider(0.0, 1.0, value=DEFAULT_EVENTS.on_threshold, step=0.01, label="On threshold",
                                     elem_id="on-threshold")
            off_threshold = gr.Slider(0.0, 1.0, value=DEFAULT_EVENTS.off_threshold, step=0.01,
                                      label="Off threshold", elem_id="off-threshold")
            median_steps = gr.Slider(1, 21, value=DEFAULT_EVENTS.median_steps, step=2,
                                     label=f"Median filter (steps of {hop_ms:g} ms)", elem_id="median-filter")
            min_duration = gr.Number(value=DEFAULT_EVENTS.min_duration, minimum=0.0, step=0.1,
                                     label="Shortest event (s)", elem_id="min-duration")
            merge_gap = gr.Number(value=DEFAULT_EVENTS.merge_gap, minimum=0.0, step=0.1,
                                  label="Join events closer than (s)", elem_id="merge-gap")
        run = gr.Button("Detect events", variant="primary", elem_id="detect-button")
        summary = gr.Markdown(elem_id="events-summary")
        with gr.Row():
            table = gr.Dataframe(headers=["label", "onset (s)", "offset (s)"], datatype=["str", "number", "number"],
                                 interactive=False, label="Events", elem_id="events-table", scale=3)
            tsv = gr.File(label="Download: events TSV (DCASE)", elem_id="events-download", scale=2)
        plot = gr.Image(type="filepath", label="Frame scores with the events (red), above the spectrogram",
                        elem_id="events-plot", format="png", buttons=["download", "fullscreen"])

        def detect(path, on, off, median, shortest, gap, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            progress(0.0, desc="reading the header")
            with _messages_in_page(path):
                seconds, native_rate = check_recording(path, app.max_seconds)
                params = event_postprocessing(on, off, median, shortest, gap)
                detection = detect_recording_events(app.model, app.feature_extractor, path,
                                                    _fresh_folder(app.results_dir), params, app.top_k, progress=True)
            resampled = f", resampled from {native_rate} Hz to {rate} Hz" if native_rate != rate else ""
            rows = [[event.label, event.onset, event.offset] for event in detection.events]
            return (rows, str(detection.plot_png), str(detection.events_tsv),
                    f"**{Path(path).name}**: {len(rows)} events in {_clock(detection.duration)}{resampled}; frame "
                    f"scores every {detection.hop * 1000:g} ms.")

        outputs = [table, plot, tsv, summary]
        run.click(lambda: [None] * len(outputs), None, outputs, queue=False, api_visibility="private").then(
            detect, [app.recording, on_threshold, off_threshold, median_steps, min_duration, merge_gap], outputs,
            api_name="detect_events")


def _by_onset(event: SoundEvent) -> tuple[float, str]:
    return event.onset, event.label


def _live_view(session: LiveSession, top_k: int, labels: list[str], finished: bool = False) -> tuple:
    """(latest window's top labels or None, events rows [label, onset s, offset s] by onset, status line) of a
    session; events come final in the order they end, the table reads better in the order they began."""
    from .inference import select_top

    latest = session.latest
    top = None if latest is None else dict(select_top(np.asarray(latest.scores), labels, top_k))
    rows = [[event.label, event.onset, event.offset] for event in sorted(session.events, key=_by_onset)]
    window = session.tagger.window / session.tagger.rate
    if latest is None:
        status = (f"Heard {session.heard:.1f} s; the first tags come after one window ({window:g} s)"
                  + (": too short to tag." if finished else "."))
    else:
        status = (f"Heard {session.heard:.1f} s; {session.windows} windows of {window:g} s, every "
                  f"{session.tagger.hop / session.tagger.rate:g} s; latest {latest.start:.2f}-{latest.end:.2f} s, "
                  f"scored in {latest.latency * 1000:.0f} ms" + ("; recording ended." if finished else "."))
    return top, rows, status


def _add_live_tab(app: AppParts) -> None:
    """Tags from the microphone as it hears (`LiveSession`: `StreamingTagger` behind a resampler): the latest
    window's labels and each event once, one session per browser tab, ended and reset when the recording stops."""
    import gradio as gr

    names = label_names(app.model.config)
    with gr.Tab("Live", id="live"):
        gr.Markdown(f"Record from the microphone: a window of the model's input "
                    f"({app.model.config.max_length * FRAME_SHIFT_SECONDS:g} s) is tagged every "
                    f"{live_hop_seconds(app.model.config):g} s as it is heard; events (score >= "
                    f"{LIVE_EVENTS.on_threshold:g}, lasting while >= {LIVE_EVENTS.off_threshold:g}) are listed once "
                    f"each, when they end.")
        with gr.Row():
            with gr.Column(scale=2):
                microphone = gr.Audio(sources=["microphone"], streaming=True, type="numpy", label="Microphone",
                                      elem_id="live-microphone")
                status = gr.Markdown(elem_id="live-status")
            with gr.Column(scale=3):
                live_labels = gr.Label(num_top_classes=app.top_k, label="Latest window", elem_id="live-labels")
                live_events = gr.Dataframe(headers=["label", "onset (s)", "offset (s)"],
                                           datatype=["str", "number", "number"], interactive=False,
                                           label="Events heard", elem_id="live-events")
        session = gr.State(None)  # this browser tab's LiveSession

        def listen(chunk, current):
            if chunk is None:
                return gr.skip(), gr.skip(), gr.skip(), current
            current = current or LiveSession(app.model, app.feature_extractor)
            with _messages_in_page():
                current.hear(*chunk)  # (rate in Hz, int16 [samples] or [samples, channels])
            return (*_live_view(current, app.top_k, names), current)

        def stop(current):
            if current is None:
                return gr.skip(), gr.skip(), gr.skip(), None
            with _messages_in_page():
                current.finish()
            return (*_live_view(current, app.top_k, names, finished=True), None)  # the next recording starts afresh

        outputs = [live_labels, live_events, status, session]
        # One queue for both: the end of a recording is handled after its last chunk.
        microphone.stream(listen, [microphone, session], outputs, stream_every=0.5, concurrency_limit=1,
                          concurrency_id="live", api_name="listen")
        microphone.stop_recording(stop, session, outputs, concurrency_limit=1, concurrency_id="live",
                                  api_name="listen_end")


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
_TABS = [_add_recording_tab, _add_events_tab, _add_live_tab, _add_model_tab]


def build_app(model, feature_extractor, max_seconds: float = DEFAULT_MAX_SECONDS, top_k: int = 5,
              examples: list[str | Path] | None = None, title: str = "ast-hf: Audio Spectrogram Transformer"):
    """The Gradio page for `model` (an `ASTForAudioClassification` in eval mode) and its feature extractor.

    Args:
        max_seconds: longest recording accepted, checked from the file's header before decoding.
        top_k: labels shown and written (0: all).
        examples: example recordings under the input; None makes them with `write_example_clips` (espeak-ng,
            sox); [] shows none.

    Returns:
        a `gradio.Blocks`, queued (one request at a time, at most `MAX_QUEUE` waiting); serve it with
        `launch_app`.
    """
    if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number of seconds, got {max_seconds!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a whole number >= 0 (0: all labels), got {top_k!r}")
    top_k = top_k or len(model.config.id2label)
    gr = require_gradio()
    work = tempfile.TemporaryDirectory(prefix="ast-hf-app-")
    root = Path(work.name)
    (root / "results").mkdir()
    if examples is None:
        examples = write_example_clips(root / "examples", feature_extractor.sampling_rate)
    app = AppParts(model=model, feature_extractor=feature_extractor, max_seconds=float(max_seconds), top_k=top_k,
                   results_dir=root / "results", examples=[Path(p) for p in examples])
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, KEEP_RESULTS_SECONDS)) as demo:
        gr.Markdown(f"## {title}\nTags a recording of any length with sliding windows, draws the labels over time, "
                    f"shows where the model looks (attention rollout), finds its sound events, and tags the "
                    f"microphone live.")
        for add in _TABS:
            add(app)
    # Gradio queues each event apart (its own concurrency id): tagging, its examples' run and event detection
    # would take the model at the same time, each with its memory. One queue for them; live has its own ("live"),
    # so that the microphone is not stalled behind a long recording.
    for fn in demo.fns.values():
        if fn.queue and fn.concurrency_id != "live":
            fn.concurrency_id, fn.concurrency_limit = "model", 1
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


@contextmanager
def stop_on_sigterm():
    """Within it, SIGTERM (`kill`, `docker stop`, a service manager) ends the process as a normal exit (code 0)
    would, through `finally` blocks and exit handlers; Python's default ends it at once, which left a served app's
    work folder (its results and example clips) in the temporary directory. A process-wide setting, so `ast-hf
    app` (the process's owner) uses it, not `launch_app`."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum, frame):
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["DEFAULT_MAX_SECONDS", "DEFAULT_EVENTS", "LIVE_EVENTS", "Analysis", "EventDetection", "LiveSession",
           "analyse_recording", "browser_samples", "build_app", "check_recording", "detect_recording_events",
           "event_postprocessing", "explain_seconds", "launch_app", "live_hop_seconds", "read_segment",
           "stop_on_sigterm", "write_example_clips"]
