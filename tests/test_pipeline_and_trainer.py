"""ast-hf inside the transformers ecosystem: Auto classes after register(), pipeline, Trainer."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import transformers
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

import ast_hf
from ast_hf import ASTFeatureExtractor, ASTForAudioClassification
from helpers import tiny_config

SR = 16000


@pytest.fixture
def saved_model(tmp_path):
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(num_labels=3, id2label={0: "a", 1: "b", 2: "c"})).eval()
    fe = ASTFeatureExtractor(max_length=128)
    model.save_pretrained(tmp_path)
    fe.save_pretrained(tmp_path)
    return model, fe, tmp_path


def test_import_changes_nothing_and_register_is_reversible(saved_model):
    _, _, path = saved_model
    assert type(AutoModelForAudioClassification.from_pretrained(path)).__module__.startswith("transformers.")
    ast_hf.register()
    try:
        assert type(AutoModelForAudioClassification.from_pretrained(path)) is ASTForAudioClassification
        assert type(AutoFeatureExtractor.from_pretrained(path)) is ASTFeatureExtractor
        clf = pipeline("audio-classification", model=str(path))
        assert type(clf.model) is ASTForAudioClassification and type(clf.feature_extractor) is ASTFeatureExtractor
    finally:
        ast_hf.unregister()
    assert type(AutoModelForAudioClassification.from_pretrained(path)).__module__.startswith("transformers.")
    assert type(AutoFeatureExtractor.from_pretrained(path)).__module__.startswith("transformers.")


def _expected_scores(model, fe, wave, fn):
    with torch.no_grad():
        logits = model(**fe(wave, sampling_rate=SR, return_tensors="pt")).logits[0]
    return fn(logits)


def test_pipeline_on_arrays_resampled_dicts_and_files(saved_model, tmp_path):
    model, fe, _ = saved_model
    clf = pipeline("audio-classification", model=model, feature_extractor=fe)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    expected = _expected_scores(model, fe, wave, lambda z: z.softmax(-1))
    out = clf(wave, top_k=3)
    assert [o["label"] for o in out] == [model.config.id2label[i] for i in expected.argsort(descending=True).tolist()]
    np.testing.assert_allclose(sorted(o["score"] for o in out), sorted(expected.tolist()), atol=1e-5)
    # a 44.1 kHz clip is resampled by the pipeline to the extractor's 16 kHz
    wave44 = (0.1 * rng.standard_normal(44100)).astype(np.float32)
    resampled = torchaudio.functional.resample(torch.from_numpy(wave44), 44100, SR).numpy()
    expected44 = _expected_scores(model, fe, resampled, lambda z: z.softmax(-1))
    out44 = clf({"raw": wave44, "sampling_rate": 44100}, top_k=3)
    np.testing.assert_allclose(sorted(o["score"] for o in out44), sorted(expected44.tolist()), atol=1e-4)
    # a file path is decoded by ffmpeg
    sf.write(tmp_path / "clip.wav", wave, SR, subtype="FLOAT")
    from_file = clf(str(tmp_path / "clip.wav"), top_k=3)
    np.testing.assert_allclose(sorted(o["score"] for o in from_file), sorted(expected.tolist()), atol=1e-4)


def test_multi_label_models_get_sigmoid_scores(saved_model):
    _, fe, _ = saved_model
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(num_labels=4, problem_type="multi_label_classification")).eval()
    clf = pipeline("audio-classification", model=model, feature_extractor=fe)
    wave = (0.1 * np.random.default_rng(1).standard_normal(SR)).astype(np.float32)
    scores = sorted(o["score"] for o in clf(wave, top_k=4))
    expected = sorted(_expected_scores(model, fe, wave, torch.sigmoid).tolist())
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert abs(sum(scores) - 1.0) > 1e-3  # not a softmax


def test_trainer_fine_tunes_and_the_loss_falls(tmp_path):
    """Two generated sound classes (tones vs noise); a few Trainer steps must lower the training loss."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    t = np.arange(SR // 2) / SR
    waves, labels = [], []
    for i in range(32):
        if i % 2:
            waves.append((0.3 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t)).astype(np.float32))
        else:
            waves.append((0.3 * rng.standard_normal(SR // 2)).astype(np.float32))
        labels.append(i % 2)
    fe = ASTFeatureExtractor(max_length=48)
    feats = fe(waves, sampling_rate=SR, return_tensors="np")["input_values"]
    data = Dataset.from_dict({"input_values": list(feats), "labels": labels}).with_format("torch")
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(max_length=48, num_labels=2))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=6,
                                          learning_rate=1e-3, logging_steps=4, save_strategy="no", report_to=[],
                                          disable_tqdm=True, use_cpu=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) >= 4
    assert losses[-1] < 0.5 * losses[0], losses


def test_pipeline_takes_path_objects_like_str_paths(saved_model, tmp_path):
    model, fe, _ = saved_model
    clf = ast_hf.ASTAudioClassificationPipeline(model=model, feature_extractor=fe)
    path = tmp_path / "clip.wav"
    sf.write(path, (0.1 * np.random.default_rng(2).standard_normal(2 * SR)).astype(np.float32), SR, subtype="FLOAT")
    for options in ({}, {"chunk_length_s": 1.0}):
        assert clf(path, top_k=3, **options) == clf(str(path), top_k=3, **options)


def test_a_url_answering_an_http_error_names_the_status(saved_model, tmp_path):
    import functools
    import http.server
    import threading

    model, fe, _ = saved_model
    clf = ast_hf.ASTAudioClassificationPipeline(model=model, feature_extractor=fe)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/missing.wav"
        with pytest.raises(ValueError, match=r"cannot download .*missing\.wav: HTTP 404"):
            clf(url)
    finally:
        server.shutdown()
        server.server_close()
