"""The training data path: decoding, resampling, up-front checks, labels, the collator and normalisation stats.

Bad input must fail with an error naming the file or label: corrupt files, low sampling rates, unknown labels,
empty splits; corrupt files are skipped only when asked, and then each one is named in a warning.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTFeatureExtractor
from ast_hf.training import (
    ASTAudioCollator,
    CorruptAudioError,
    compute_normalization_stats,
    decode_audio,
    load_audio_dataset,
)
from helpers import tiny_config

RATE = 16000


def _tone(freq: float, seconds: float = 0.5, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def _folder(root, clips_per_class=3, splits=("train", "test")):
    for split in splits:
        for label, freq in (("high", 2000.0), ("low", 300.0)):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(clips_per_class):
                sf.write(root / split / label / f"{i}.wav", _tone(freq * (1 + 0.05 * i)), RATE)
    return root


def test_decode_resamples_and_mixes_down(tmp_path):
    path = tmp_path / "stereo44k.flac"
    sf.write(path, _tone(1000.0, 1.0, rate=44100, channels=2), 44100)
    wave = decode_audio({"path": str(path), "bytes": None})
    assert wave.dtype == np.float32 and abs(len(wave) - RATE) <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.argmax(spectrum) * RATE / len(wave) == pytest.approx(1000.0, abs=2.0)  # the tone survives
    same = decode_audio({"path": None, "bytes": path.read_bytes()})
    np.testing.assert_allclose(same, wave)
    arr = decode_audio({"array": _tone(1000.0, 1.0, rate=44100), "sampling_rate": 44100})
    np.testing.assert_allclose(arr, wave, atol=1e-4)  # the FLAC file holds 16-bit samples


def test_decoded_torchcodec_column_is_accepted(tmp_path):
    import datasets

    path = tmp_path / "a.wav"
    sf.write(path, _tone(500.0), RATE)
    ds = datasets.Dataset.from_dict({"audio": [str(path)]}).cast_column("audio", datasets.Audio())
    value = ds[0]["audio"]  # a torchcodec AudioDecoder in datasets 5
    np.testing.assert_allclose(decode_audio(value), sf.read(path, dtype="float32")[0], atol=1e-4)


def test_low_sampling_rate_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, _tone(300.0, rate=8000), 8000)
    with pytest.raises(ValueError, match=r"phone.wav is sampled at 8000 Hz.*allow_upsampling"):
        decode_audio({"path": str(path), "bytes": None})
    assert len(decode_audio({"path": str(path), "bytes": None}, allow_upsampling=True)) == RATE // 2
    _folder(tmp_path / "data")
    sf.write(tmp_path / "data" / "train" / "low" / "phone.wav", _tone(300.0, rate=8000), 8000)
    with pytest.raises(ValueError, match=r"1 clip\(s\) in split 'train' are sampled below 16000 Hz: .*phone.wav"):
        load_audio_dataset(tmp_path / "data")
    assert len(load_audio_dataset(tmp_path / "data", allow_upsampling=True)["train"]) == 7


def test_corrupt_file_is_named_and_skipped_only_when_asked(tmp_path, caplog):
    root = _folder(tmp_path / "data")
    (root / "train" / "high" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage, not audio")
    with pytest.raises(CorruptAudioError, match=r"1 audio file\(s\) in split 'train' cannot be read:\n.*broken.wav"):
        load_audio_dataset(root)
    with caplog.at_level(logging.WARNING):
        data = load_audio_dataset(root, skip_corrupt=True)
    assert "broken.wav" in caplog.text and "skipping 1 unreadable" in caplog.text
    assert len(data["train"]) == 6 and len(data["test"]) == 6


def test_corrupt_file_in_a_batch(tmp_path, caplog):
    good = tmp_path / "good.wav"
    sf.write(good, _tone(440.0), RATE)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    fe = ASTFeatureExtractor(max_length=64)
    batch = [{"audio": {"path": str(good), "bytes": None}, "label": 0},
             {"audio": {"path": str(bad), "bytes": None}, "label": 1}]
    with pytest.raises(CorruptAudioError, match="cannot decode .*bad.wav"):
        ASTAudioCollator(fe, num_labels=2)(batch)
    with caplog.at_level(logging.WARNING):
        out = ASTAudioCollator(fe, num_labels=2, skip_corrupt=True)(batch)
    assert out["input_values"].shape == (1, 64, 128) and out["labels"].tolist() == [0]
    assert "bad.wav" in caplog.text


def test_unknown_label_is_named(tmp_path):
    path = tmp_path / "dog_bark.wav"
    sf.write(path, _tone(700.0), RATE)
    fe = ASTFeatureExtractor(max_length=64)
    collator = ASTAudioCollator(fe, num_labels=2, label2id={"cat": 0, "bird": 1})
    with pytest.raises(ValueError,
                       match=r"label 'dog' of .*dog_bark.wav is not in the label map \(2 labels: cat, bird"):
        collator([{"audio": {"path": str(path), "bytes": None}, "label": "dog"}])
    with pytest.raises(ValueError, match=r"label index 7 of .*dog_bark.wav is outside \[0, 2\)"):
        collator([{"audio": {"path": str(path), "bytes": None}, "label": 7}])
    multi = ASTAudioCollator(fe, num_labels=2, label2id={"cat": 0, "bird": 1}, multi_label=True)
    out = multi([{"audio": {"path": str(path), "bytes": None}, "label": "cat, bird"}])
    assert out["labels"].tolist() == [[1.0, 1.0]]


def test_multi_hot_label_rows_are_multi_hot_targets(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, _tone(700.0), RATE)
    audio = {"path": str(path), "bytes": None}
    collator = ASTAudioCollator(ASTFeatureExtractor(max_length=64), num_labels=4, multi_label=True)
    for row in ([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0], np.array([0, 0, 1, 1]), [False, False, True, True]):
        assert collator([{"audio": audio, "label": row}])["labels"].tolist() == [[0.0, 0.0, 1.0, 1.0]], row
    assert collator([{"audio": audio, "label": [2, 3]}])["labels"].tolist() == [[0.0, 0.0, 1.0, 1.0]]  # indices
    for row, message in (([0.0, 0.5, 1.0, 0.0], r"clip.wav has the labels \[0.0, 0.5, 1.0, 0.0\], read as a multi-hot"),
                         ([1.0, 3.0], r"clip.wav has the labels \[1.0, 3.0\], read as a multi-hot row"),
                         ([3, 1, 3], r"clip.wav lists a class index more than once in \[3, 1, 3\]")):
        with pytest.raises(ValueError, match=message):
            collator([{"audio": audio, "label": row}])
    two = ASTAudioCollator(ASTFeatureExtractor(max_length=64), num_labels=2, multi_label=True)
    with pytest.raises(ValueError, match=r"clip.wav has the labels \[0, 1\], which read both as class indices and"):
        two([{"audio": audio, "label": [0, 1]}])  # classes 0 and 1, or class 1 only
    assert two([{"audio": audio, "label": [0.0, 1.0]}])["labels"].tolist() == [[0.0, 1.0]]
    assert two([{"audio": audio, "label": [1, 1]}])["labels"].tolist() == [[1.0, 1.0]]  # only multi-hot


def test_a_label_name_with_a_comma_is_one_label(tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, _tone(700.0), RATE)
    audio = {"path": str(path), "bytes": None}
    label2id = {"Narration, monologue": 0, "Speech": 1, "Music": 2}  # AudioSet names hold commas
    collator = ASTAudioCollator(ASTFeatureExtractor(max_length=64), num_labels=3, label2id=label2id,
                                multi_label=True)
    assert collator([{"audio": audio, "label": "Narration, monologue"}])["labels"].tolist() == [[1.0, 0.0, 0.0]]
    assert collator([{"audio": audio, "label": "Speech, Music"}])["labels"].tolist() == [[0.0, 1.0, 1.0]]
    assert collator([{"audio": audio, "label": ["Narration, monologue", "Music"]}])["labels"].tolist() == [
        [1.0, 0.0, 1.0]]
    events = ASTAudioCollator(ASTFeatureExtractor(max_length=128), num_labels=3, label2id=label2id,
                              multi_label=True, events_column="events",
                              model_config=tiny_config(max_length=128, num_labels=3, frame_head=True))
    batch = events([{"audio": audio, "events": [{"onset": 0.1, "offset": 0.4, "event_label": "Narration, monologue"}]}])
    assert batch["labels"].tolist() == [[1.0, 0.0, 0.0]] and batch["frame_targets"][0, :, 0].sum() > 0


def test_a_data_folder_under_home_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _folder(tmp_path / "data")
    data = load_audio_dataset("~/data", split="train")
    assert len(data) == 6 and sorted(set(data["label"])) == [0, 1]
    with pytest.raises(FileNotFoundError, match="no such data folder: ~/missing"):
        load_audio_dataset("~/missing")


def test_empty_split_is_named(tmp_path):
    import datasets

    from ast_hf.training import ASTTrainer, check_not_empty

    with pytest.raises(ValueError, match="split 'test' is empty"):
        check_not_empty(datasets.Dataset.from_dict({"audio": [], "label": []}), "test")
    root = tmp_path / "data"
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        (root / "train" / label / "x.wav").write_bytes(b"junk")
    with pytest.raises(ValueError, match="split 'train' is empty"):
        load_audio_dataset(root, skip_corrupt=True)  # every clip was unreadable
    with pytest.raises(ValueError, match="split 'train' is empty"):
        ASTTrainer(model=None, data_collator=ASTAudioCollator(ASTFeatureExtractor(), num_labels=2),
                   train_dataset=datasets.Dataset.from_dict({"audio": [], "label": []}))
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        load_audio_dataset(tmp_path / "missing")


def test_collator_eval_features_equal_the_feature_extractor(tmp_path):
    data = load_audio_dataset(_folder(tmp_path / "data"))
    fe = ASTFeatureExtractor(max_length=64)
    collator = ASTAudioCollator(fe, num_labels=2, freqm=24, timem=24, mixup=1.0, noise=True)
    examples = [data["train"][i] for i in range(4)]
    waves = [sf.read(e["audio"]["path"], dtype="float32")[0] for e in examples]
    expected = fe(waves, sampling_rate=RATE, return_tensors="pt")["input_values"]
    out = collator.eval()(examples)
    torch.testing.assert_close(out["input_values"], expected, rtol=0, atol=0)
    assert out["labels"].shape == (4, 2)  # mixup on: one-hot targets in evaluation too
    torch.testing.assert_close(out["labels"].argmax(1), torch.tensor([e["label"] for e in examples]))


def test_collator_training_mixes_waveforms_then_masks(tmp_path):
    from ast_hf.training.augment import sample_mixup

    data = load_audio_dataset(_folder(tmp_path / "data"))
    fe = ASTFeatureExtractor(max_length=64)
    examples = [data["train"][i] for i in (0, 1, 3, 4)]
    waves = [torch.from_numpy(sf.read(e["audio"]["path"], dtype="float32")[0]) for e in examples]
    targets = torch.nn.functional.one_hot(torch.tensor([e["label"] for e in examples]), 2).float()
    torch.manual_seed(5)
    partner, lam = sample_mixup(4, 1.0)
    mixed = [lam[i] * waves[i] + (1 - lam[i]) * waves[partner[i]] for i in range(4)]  # equal lengths here
    expected = fe([m.numpy() for m in mixed], sampling_rate=RATE, return_tensors="pt")["input_values"]
    torch.manual_seed(5)
    out = ASTAudioCollator(fe, num_labels=2, mixup=1.0).train()(examples)
    torch.testing.assert_close(out["input_values"], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["labels"], lam[:, None] * targets + (1 - lam[:, None]) * targets[partner])
    # SpecAugment fills with the normalised value of a zero fbank, as the authors' masking before normalising.
    fill = (0 - fe.mean) / (2 * fe.std)
    masked = ASTAudioCollator(fe, num_labels=2, freqm=30, timem=30).train()(examples)["input_values"]
    assert ((masked - fill).abs() < 1e-6).float().mean() > 0.05


def test_feature_cache_reuses_features_without_decoding_within_its_budget(tmp_path):
    data = load_audio_dataset(_folder(tmp_path / "data"))
    fe = ASTFeatureExtractor(max_length=64)
    examples = [data["train"][i] for i in range(4)]
    plain = ASTAudioCollator(fe, num_labels=2)
    first = ASTAudioCollator(fe, num_labels=2, cache_mb=1.0)(examples)["input_values"]
    torch.testing.assert_close(first, plain(examples)["input_values"], rtol=0, atol=0)
    cached = ASTAudioCollator(fe, num_labels=2, cache_mb=1.0)
    cached(examples[:3])
    for example in examples:  # the files change on disk: cached clips are not read again, the others are
        sf.write(example["audio"]["path"], _tone(5000.0), RATE)
    out = cached(examples)["input_values"]
    torch.testing.assert_close(out[:3], first[:3], rtol=0, atol=0)
    torch.testing.assert_close(out[3], plain(examples[3:])["input_values"][0], rtol=0, atol=0)
    assert not torch.equal(out[3], first[3])
    # The budget: room for two clips' features keeps the first two only.
    one_clip_mb = first[0].numel() * 4 / 2**20
    small = ASTAudioCollator(fe, num_labels=2, cache_mb=2.5 * one_clip_mb)
    small(examples)
    assert len(small._cache) == 2 and small._cache_size["bytes"] <= small.cache_mb * 2**20


def test_feature_cache_budget_is_shared_by_the_train_and_eval_copies(tmp_path):
    data = load_audio_dataset(_folder(tmp_path / "data"))
    fe = ASTFeatureExtractor(max_length=64)
    examples = [data["train"][i] for i in range(6)]
    one_clip_mb = 64 * 128 * 4 / 2**20
    base = ASTAudioCollator(fe, num_labels=2, cache_mb=3.5 * one_clip_mb)  # room for three clips in all
    base.train()(examples[:3])
    base.eval()(examples[3:])  # a new copy, as the trainer makes for every evaluation: the budget is spent
    base.eval()(examples[3:])
    assert len(base._cache) == 3
    assert sum(v.numel() * v.element_size() for v in base._cache.values()) <= base.cache_mb * 2**20


def test_feature_cache_keeps_augmentation_fresh_and_the_cache_clean(tmp_path):
    data = load_audio_dataset(_folder(tmp_path / "data"))
    fe = ASTFeatureExtractor(max_length=64)
    examples = [data["train"][i] for i in range(4)]
    clean = ASTAudioCollator(fe, num_labels=2)(examples)["input_values"]
    collator = ASTAudioCollator(fe, num_labels=2, freqm=30, timem=30, noise=True, cache_mb=1.0).train()
    torch.manual_seed(0)
    a = collator(examples)["input_values"]
    b = collator(examples)["input_values"]  # all four from the cache, masked and shifted anew
    assert not torch.equal(a, b)
    assert all(torch.equal(collator._cache[e["audio"]["path"]], clean[i]) for i, e in enumerate(examples))


@pytest.mark.parametrize("settings, message", [(dict(cache_mb=1.0, mixup=0.5), "use one or the other"),
                                               (dict(cache_mb=-1.0), "cache_mb is a size in MB")])
def test_feature_cache_refuses_mixup_and_negative_sizes(settings, message):
    with pytest.raises(ValueError, match=message):
        ASTAudioCollator(ASTFeatureExtractor(), num_labels=2, **settings)


def test_normalization_stats_match_the_authors_fbank(tmp_path):
    import torchaudio

    data = load_audio_dataset(_folder(tmp_path / "data", clips_per_class=4))["train"]
    fe = ASTFeatureExtractor(max_length=80)
    mean, std = compute_normalization_stats(data, fe, batch_size=3)
    # The authors' loader: torchaudio's Kaldi fbank of each clip, zero-padded to the target length, stacked.
    banks = []
    for path in data["audio"]:
        wave, rate = sf.read(path["path"], dtype="float32")
        fbank = torchaudio.compliance.kaldi.fbank(torch.from_numpy(wave)[None], htk_compat=True, sample_frequency=rate,
                                                  use_energy=False, window_type="hanning", num_mel_bins=128,
                                                  dither=0.0, frame_shift=10)
        banks.append(torch.nn.functional.pad(fbank, (0, 0, 0, 80 - fbank.shape[0])))
    stacked = torch.stack(banks).double()
    assert mean == pytest.approx(stacked.mean().item(), abs=1e-4)
    assert std == pytest.approx(stacked.std().item(), rel=1e-4)
    assert (fe.mean, fe.std) == (mean, std)  # written into the feature extractor's config
    normalised = fe([sf.read(p["path"], dtype="float32")[0] for p in data["audio"]], sampling_rate=RATE,
                    max_length=80, return_tensors="pt")["input_values"]
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert normalised.std().item() == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("settings, problem", [({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
                                               ({"num_clips": 0}, "num_clips")])
def test_normalization_stats_refuse_empty_batches_by_name(settings, problem):
    """batch_size 0 crashed in range() for a Dataset and silently made one batch of a list of clips."""
    clips = [np.zeros(16000, np.float32) + 0.01 * i for i in range(3)]
    with pytest.raises(ValueError, match=problem):
        compute_normalization_stats(clips, ASTFeatureExtractor(max_length=80), **settings)


def test_mixup_refuses_class_index_targets():
    # Mixed targets are lam y_i + (1 - lam) y_j; as class indices every mixed clip took its partner's label.
    with pytest.raises(ValueError, match="mixup > 0 mixes each clip's target .* class indices cannot hold"):
        ASTAudioCollator(ASTFeatureExtractor(max_length=64), num_labels=3, mixup=0.5, one_hot=False)
    ASTAudioCollator(ASTFeatureExtractor(max_length=64), num_labels=3, mixup=0.5)  # soft targets: fine


def test_a_clip_without_a_label_among_labelled_clips_is_named(tmp_path):
    data = load_audio_dataset(_folder(tmp_path / "data"))
    examples = [dict(data["train"][i]) for i in range(4)]
    examples[2]["label"] = None
    collator = ASTAudioCollator(ASTFeatureExtractor(max_length=64), num_labels=2)
    name = examples[2]["audio"]["path"]
    for mode in (collator.train(), collator.eval()):  # the batch's labels were dropped, without a word
        with pytest.raises(ValueError, match=re.escape(f"{name} has no 'label' but other clips of its batch have")):
            mode(examples)
    unlabelled = [{"audio": e["audio"]} for e in examples]  # prediction: no clip has a label
    assert set(collator(unlabelled)) == {"input_values"}
