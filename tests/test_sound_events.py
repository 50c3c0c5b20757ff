"""Event post-processing on hand-made score sequences with known answers (median filter, hysteresis, merge gap,
minimum duration), incremental pushes equal one batch; sed_eval metrics of known events."""

import numpy as np
import pytest

from ast_hf.event_tsv import SoundEvent
from ast_hf.sed_metrics import event_metrics
from ast_hf.sound_events import EventDetector, EventPostprocessing, detect_events

LABELS = ["a", "b"]


def scores():
    s = np.zeros((50, 2))
    s[10:20, 0] = 0.9   # a: 1.0-2.0 s with a one-step dip at 1.4 s
    s[14, 0] = 0.1
    s[22:25, 0] = 0.8   # a: 2.2-2.5 s, 0.2 s after the first
    s[30, 1] = 0.9      # b: a 0.1 s blip at 3.0 s
    s[40:50, 1] = 0.7   # b: 4.0 s to the end
    s[45, 1] = 0.4      # between the off (0.3) and on (0.5) thresholds: hysteresis keeps it open
    return s


def test_each_step_of_the_post_processing_does_what_it_says():
    plain = detect_events(scores(), LABELS, 0.1, EventPostprocessing(0.5))
    assert [(e.onset, e.offset, e.label) for e in plain] == [
        (1.0, 1.4, "a"), (1.5, 2.0, "a"), (2.2, 2.5, "a"), (3.0, 3.1, "b"), (4.0, 4.5, "b"), (4.6, 5.0, "b")]
    hysteresis = detect_events(scores(), LABELS, 0.1, EventPostprocessing(0.5, 0.3))
    assert (4.0, 5.0, "b") in [(e.onset, e.offset, e.label) for e in hysteresis]
    median = detect_events(scores(), LABELS, 0.1, EventPostprocessing(0.5, median_steps=3))
    assert [(e.onset, e.offset, e.label) for e in median] == [
        (1.0, 2.0, "a"), (2.2, 2.5, "a"), (4.0, 5.0, "b")]  # the dip and the blip filtered out
    everything = detect_events(scores(), LABELS, 0.1, EventPostprocessing(0.5, 0.3, min_duration=0.15,
                                                                          merge_gap=0.25), duration=4.8)
    assert [(e.onset, e.offset, e.label) for e in everything] == [(1.0, 2.5, "a"), (4.0, 4.8, "b")]


def test_incremental_pushes_give_the_events_of_one_batch():
    params = EventPostprocessing({"a": 0.5, "b": 0.6}, {"a": 0.3, "b": 0.35}, median_steps=5, min_duration=0.2,
                                 merge_gap=0.3)
    rng = np.random.default_rng(0)
    s = np.clip(scores() + rng.normal(0, 0.15, scores().shape), 0, 1)
    batch = detect_events(s, LABELS, 0.1, params)
    detector = EventDetector(LABELS, params)
    streamed, first = [], 0
    while first < len(s):
        n = int(rng.integers(1, 6))
        starts = np.arange(first, min(first + n, len(s))) * 0.1
        streamed += detector.push(s[first:first + n], starts, starts + 0.1)
        first += n
    streamed += detector.close()
    assert sorted(streamed, key=lambda e: (e.onset, e.label)) == batch and batch


def test_a_gap_of_exactly_merge_gap_is_joined_wherever_it_falls():
    """Step times are start + i hop in floating point (0.30000000000000004): the same gap must join everywhere."""
    for gap_steps, merge_gap in ((3, 0.3), (1, 0.1), (7, 0.7)):
        for first in range(12):
            s = np.zeros((30, 1))
            s[first:first + 2] = 1
            s[first + 2 + gap_steps:first + 4 + gap_steps] = 1
            events = detect_events(s, ["x"], 0.1, EventPostprocessing(merge_gap=merge_gap))
            assert len(events) == 1, (gap_steps, first, events)
            split = detect_events(s, ["x"], 0.1, EventPostprocessing(merge_gap=merge_gap - 0.05))
            assert len(split) == 2, (gap_steps, first, split)


def test_bad_parameters_are_refused():
    for params, message in ((EventPostprocessing(median_steps=2), "odd"),
                            (EventPostprocessing(min_duration=-1), "min_duration"),
                            (EventPostprocessing(0.5, 0.6), "must not exceed"),
                            (EventPostprocessing({"c": 0.5}), "unknown label")):
        with pytest.raises(ValueError, match=message):
            detect_events(scores(), LABELS, 0.1, params)
    with pytest.raises(ValueError, match=r"\[steps, 2\]"):
        detect_events(np.zeros((5, 3)), LABELS, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        detect_events(np.full((5, 2), np.nan), LABELS, 0.1)


def test_sed_eval_scores_of_known_events():
    reference = {"a.wav": [SoundEvent(1.0, 2.0, "a"), SoundEvent(3.0, 3.5, "b")], "b.wav": []}
    estimated = {"a.wav": [SoundEvent(1.1, 2.1, "a"), SoundEvent(3.4, 3.9, "b")]}  # b 400 ms late
    scores = event_metrics(reference, estimated, LABELS)
    assert scores["event_f1"] == pytest.approx(0.5)  # 1 of 2 within the 200 ms collar
    assert event_metrics(reference, reference, LABELS)["event_f1"] == pytest.approx(1.0)
    assert event_metrics(reference, reference, LABELS)["segment_f1"] == pytest.approx(1.0)
    assert event_metrics(reference, {}, LABELS)["event_f1"] == 0.0  # nothing estimated: F1 0, not NaN
    assert scores["event_f1_macro"] == pytest.approx(0.5)  # a: F1 1, b: F1 0
    assert scores["segment_recall"] == pytest.approx(1.0)


def test_macro_f1_counts_a_class_never_detected_as_zero():
    reference = {"a.wav": [SoundEvent(0.0, 1.0, "dog"), SoundEvent(2.0, 3.0, "cat")]}
    estimated = {"a.wav": [SoundEvent(0.0, 1.0, "dog")]}  # dog perfect, cat never detected: (1 + 0) / 2
    scores = event_metrics(reference, estimated, ["dog", "cat", "bird"])  # bird: no events, no detections
    assert scores["event_f1_macro"] == pytest.approx(0.5) and scores["segment_f1_macro"] == pytest.approx(0.5)
    spurious = {"a.wav": [SoundEvent(0.0, 1.0, "dog"), SoundEvent(2.0, 3.0, "cat"), SoundEvent(5.0, 6.0, "bird")]}
    scores = event_metrics(reference, spurious, ["dog", "cat", "bird"])  # bird detected, never there: F1 0
    assert scores["event_f1_macro"] == pytest.approx(2 / 3) and scores["segment_f1_macro"] == pytest.approx(2 / 3)


def test_error_rate_without_reference_events_is_nan_not_a_huge_number():
    import math

    scores = event_metrics({"a.wav": []}, {"a.wav": [SoundEvent(0.0, 1.0, "dog")]}, ["dog"])
    assert math.isnan(scores["event_error_rate"]) and math.isnan(scores["segment_error_rate"])
    assert scores["event_f1"] == 0.0 and scores["event_f1_macro"] == 0.0
    silent = event_metrics({"a.wav": []}, {}, ["dog"])  # nothing to find, nothing found: no errors
    assert silent["event_error_rate"] == 0.0 and silent["segment_error_rate"] == 0.0


def test_events_are_cut_at_the_end_of_the_recording():
    """Steps past `duration` (e.g. padding columns) must not give an event that starts after the recording: it
    would have onset >= offset, a row the TSV reader refuses. An event the cut shortens keeps min_duration."""
    s = np.zeros((20, 1))
    s[2:5] = 1     # 0.2-0.5 s: inside
    s[10:13] = 1   # 1.0-1.3 s: cut at 1.2 s to 0.2 s
    s[15:18] = 1   # 1.5-1.8 s: after the end
    events = detect_events(s, ["x"], 0.1, duration=1.2)
    assert [(e.onset, e.offset) for e in events] == [(0.2, 0.5), (1.0, 1.2)]
    assert all(0 <= e.onset < e.offset <= 1.2 for e in events)
    long_only = detect_events(s, ["x"], 0.1, EventPostprocessing(min_duration=0.25), duration=1.2)
    assert [(e.onset, e.offset) for e in long_only] == [(0.2, 0.5)]  # 1.0-1.2 s is now 0.2 s long


def test_bad_times_are_refused():
    for hop in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="hop must be a positive"):
            detect_events(scores(), LABELS, hop)
    with pytest.raises(ValueError, match="start must be a time >= 0"):  # events would begin before the recording
        detect_events(scores(), LABELS, 0.1, start=-0.5)
    with pytest.raises(ValueError, match="duration must be a positive"):
        detect_events(scores(), LABELS, 0.1, duration=float("inf"))
    detector = EventDetector(LABELS)
    with pytest.raises(ValueError, match=r"starts and ends must be \[3\]"):  # zip() would drop the third step
        detector.push(np.ones((3, 2)), [0.0, 0.1], [0.1, 0.2])


def test_events_outside_the_label_set_are_refused_by_name():
    """sed_eval fails deep inside with "'cat' is not in list"; the error names the label, the file and the table."""
    reference = {"a.wav": [SoundEvent(1.0, 2.0, "a")]}
    with pytest.raises(ValueError, match=r"estimated events of 'a.wav' have label\(s\) \['cat'\] outside"):
        event_metrics(reference, {"a.wav": [SoundEvent(1.0, 2.0, "cat")]}, LABELS)
    with pytest.raises(ValueError, match=r"reference events of 'a.wav' have label\(s\) \['a'\] outside"):
        event_metrics(reference, {}, ["b"])
    # files only in `estimated` are not scored, so their labels are not checked
    assert event_metrics(reference, {**reference, "x.wav": [SoundEvent(0, 1, "cat")]}, LABELS)["event_f1"] == 1.0


def test_a_detector_closed_and_used_again_starts_afresh():
    """close() ends a stream: a second stream through the same detector gives the events a new detector gives (the
    old stream's median-filter tail and open events used to carry over into the new one's first steps)."""
    params = EventPostprocessing(0.5, 0.3, median_steps=5)
    rng = np.random.default_rng(1)
    first, second = np.clip(scores() + rng.normal(0, 0.2, (50, 2)), 0, 1), np.clip(scores()[::-1] + 0.0, 0, 1)
    times = np.arange(50) * 0.1
    reused = EventDetector(LABELS, params)
    reused.push(first, times, times + 0.1)
    reused.close()
    again = reused.push(second, times, times + 0.1) + reused.close()
    fresh = EventDetector(LABELS, params)
    assert again == fresh.push(second, times, times + 0.1) + fresh.close() and again


def test_numpy_numbers_are_accepted_as_seconds():
    """Durations read from arrays or configs are often numpy scalars (np.float32, np.int64): accepted like floats."""
    from ast_hf.long_audio import window_samples

    params = EventPostprocessing(0.5, min_duration=np.float32(0.15), merge_gap=np.int64(0))
    assert detect_events(scores(), LABELS, 0.1, params) == detect_events(
        scores(), LABELS, 0.1, EventPostprocessing(0.5, min_duration=0.15, merge_gap=0))
    assert window_samples(np.float32(1.0), np.int64(1), 16000, 128) == window_samples(1.0, 1, 16000, 128)
    for bad in (True, np.float32("nan"), -1):
        with pytest.raises(ValueError, match="window must be a positive number"):
            window_samples(bad, None, 16000, 128)
