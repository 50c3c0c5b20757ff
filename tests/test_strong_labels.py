"""Strong labels: frame targets at the patch-column rate, event data sets, and the collator's frame targets under
mixup (the TSV reader itself: test_event_tsv.py)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTFeatureExtractor
from ast_hf.event_tsv import EventTableError, SoundEvent
from ast_hf.training import ASTAudioCollator
from ast_hf.training.strong_labels import event_columns, frame_targets, load_event_dataset
from helpers import tiny_config

HEADER = "filename\tonset\toffset\tevent_label\n"
LABELS = ["dog", "speech"]


def test_frame_targets_mark_the_columns_whose_centres_an_event_covers():
    # 100 ms columns: column k stands for [0.1 k, 0.1 (k + 1)), centre 0.1 k + 0.05
    assert list(event_columns(0.3, 0.8, 20, 0.1)) == [3, 4, 5, 6, 7]
    assert list(event_columns(0.25, 0.65, 20, 0.1)) == [2, 3, 4, 5]  # centres 0.25 (on the onset) .. 0.55
    assert list(event_columns(1.0, 1.04, 20, 0.1)) == [10]  # covers no centre: the column of its midpoint
    assert list(event_columns(1.9, 2.5, 20, 0.1)) == [19]  # cut at the last column
    assert list(event_columns(3.0, 4.0, 20, 0.1)) == []  # after the end
    events = [{"onset": 0.3, "offset": 0.8, "event_label": "speech"}, SoundEvent(0.5, 0.6, "dog")]
    targets = frame_targets(events, {"dog": 0, "speech": 1}, 12, 0.1)
    expected = torch.zeros(12, 2)
    expected[3:8, 1] = 1
    expected[5, 0] = 1
    assert torch.equal(targets, expected)
    with pytest.raises(ValueError, match="event label 'cat' is not in the label map"):
        frame_targets([SoundEvent(0, 1, "cat")], {"dog": 0}, 12, 0.1)


@pytest.fixture
def scenes(tmp_path):
    """Two 1.28 s recordings and their events."""
    rng = np.random.default_rng(0)
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, (0.1 * rng.standard_normal(20480)).astype(np.float32), 16000)
    (tmp_path / "gt.tsv").write_text(HEADER + "a.wav\t0.3\t0.8\tspeech\na.wav\t0.5\t0.6\tdog\n")
    return tmp_path


def test_event_dataset_lists_every_audio_file_with_its_events(scenes):
    data = load_event_dataset(scenes, scenes / "gt.tsv", LABELS)
    assert [a["path"].rsplit("/", 1)[-1] for a in data["audio"]] == ["a.wav", "b.wav"]
    assert data["events"][0] == [{"onset": 0.3, "offset": 0.8, "event_label": "speech"},
                                 {"onset": 0.5, "offset": 0.6, "event_label": "dog"}]  # by onset
    assert data["events"][1] == []
    (scenes / "gt.tsv").write_text(HEADER + "missing.wav\t0.3\t0.8\tspeech\n")
    with pytest.raises(EventTableError, match=r"names 1 file\(s\) not under .*: missing.wav"):
        load_event_dataset(scenes, scenes / "gt.tsv", LABELS)


def _collator(**overrides):
    fields = dict(num_labels=2, label2id={"dog": 0, "speech": 1}, events_column="events",
                  model_config=tiny_config(max_length=128, num_labels=2, frame_head=True))
    fields.update(overrides)
    return ASTAudioCollator(ASTFeatureExtractor(max_length=128), **fields)


def test_collator_gives_frame_targets_and_clip_labels(scenes):
    data = load_event_dataset(scenes, scenes / "gt.tsv", LABELS)
    batch = _collator()([data[0], data[1]])
    assert batch["input_values"].shape == (2, 128, 128)
    assert batch["frame_targets"].shape == (2, 12, 2)  # (128 - 16) // 10 + 1 columns of 100 ms
    assert batch["frame_targets"][0, :, 1].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]
    assert batch["frame_targets"][0, :, 0].nonzero().flatten().tolist() == [5]
    assert batch["frame_targets"][1].sum() == 0
    assert torch.equal(batch["labels"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    alone = _collator(clip_labels=False)([data[0], data[1]])  # the frame head trained alone
    assert "labels" not in alone and torch.equal(alone["frame_targets"], batch["frame_targets"])


def test_mixup_mixes_frame_targets_with_the_clip_targets_lambda(scenes, monkeypatch):
    import ast_hf.training.collator as collator_module

    data = load_event_dataset(scenes, scenes / "gt.tsv", LABELS)
    plain = _collator()([data[0], data[1]])
    plan = (torch.tensor([1, 0]), torch.tensor([0.7, 0.4]))
    monkeypatch.setattr(collator_module, "sample_mixup", lambda *args: plan)
    mixed = _collator(mixup=1.0).train()([data[0], data[1]])
    y = plain["frame_targets"]
    torch.testing.assert_close(mixed["frame_targets"], torch.stack([0.7 * y[0] + 0.3 * y[1], 0.4 * y[1] + 0.6 * y[0]]))
    c = plain["labels"]
    torch.testing.assert_close(mixed["labels"], torch.stack([0.7 * c[0] + 0.3 * c[1], 0.4 * c[1] + 0.6 * c[0]]))


def test_mixup_keeps_the_partners_audio_where_its_frame_targets_are(tmp_path, monkeypatch):
    import ast_hf.training.collator as collator_module

    rng = np.random.default_rng(1)
    short, long = ((0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 48000))
    sf.write(tmp_path / "short.wav", short, 16000, subtype="FLOAT")  # 1 s, no events
    sf.write(tmp_path / "long.wav", long, 16000, subtype="FLOAT")  # 3 s, a dog at 2-3 s
    examples = [{"audio": {"path": str(tmp_path / "short.wav"), "bytes": None}, "events": []},
                {"audio": {"path": str(tmp_path / "long.wav"), "bytes": None},
                 "events": [{"onset": 2.0, "offset": 3.0, "event_label": "dog"}]}]
    fe = ASTFeatureExtractor(max_length=320)
    collator = ASTAudioCollator(fe, num_labels=2, label2id={"dog": 0, "speech": 1}, events_column="events",
                                model_config=tiny_config(max_length=320, num_labels=2, frame_head=True), mixup=1.0)
    plain = collator.eval()(examples)
    monkeypatch.setattr(collator_module, "sample_mixup", lambda *args: (torch.tensor([1, 1]), torch.tensor([0.6, 1.0])))
    mixed = collator.train()(examples)
    y = plain["frame_targets"]
    torch.testing.assert_close(mixed["frame_targets"][0], 0.6 * y[0] + 0.4 * y[1])
    assert mixed["frame_targets"][0, 25, 0] == pytest.approx(0.4)  # 2.5 s: the dog, and its audio is there
    mix = 0.6 * np.pad(short, (0, 32000)) + 0.4 * long  # the whole partner, the clip zero-padded
    expected = fe([mix, long], sampling_rate=16000, max_length=320, return_tensors="pt")["input_values"]
    torch.testing.assert_close(mixed["input_values"], expected, rtol=1e-5, atol=1e-4)


def test_balanced_sampling_draws_by_the_classes_of_the_events(scenes, tmp_path):
    from ast_hf import ASTForAudioClassification
    from ast_hf.training import ASTTrainer, ASTTrainingArguments

    (scenes / "gt.tsv").write_text(HEADER + "a.wav\t0.3\t0.8\tspeech\na.wav\t0.5\t0.6\tdog\nb.wav\t0.1\t0.5\tspeech\n")
    data = load_event_dataset(scenes, scenes / "gt.tsv", LABELS)
    args = ASTTrainingArguments(str(tmp_path / "run"), use_cpu=True, max_steps=1, per_device_train_batch_size=2,
                                balanced_sampling=True, disable_tqdm=True, report_to="none")
    model = ASTForAudioClassification(tiny_config(max_length=128, num_labels=2, frame_head=True))
    trainer = ASTTrainer(model=model, args=args, data_collator=_collator(model_config=None), train_dataset=data)
    sampler = trainer._get_train_sampler()
    # a.wav: dog (once) + speech (twice); b.wav: speech
    torch.testing.assert_close(sampler.weights, torch.tensor([1000 / 1.01 + 1000 / 2.01, 1000 / 2.01],
                                                             dtype=torch.double))
    assert len(trainer.get_train_dataloader()) == 1


def test_collator_refuses_time_shift_and_needs_the_model_grid(scenes):
    with pytest.raises(ValueError, match="moves its sounds away from their frame targets"):
        _collator(noise=True)
    with pytest.raises(ValueError, match="events_column needs label2id"):
        _collator(label2id=None)
    data = load_event_dataset(scenes, scenes / "gt.tsv", LABELS)
    with pytest.raises(ValueError, match="events_column needs model_config"):
        _collator(model_config=None)([data[0]])
    with pytest.raises(ValueError, match=r"event label 'cat' is not in the label map|label 'cat' of .*a.wav"):
        _collator()([{"audio": data[0]["audio"], "events": [{"onset": 0.1, "offset": 0.2, "event_label": "cat"}]}])


def test_trainer_checks_the_model_has_a_frame_head(scenes, tmp_path):
    from ast_hf import ASTForAudioClassification
    from ast_hf.training import ASTTrainer, ASTTrainingArguments

    data = load_event_dataset(scenes, scenes / "gt.tsv", LABELS)
    args = ASTTrainingArguments(str(tmp_path / "run"), use_cpu=True, max_steps=2, per_device_train_batch_size=2,
                                learning_rate=1e-3, disable_tqdm=True, report_to="none")
    with pytest.raises(ValueError, match="the model has no frame head"):
        ASTTrainer(model=ASTForAudioClassification(tiny_config(max_length=128, num_labels=2)), args=args,
                   data_collator=_collator(model_config=None), train_dataset=data)
    model = ASTForAudioClassification(tiny_config(max_length=128, num_labels=2, frame_head=True))
    trainer = ASTTrainer(model=model, args=args, data_collator=_collator(model_config=None), train_dataset=data)
    assert model.config.problem_type == "multi_label_classification"
    trainer.train()
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])
    assert {"eval_loss", "eval_accuracy"} <= set(trainer.evaluate(data))  # clip metrics, loss with frame targets
    alone = ASTTrainer(model=model, args=args, data_collator=_collator(model_config=None, clip_labels=False))
    metrics = alone.evaluate(data)
    assert "eval_loss" in metrics and "eval_accuracy" not in metrics  # frame loss only


@pytest.mark.parametrize("onset, offset", [(0.8, 0.3), (float("nan"), 0.5), (0.2, float("inf")), (None, 0.5)])
def test_frame_targets_refuse_reversed_and_non_finite_event_times(scenes, onset, offset):
    # A swapped onset and offset marked the column of their midpoint; NaN / inf crashed in math.ceil.
    event = {"onset": onset, "offset": offset, "event_label": "dog"}
    with pytest.raises(ValueError, match=r"event 'dog' with onset .* must be finite numbers of seconds with onset "
                                         r"<= offset"):
        frame_targets([event], {"dog": 0}, 12, 0.1)
    data = load_event_dataset(scenes, scenes / "gt.tsv", LABELS)
    with pytest.raises(ValueError, match=r"a\.wav: event 'dog' with onset"):  # the collator names the clip
        _collator()([{"audio": data[0]["audio"], "events": [event]}])
