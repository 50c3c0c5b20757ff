"""Frame-level scores: a clip alone equals the same clip in a padded batch, long recordings are stitched from
the window where each column is most central, a model trained here finds the known onsets of a hand-built
scene (through the event post-processing and sed_eval), and bad input fails clearly."""

import numpy as np
import pytest
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, ASTModel
from ast_hf.event_tsv import SoundEvent
from ast_hf.frame_level import column_count, column_scores, frame_scores
from ast_hf.inference import featurize
from ast_hf.sed_metrics import event_metrics
from ast_hf.sound_events import EventPostprocessing, detect_events
from helpers import RATE, recording, tiny_config


@pytest.fixture(scope="module")
def model_fe():
    torch.manual_seed(0)
    config = tiny_config(problem_type="multi_label_classification")
    return ASTForAudioClassification(config).eval(), ASTFeatureExtractor(max_length=128)


def test_a_clip_scores_the_same_alone_and_in_a_padded_batch(model_fe):
    model, fe = model_fe
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (3 * RATE, round(1.9 * RATE), RATE)]
    batch = fe(clips, sampling_rate=RATE, return_tensors="pt", padding="longest", return_attention_mask=True)
    together = column_scores(model, batch["input_values"], batch["attention_mask"])
    for clip, scores in zip(clips, together):
        alone = fe(clip, sampling_rate=RATE, return_tensors="pt", padding="longest")["input_values"]
        expected = column_scores(model, alone)[0]
        assert scores.shape == expected.shape == (column_count(model.config, fe.frames_for(len(clip))), 5)
        assert np.abs(scores - expected).max() <= 1e-4
    # Columns past a clip's end are dropped; the scores are sigmoid probabilities of a multi-label model.
    assert [len(s) for s in together] == [(fe.frames_for(len(c)) - 16) // 10 + 1 for c in clips]
    assert all(((s > 0) & (s < 1)).all() for s in together)


def test_long_recordings_take_each_column_from_the_window_where_it_is_most_central(model_fe):
    model, fe = model_fe
    rng = np.random.default_rng(1)
    wave = (rng.standard_normal(round(7.3 * RATE)) * 0.1).astype(np.float32)
    result = frame_scores(model, fe, wave, sampling_rate=RATE, window=2.0, hop=0.7, batch_size=3, progress=False)
    assert result.hop == pytest.approx(0.1) and result.duration == pytest.approx(7.3)
    columns = column_count(model.config, fe.frames_for(len(wave)))
    assert result.scores.shape == (columns, 5)
    # By hand: windows of 2 s every 0.7 s (whole 0.1 s columns), the last one cut at the end of the recording.
    win, step, col = 2 * RATE, round(0.7 * RATE), RATE // 10
    starts = list(range(0, len(wave), step))
    starts = starts[:next(i for i, s in enumerate(starts) if s + win >= len(wave)) + 1]
    windows = []
    for s in starts:
        clip = wave[s:s + win]
        values, _ = featurize(fe, [clip], model.config.max_length)
        windows.append((s // col, column_scores(model, values, frames=[fe.frames_for(len(clip))])[0]))
    for g in range(columns):
        holders = [(abs(g + 0.5 - (first + len(sc) / 2)), k) for k, (first, sc) in enumerate(windows)
                   if first <= g < first + len(sc)]
        _, k = min(holders)
        first, sc = windows[k]
        assert np.abs(result.scores[g] - sc[g - first]).max() <= 1e-5, g
    # A recording shorter than the window is one window, scored whole.
    short = frame_scores(model, fe, wave[:RATE], sampling_rate=RATE, progress=False)
    values, _ = featurize(fe, [wave[:RATE]], model.config.max_length)
    alone = column_scores(model, values, frames=[fe.frames_for(RATE)])[0]
    assert np.abs(short.scores - alone).max() <= 1e-5


def test_a_trained_model_finds_the_onsets_of_a_known_scene(trained):
    model, fe = trained
    wave, (tone_on, noise_on) = recording()  # speech 0-4 s, a tone 4-8 s, pink noise 8-12 s
    result = frame_scores(model, fe, wave, sampling_rate=RATE, progress=False)
    assert result.scores.shape[1] == 3 and np.allclose(result.scores.sum(axis=1), 1, atol=1e-5)  # softmax
    # Per-label thresholds: the clip head spreads a column's tone score over the classes more than noise's.
    params = EventPostprocessing(on_threshold={"speech": 0.6, "tone": 0.4, "noise": 0.6},
                                 off_threshold={"speech": 0.4, "tone": 0.3, "noise": 0.4}, median_steps=5,
                                 min_duration=0.5, merge_gap=0.3)
    events = detect_events(result.scores, result.labels, result.hop, params, filename="scene.wav",
                           duration=result.duration)
    tones = [e for e in events if e.label == "tone"]
    noises = [e for e in events if e.label == "noise" and e.onset >= 6]
    assert len(tones) == 1 and abs(tones[0].onset - tone_on) <= 0.3 and abs(tones[0].offset - noise_on) <= 0.3
    assert noises and abs(noises[0].onset - noise_on) <= 0.3 and noises[0].offset == pytest.approx(12.0, abs=0.2)
    reference = {"scene.wav": [SoundEvent(tone_on, noise_on, "tone"), SoundEvent(noise_on, 12.0, "noise")]}
    # The speech part is left out of the comparison: column by column, the clip head hears speech as noise there.
    estimated = {"scene.wav": [e for e in events if e.label != "speech" and e.onset >= tone_on - 0.5]}
    metrics = event_metrics(reference, estimated, labels=["tone", "noise"])
    assert metrics["event_f1"] == pytest.approx(1.0) and metrics["segment_f1"] >= 0.9


def test_bad_input_is_refused_clearly(model_fe):
    model, fe = model_fe
    with pytest.raises(ValueError, match="shorter than one patch"):
        frame_scores(model, fe, np.zeros(2000, np.float32), sampling_rate=RATE, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        frame_scores(model, fe, np.full(RATE, np.nan, np.float32), sampling_rate=RATE, progress=False)
    with pytest.raises(ValueError, match="zero-length|no audio"):
        frame_scores(model, fe, np.zeros(0, np.float32), sampling_rate=RATE, progress=False)
    with pytest.raises(ValueError, match="gaps"):
        frame_scores(model, fe, np.zeros(5 * RATE, np.float32), sampling_rate=RATE, window=1.0, hop=2.0,
                     progress=False)
    # hop = window, but a 0.6 s window holds only 5 whole 0.1 s columns: the message names the real limit
    with pytest.raises(ValueError, match=r"gaps.*give a hop of at most 0.5 s \(the window's whole columns\)"):
        frame_scores(model, fe, np.zeros(5 * RATE, np.float32), sampling_rate=RATE, window=0.6, hop=0.6,
                     progress=False)
    for size in (0, -1):  # as tag_long_audio: 0 does not mean the default
        with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {size}"):
            frame_scores(model, fe, np.zeros(RATE, np.float32), sampling_rate=RATE, batch_size=size, progress=False)
    with pytest.raises(ValueError, match="classifier head"):
        frame_scores(ASTModel(model.config).eval(), fe, np.zeros(RATE, np.float32), sampling_rate=RATE,
                     progress=False)


def test_events_plot_refuses_labels_it_has_no_row_for(tmp_path):
    """A reference read without a label set may hold labels the model lacks: the error names them (it was
    list.index's "'cat' is not in list"), and no PNG is left behind."""
    from ast_hf.frame_level import FrameScores
    from ast_hf.plotting import plot_events

    rng = np.random.default_rng(0)
    frames = FrameScores(labels=["dog", "speech"], scores=rng.random((30, 2)).astype(np.float32), hop=0.1,
                         duration=3.2, activation="sigmoid", spectrogram=rng.random((8, 320)))
    detected = (SoundEvent(0.5, 1.0, "dog"),)  # any sequence of events, a tuple too
    with pytest.raises(ValueError, match=r"event label\(s\) \['cat'\] are not labels of the frame scores"):
        plot_events(frames, detected, tmp_path / "events.png", reference=[SoundEvent(1.0, 2.0, "cat")])
    assert list(tmp_path.iterdir()) == []
    assert plot_events(frames, detected, tmp_path / "events.png",
                       reference=[SoundEvent(1.0, 2.0, "speech")]).read_bytes()[:4] == b"\x89PNG"
