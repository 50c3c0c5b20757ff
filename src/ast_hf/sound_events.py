"""Sound events from score sequences: median filter, hysteresis thresholds, merge gap, minimum duration.

A score sequence is [steps, labels] with a time interval per step (frame scores: [i hop, (i + 1) hop); live
window scores: the hop around each window's centre). Post-processing, per label:

1. a median filter over `median_steps` steps (odd; edges repeat the first/last step) removes flicker;
2. hysteresis: an event opens at the first step scoring >= `on_threshold` and stays open while the score is
   >= `off_threshold` (<= on; default: the on threshold): a score hovering at the threshold gives one event;
3. events of one label separated by at most `merge_gap` seconds are joined;
4. events shorter than `min_duration` seconds (after joining) are dropped.

Both durations are compared with 1 ns of slack, so float rounding of the step times does not decide.

`EventDetector` does this incrementally (steps pushed as they come, each event emitted once, as soon as no later
step can change it), and `detect_events` runs the same detector over a whole sequence, so offline detection and
live tagging give the same events. The events are `ast_hf.event_tsv.SoundEvent`s, written and read as DCASE TSV
by `ast_hf.event_tsv`.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from dataclasses import dataclass

import numpy as np

from .event_tsv import SoundEvent

# Slack in duration comparisons: step times are start + i hop in floating point, so a gap of exactly `merge_gap`
# or an event of exactly `min_duration` may come out a few ulps longer or shorter.
_SLACK = 1e-9


@dataclass
class EventPostprocessing:
    """Post-processing parameters. Thresholds are one float for every label or {label: float} (labels left out
    get `default_threshold`); `off_threshold=None` means the on threshold (no hysteresis)."""

    on_threshold: float | dict[str, float] = 0.5
    off_threshold: float | dict[str, float] | None = None
    median_steps: int = 1
    min_duration: float = 0.0
    merge_gap: float = 0.0
    default_threshold: float = 0.5

    def thresholds(self, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(on [labels], off [labels]) as arrays; ValueError for unknown labels or off > on."""
        on = self._per_label(self.on_threshold, labels, "on_threshold")
        off = on.copy() if self.off_threshold is None else self._per_label(self.off_threshold, labels, "off_threshold")
        bad = np.flatnonzero(off > on)
        if len(bad):
            raise ValueError(f"off_threshold must not exceed on_threshold (hysteresis): label {labels[bad[0]]!r} has "
                             f"on {on[bad[0]]:g}, off {off[bad[0]]:g}")
        return on, off

    def _per_label(self, value, labels: list[str], name: str) -> np.ndarray:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(labels))
            if unknown:
                raise ValueError(f"{name} names unknown label(s) {unknown}; the model's labels are {labels}")
            out = np.array([value.get(label, self.default_threshold) for label in labels], dtype=np.float64)
        else:
            out = np.full(len(labels), value, dtype=np.float64)
        if not np.isfinite(out).all():
            raise ValueError(f"{name} must be finite numbers, got {value!r}")
        return out

    def check(self) -> None:
        """ValueError for a median length that is not a positive odd int, or negative durations."""
        if isinstance(self.median_steps, bool) or not isinstance(self.median_steps, (int, np.integer)) \
                or self.median_steps < 1 or self.median_steps % 2 == 0:
            raise ValueError(f"median_steps must be a positive odd number of steps, got {self.median_steps!r}")
        for name in ("min_duration", "merge_gap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")


class EventDetector:
    """Incremental post-processing of a score stream into events, one label set, one recording.

    `push(scores [n, labels], starts [n], ends [n])` (seconds) returns the events that became final; `close()`
    ends the stream and returns the rest. Events come out in the order they become final.
    """

    def __init__(self, labels: list[str], params: EventPostprocessing | None = None, filename: str = ""):
        self.labels = list(labels)
        self.params = params or EventPostprocessing()
        self.params.check()
        self.on, self.off = self.params.thresholds(self.labels)
        self.filename = filename
        self._half = self.params.median_steps // 2
        self._start_stream()

    def _start_stream(self) -> None:
        """A fresh stream: nothing filtered, no open or held event (at creation, and after `close()`, so that a
        detector used again does not filter a new stream's first steps with the last one's tail)."""
        self._raw: deque = deque(maxlen=self.params.median_steps)  # (scores [labels], start, end), last steps
        self._times: deque = deque()  # (start, end) of raw steps not yet filtered
        self._seen = 0  # raw steps pushed
        n = len(self.labels)
        self._active = np.zeros(n, bool)
        self._onset = np.zeros(n)  # onset of the open (or being extended) event, s
        self._last_end = np.zeros(n)  # end of the last step at or above the off threshold, s
        self._held: list[tuple[float, float] | None] = [None] * n  # closed event kept for a possible merge

    def push(self, scores: np.ndarray, starts, ends) -> list[SoundEvent]:
        """Add steps: scores [n, labels], starts/ends [n] in seconds (increasing). Returns events now final."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise ValueError(f"scores must be [steps, {len(self.labels)}], got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinite values")
        starts, ends = np.atleast_1d(np.asarray(starts, np.float64)), np.atleast_1d(np.asarray(ends, np.float64))
        if starts.shape != (len(scores),) or ends.shape != (len(scores),):
            # zip() would silently drop the steps without a time (or the times without a step)
            raise ValueError(f"starts and ends must be [{len(scores)}] (one time per step of scores), got "
                             f"{list(starts.shape)} and {list(ends.shape)}")
        out = []
        for row, start, end in zip(scores, starts, ends):
            if self._seen == 0:  # the median filter repeats the first step before the stream
                for _ in range(self._half):
                    self._raw.append(row)
            self._raw.append(row)
            self._times.append((float(start), float(end)))
            self._seen += 1
            if len(self._raw) == self.params.median_steps:
                out += self._step(np.median(np.stack(self._raw), axis=0), *self._times.popleft())
        return out

    def close(self) -> list[SoundEvent]:
        """End of the stream: filter the last steps (the last one repeated), close open events, return the rest.
        The detector is then ready for a new stream (times from 0 again)."""
        out = []
        if self._seen:
            last = self._raw[-1]
            while self._times:
                self._raw.append(last)
                if len(self._raw) == self.params.median_steps:  # a stream shorter than the filter fills it first
                    out += self._step(np.median(np.stack(self._raw), axis=0), *self._times.popleft())
        end = math.inf
        for c in np.flatnonzero(self._active):
            out += self._close_event(c, end)
        for c in range(len(self.labels)):
            out += self._release(c, end)
        self._start_stream()
        return out

    def _step(self, filtered: np.ndarray, start: float, end: float) -> list[SoundEvent]:
        out = []
        for c in range(len(self.labels)):
            out += self._release(c, start)
        opening = ~self._active & (filtered >= self.on)
        closing = self._active & (filtered < self.off)
        for c in np.flatnonzero(closing):
            out += self._close_event(c, start)
        for c in np.flatnonzero(opening):
            held = self._held[c]
            if held is not None and start - held[1] <= self.params.merge_gap + _SLACK:
                self._onset[c] = held[0]  # joins the held event
                self._held[c] = None
            else:  # any held event was released above: the gap is longer than merge_gap
                self._onset[c] = start
            self._active[c] = True
        self._last_end[self._active] = end
        return out

    def _close_event(self, c: int, now: float) -> list[SoundEvent]:
        self._active[c] = False
        self._held[c] = (float(self._onset[c]), float(self._last_end[c]))
        return self._release(c, now)

    def _release(self, c: int, now: float) -> list[SoundEvent]:
        """Emit (or drop, if too short) label c's held event once no step from `now` on can join it."""
        held = self._held[c]
        if held is None or now - held[1] <= self.params.merge_gap + _SLACK:
            return []
        self._held[c] = None
        onset, offset = held
        if offset - onset < self.params.min_duration - _SLACK:
            return []
        return [SoundEvent(round(onset, 6), round(offset, 6), self.labels[c], self.filename)]


def detect_events(scores: np.ndarray, labels: list[str], hop: float, params: EventPostprocessing | None = None,
                  filename: str = "", duration: float | None = None, start: float = 0.0) -> list[SoundEvent]:
    """Events of a regular score sequence [steps, labels], step i covering [start + i hop, start + (i + 1) hop)
    seconds (`hop` > 0, `start` >= 0). With `duration` (seconds of the recording) the events are cut at its end:
    offsets are clipped to it, and events that begin at or after it (steps past the end, e.g. padding columns) or
    that the cut leaves shorter than `min_duration` are dropped. Sorted by onset, then label."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores must be [steps, {len(labels)}] (one column per label), got {scores.shape}")
    if not (isinstance(hop, (int, float, np.number)) and math.isfinite(hop) and hop > 0):
        raise ValueError(f"hop must be a positive number of seconds per step, got {hop!r}")
    if not (isinstance(start, (int, float, np.number)) and math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a time >= 0 seconds (events before the recording), got {start!r}")
    if duration is not None and not (isinstance(duration, (int, float, np.number)) and math.isfinite(duration)
                                     and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds (the recording's length), got {duration!r}")
    detector = EventDetector(labels, params, filename)
    starts = start + np.arange(len(scores)) * hop
    events = detector.push(scores, starts, starts + hop) + detector.close()
    if duration is not None:
        end = round(float(duration), 6)
        # An event past the end would come out with onset >= offset (a row the TSV reader refuses), and one the
        # cut shortens is held to the same minimum duration as any other.
        events = [SoundEvent(e.onset, min(e.offset, end), e.label, e.filename) for e in events if e.onset < end]
        events = [e for e in events if e.offset - e.onset >= detector.params.min_duration - _SLACK]
    return sorted(events, key=lambda e: (e.filename, e.onset, e.label))


__all__ = ["EventPostprocessing", "EventDetector", "detect_events"]
