"""Live tagging: incremental features equal the batch extractor, chunked feeding of any chunk sizes equals
`tag_long_audio` with the same window and hop, events are reported once each, bad streams fail clearly."""

import numpy as np
import pytest
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, tag_long_audio
from ast_hf.sound_events import EventPostprocessing, detect_events
from ast_hf.streaming import IncrementalFeatures, StreamingTagger
from helpers import RATE, noise, tiny_config, tone

ATOL = 1e-5


@pytest.fixture(scope="module")
def model_fe():
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(problem_type="multi_label_classification")).eval()
    return model, ASTFeatureExtractor(max_length=128)


def random_chunks(wave, rng, largest):
    pos = 0
    while pos < len(wave):
        size = int(rng.integers(1, largest + 1))
        yield wave[pos:pos + size]
        pos += size


def feed_all(tagger, wave, rng, largest):
    windows = []
    for chunk in random_chunks(wave, rng, largest):
        windows += tagger.feed(chunk)
    return windows + tagger.flush()


def test_incremental_features_equal_the_batch_extractor(model_fe):
    _, fe = model_fe
    rng = np.random.default_rng(0)
    wave = np.concatenate([tone(1.0, 500.0), noise(1.3, "pink", seed=3)]) + 0.01  # a DC offset too
    expected = fe(wave, sampling_rate=RATE, return_tensors="np", padding="longest")["input_values"][0]
    for largest in (1, 37, 400, 5000):
        incremental = IncrementalFeatures(fe)
        frames = [incremental.push(chunk) for chunk in random_chunks(wave, rng, largest)]
        got = np.concatenate(frames)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= ATOL


@pytest.mark.parametrize("window, hop, seconds", [(1.28, 0.5, 5.37), (2.0, 0.3, 4.0), (None, None, 3.0)])
def test_chunks_of_any_sizes_give_the_scores_of_tag_long_audio(model_fe, window, hop, seconds):
    model, fe = model_fe
    wave = np.concatenate([noise(seconds / 2, "white", seed=1), tone(seconds / 2, 880.0)])
    tags = tag_long_audio(model, fe, wave, sampling_rate=RATE, window=window, hop=hop, progress=False)
    rng = np.random.default_rng(1)
    for largest in (3000, 20000, 100000):
        windows = feed_all(StreamingTagger(model, fe, window=window, hop=hop, batch_size=3), wave, rng, largest)
        assert [w.index for w in windows] == list(range(len(tags.starts)))
        assert np.allclose([w.start for w in windows], tags.starts) and np.allclose([w.end for w in windows], tags.ends)
        assert np.abs(np.stack([w.scores for w in windows]) - tags.scores).max() <= ATOL
        assert all(w.latency >= 0 for w in windows)


def test_one_sample_chunks_and_a_stream_shorter_than_the_window(model_fe):
    model, fe = model_fe
    wave = noise(0.9, "brown", seed=2)  # shorter than the default 1.28 s window: scored whole at flush
    tags = tag_long_audio(model, fe, wave, sampling_rate=RATE, progress=False)
    tagger = StreamingTagger(model, fe)
    assert all(tagger.feed(wave[i:i + 1]) == [] for i in range(len(wave)))
    windows = tagger.flush()
    assert len(windows) == 1 and windows[0].end == pytest.approx(0.9)
    assert np.abs(windows[0].scores - tags.scores[0]).max() <= ATOL
    # flush() starts a new stream: the same tagger gives the same scores again (1-sample chunks, explicit window).
    wave = noise(1.6, "pink", seed=4)
    tags = tag_long_audio(model, fe, wave, sampling_rate=RATE, window=0.5, hop=0.2, progress=False)
    tagger = StreamingTagger(model, fe, window=0.5, hop=0.2)
    windows = [w for i in range(len(wave)) for w in tagger.feed(wave[i:i + 1])] + tagger.flush()
    assert np.abs(np.stack([w.scores for w in windows]) - tags.scores).max() <= ATOL


def test_events_are_reported_once_and_equal_offline_detection(model_fe):
    model, fe = model_fe
    wave = np.concatenate([noise(2.0, "white", seed=5), tone(2.0, 440.0), noise(2.0, "white", seed=6)])
    labels = [f"LABEL_{i}" for i in range(5)]
    params = EventPostprocessing(on_threshold=0.5, off_threshold=0.45, median_steps=3, min_duration=0.3,
                                 merge_gap=0.2)
    tagger = StreamingTagger(model, fe, window=0.72, hop=0.16, events=params)
    rng = np.random.default_rng(3)
    events, windows = [], []
    for chunk in random_chunks(wave, rng, 4000):
        windows += tagger.feed(chunk)
        events += tagger.pop_events()
    windows += tagger.flush()
    events += tagger.pop_events()
    assert tagger.pop_events() == []
    assert len(set(events)) == len(events) and events  # random weights: some labels score near 0.5
    # The same detector offline, over the same window scores (steps: the hop around each window's centre).
    centres = np.array([(w.start + w.end) / 2 for w in windows])
    assert np.allclose(np.diff(centres), 0.16)  # 6 s is a whole number of hops: no end-aligned window
    offline = detect_events(np.stack([w.scores for w in windows]), labels, 0.16, params, start=centres[0] - 0.08)
    def key(event):
        return event.onset, event.label

    assert sorted(events, key=key) == sorted(offline, key=key)


@pytest.mark.parametrize("seconds", [0.3, 0.5, 0.9])
def test_events_of_a_stream_shorter_than_the_window_end_within_it(model_fe, seconds):
    """The stream is scored whole at flush (one window of `seconds`, not the default 1.28 s): its event step is
    at most that window, so no offset lies after the end of the stream."""
    model, fe = model_fe
    tagger = StreamingTagger(model, fe, events=EventPostprocessing(on_threshold=0.0))  # every label: one event
    assert tagger.feed(noise(seconds, "white", seed=7)) == []
    windows = tagger.flush()
    events = tagger.pop_events()
    assert len(windows) == 1 and windows[0].end == pytest.approx(seconds)
    assert sorted(e.label for e in events) == tagger.labels
    assert all(0 <= e.onset < e.offset <= seconds for e in events), (seconds, events)
    if seconds < tagger.hop / RATE:  # shorter than the default hop: the step is the whole stream
        assert all(e.onset == 0 and e.offset == pytest.approx(seconds) for e in events)


def test_bad_streams_fail_clearly(model_fe):
    model, fe = model_fe
    tagger = StreamingTagger(model, fe, window=1.0, hop=0.5)
    with pytest.raises(ValueError, match="NaN"):
        tagger.feed(np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="mono"):
        tagger.feed(np.zeros((100, 2), np.float32))
    with pytest.raises(ValueError, match="nothing was fed"):
        StreamingTagger(model, fe).flush()
    short = StreamingTagger(model, fe, window=1.0, hop=0.5)
    short.feed(np.zeros(RATE // 2, np.float32))
    with pytest.raises(ValueError, match="longer than the stream"):
        short.flush()
    with pytest.raises(ValueError, match="10 ms"):
        StreamingTagger(model, fe, window=1.0, hop=0.255)
    with pytest.raises(ValueError, match=r"the default, half the 0\.75 s window, is 0\.375 s: give a hop"):
        StreamingTagger(model, fe, window=0.75)  # the user gave no hop: the message says where 0.375 s came from
    with pytest.raises(ValueError, match="unknown label"):
        StreamingTagger(model, fe, events=EventPostprocessing(on_threshold={"dog": 0.5}))
    silence = StreamingTagger(model, fe, window=0.5, hop=0.5)  # digital silence is valid input: scored
    assert len(silence.feed(np.zeros(RATE, np.float32)) + silence.flush()) == 2


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused_as_offline(model_fe, batch_size):
    """tag_long_audio refuses it; live, a negative batch used to step over every regular window (none scored)."""
    model, fe = model_fe
    with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {batch_size}"):
        tag_long_audio(model, fe, np.zeros(RATE, np.float32), sampling_rate=RATE, batch_size=batch_size,
                       progress=False)
    with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {batch_size}"):
        StreamingTagger(model, fe, window=1.0, hop=0.5, batch_size=batch_size)
