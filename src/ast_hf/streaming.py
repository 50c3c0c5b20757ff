"""Live tagging: samples arrive in chunks of any size, windows are scored as soon as they are complete.

`StreamingTagger` gives exactly the windows and window scores of `tag_long_audio` with the same window and hop
(windows at 0, hop, 2 hop, ...; at `flush()` one more aligned to the end of the stream when the regular ones stop
short of it, or the whole stream when it is shorter than the default window), whatever the chunk sizes.

Features are computed incrementally (`IncrementalFeatures`): a feature frame needs 400 samples (25 ms) and the
next one starts 160 samples (10 ms) later, so each frame is computed once, when its last sample arrives, by the
same filterbank as `ASTFeatureExtractor`; a window's features are a slice of the frames (hence the hop must be a
whole number of 10 ms frames). Only the end-aligned last window, which does not start on a frame, is featurised
from its samples. Samples and frames are held in buffers trimmed to what pending windows need (a window plus a
chunk), so memory is flat however long the stream runs.

With `events=EventPostprocessing(...)` the window scores also go through `sound_events.EventDetector` (the
post-processing of `ast-hf detect`), one step per window spanning the hop around the window's centre; each event
is reported once, by `pop_events()`, as soon as no later window can change it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .event_tsv import SoundEvent
from .filterbank import log_mel_filterbank
from .inference import apply_activation, featurize, label_names, model_device_dtype, resolve_activation, run_model
from .long_audio import FRAME_SHIFT_SECONDS, default_windows_per_call, window_samples
from .sound_events import EventDetector, EventPostprocessing


def _checked_samples(samples) -> np.ndarray:
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"feed mono samples [samples], got shape {samples.shape} (mix channels down first)")
    if not np.isfinite(samples).all():
        raise ValueError("the stream contains NaN or infinite samples")
    return samples


class IncrementalFeatures:
    """Normalised log-mel frames of a stream, each computed once when its last sample arrives; equal to what
    `feature_extractor` returns for the whole stream (up to float rounding)."""

    def __init__(self, feature_extractor):
        self.fe = feature_extractor
        self.frame_length = feature_extractor.min_samples  # 400 samples at 16 kHz
        self.frame_hop = round(FRAME_SHIFT_SECONDS * feature_extractor.sampling_rate)  # 160
        self._samples = np.zeros(0, np.float32)  # the samples of frames not yet computed
        self.frames_done = 0  # frames computed so far
        self.total = 0  # samples pushed so far

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples [n] (float32, at the extractor's rate); return the frames they complete [k, mel bins]."""
        self._samples = np.concatenate([self._samples, samples])
        self.total += len(samples)
        complete = self.fe.frames_for(self.total) - self.frames_done
        if complete <= 0:
            return np.zeros((0, self.fe.num_mel_bins), np.float32)
        used = (complete - 1) * self.frame_hop + self.frame_length
        features, _ = log_mel_filterbank(torch.from_numpy(self._samples[None, :used]),
                                         sampling_rate=self.fe.sampling_rate, num_mel_bins=self.fe.num_mel_bins,
                                         **self.fe.filterbank_normalisation())
        self._samples = self._samples[complete * self.frame_hop:]
        self.frames_done += complete
        return features[0].numpy()

    def padding_value(self) -> float:
        """The feature value of a padded (empty) frame: 0 log-mel, normalised."""
        return float(self.fe.normalize(torch.zeros(1))[0]) if self.fe.do_normalize else 0.0


@dataclass
class ScoredWindow:
    """One scored window: `index` (0, 1, ...), `start`/`end` in seconds of the stream, `scores` [labels],
    `latency` seconds from the `feed`/`flush` call that completed the window to its scores being ready."""

    index: int
    start: float
    end: float
    scores: np.ndarray
    latency: float


class StreamingTagger:
    """Tag a stream chunk by chunk with sliding windows.

    Args:
        model: an `ASTForAudioClassification`; feature_extractor: its `ASTFeatureExtractor`.
        window: seconds (default: the model's input length; a stream shorter than it is scored whole at flush).
        hop: seconds between window starts, a whole number of 10 ms frames (default min(5 s, window / 2)).
        activation: as `tag_long_audio` ("auto": sigmoid for multi-label models, else softmax).
        events: post-processing for events (None: window scores only).
        batch_size: windows per model call when a chunk completes several.

    `feed(samples)` takes mono float samples at the extractor's rate and returns the windows completed;
    `flush()` ends the stream (the end-aligned last window) and readies the tagger for a new one.
    """

    def __init__(self, model, feature_extractor, window: float | None = None, hop: float | None = None,
                 activation: str = "auto", events: EventPostprocessing | None = None, batch_size: int | None = None):
        self.model = model
        self.fe = feature_extractor
        self.config = model.config
        self.labels = label_names(self.config)
        self.activation = resolve_activation(self.config, activation)
        self.rate = feature_extractor.sampling_rate
        self.window, self.hop, self.allow_shorter = window_samples(window, hop, self.rate, self.config.max_length)
        frame_hop = round(FRAME_SHIFT_SECONDS * self.rate)
        if self.hop % frame_hop:
            given = (f"got {self.hop / self.rate:g} s" if hop is not None else
                     f"the default, half the {self.window / self.rate:g} s window, is {self.hop / self.rate:g} s: "
                     f"give a hop")
            raise ValueError(f"hop must be a whole number of 10 ms feature frames for live tagging; {given}")
        if self.window < feature_extractor.min_samples:
            raise ValueError(f"the window ({self.window / self.rate:g} s) is shorter than one 25 ms frame")
        self.hop_frames = self.hop // frame_hop
        self.window_frames = feature_extractor.frames_for(self.window)
        self.events = events
        if events is not None:
            events.check()
            events.thresholds(self.labels)  # unknown labels fail now, not at the first window
        if batch_size is not None and not batch_size >= 1:  # as tag_long_audio: 0 is not "default", and a
            # negative batch would make `_score_frames` step over every regular window, silently scoring none
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size or default_windows_per_call(self.config, *model_device_dtype(model))
        self._events: list[SoundEvent] = []
        self._start_stream()

    def _start_stream(self) -> None:
        self._features = IncrementalFeatures(self.fe)
        self._frames = np.zeros((0, self.fe.num_mel_bins), np.float32)  # frames from `_frames_start` on
        self._frames_start = 0
        self._tail = np.zeros(0, np.float32)  # the last `window` samples, for the end-aligned last window
        self._next = 0  # index of the next regular window
        self._covered = 0  # samples covered by the windows so far
        self._last_step_end = 0.0
        self._detector = None if self.events is None else EventDetector(self.labels, self.events)

    @property
    def seconds_fed(self) -> float:
        """Seconds of audio fed into the current stream."""
        return self._features.total / self.rate

    def feed(self, samples) -> list[ScoredWindow]:
        """Add mono float samples [n] at the extractor's rate; return the windows they complete, scored."""
        called = time.perf_counter()
        samples = _checked_samples(samples)
        self._frames = np.concatenate([self._frames, self._features.push(samples)])
        self._tail = np.concatenate([self._tail, samples])[-self.window:]
        ready = []
        while self._next * self.hop + self.window <= self._features.total:
            first = self._next * self.hop_frames - self._frames_start
            ready.append((self._next, self._frames[first:first + self.window_frames]))
            self._next += 1
        if ready:
            keep = self._next * self.hop_frames - self._frames_start
            self._frames = self._frames[keep:]
            self._frames_start += keep
        return self._score_frames(ready, called)

    def flush(self) -> list[ScoredWindow]:
        """End the stream: score the last window (aligned to the end) if the regular ones stop short of it, or
        the whole stream if it is shorter than the default window; close open events. The tagger is then ready
        for a new stream.

        Raises:
            ValueError: nothing was fed; the stream is shorter than an explicit window or than one 25 ms frame.
        """
        called = time.perf_counter()
        total = self._features.total
        try:
            if total == 0:
                raise ValueError("the stream holds no samples: nothing was fed before flush()")
            if self._covered == 0 and total < self.window:
                if not self.allow_shorter:
                    raise ValueError(f"the window ({self.window / self.rate:g} s) is longer than the stream "
                                     f"({total / self.rate:.3f} s); pass a shorter window, or none")
                if total < self.fe.min_samples:
                    raise ValueError(f"the stream has {total} samples, shorter than one 25 ms frame "
                                     f"({self.fe.min_samples} samples)")
                windows = self._score_clips([(0, self._tail)], called)
            elif self._covered < total:
                windows = self._score_clips([(total - self.window, self._tail)], called)
            else:
                windows = []
            if self._detector is not None:
                self._events += self._detector.close()
            return windows
        finally:
            self._start_stream()

    def pop_events(self) -> list[SoundEvent]:
        """Events that became final since the last call (each occurrence reported once), in seconds of the stream."""
        events, self._events = self._events, []
        return events

    # ----------------------------------------------------------------------------------------------------------
    def _score_frames(self, ready: list[tuple[int, np.ndarray]], called: float) -> list[ScoredWindow]:
        """Score regular windows given as (index, frames [window frames, mel bins]), padded to `max_length`."""
        out = []
        length = max(self.config.max_length, self.window_frames)
        for first in range(0, len(ready), self.batch_size):
            batch = ready[first:first + self.batch_size]
            values = torch.full((len(batch), length, self.fe.num_mel_bins), self._features.padding_value())
            for row, (_, frames) in zip(values, batch):
                row[:len(frames)] = torch.from_numpy(frames)
            out += self._finish([(index, index * self.hop, self.window) for index, _ in batch], values, None, called)
        return out

    def _score_clips(self, clips: list[tuple[int, np.ndarray]], called: float) -> list[ScoredWindow]:
        """Score the last window of a stream, given as (start sample, samples), featurised from its samples."""
        values, mask = featurize(self.fe, [clip for _, clip in clips], self.config.max_length)
        return self._finish([(self._next, start, len(clip)) for start, clip in clips], values, mask, called)

    def _finish(self, windows: list[tuple[int, int, int]], values: torch.Tensor, mask, called: float
                ) -> list[ScoredWindow]:
        """Run the model on a batch of windows given as (index, start sample, samples); feed the detector."""
        scores = apply_activation(run_model(self.model, values, mask).logits, self.activation)
        done = time.perf_counter()
        out = []
        for (index, start, length), row in zip(windows, scores):
            window = ScoredWindow(index, start / self.rate, (start + length) / self.rate, row, done - called)
            self._covered = max(self._covered, start + length)
            if self._detector is not None:
                # the hop around the centre; a stream shorter than the window, scored whole, spans at most itself
                centre = (window.start + window.end) / 2
                half = min(self.hop, length) / self.rate / 2
                step_start = max(self._last_step_end, centre - half)
                self._last_step_end = min(max(step_start, centre + half), window.end)
                self._events += self._detector.push(row[None], [step_start], [self._last_step_end])
            out.append(window)
        return out


__all__ = ["StreamingTagger", "ScoredWindow", "IncrementalFeatures"]
