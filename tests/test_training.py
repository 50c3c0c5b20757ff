"""Training end to end on the CPU: the loss falls, the schedule and switches work, runs resume, and the example
script trains under `torchrun --nproc_per_node 2` (DDP over gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ast_hf import ASTFeatureExtractor, ASTForAudioClassification
from ast_hf.training import ASTAudioCollator, ASTTrainer, ASTTrainingArguments, load_audio_dataset
from helpers import REPO, tiny_config

RATE = 16000
FRAMES = 48  # 0.5 s clips: 48 frames


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """An audiofolder of two easy classes (low vs high tones, random pitch and phase), train and test."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 6)):
        for label, (lo, hi) in (("high", (1500, 3000)), ("low", (150, 400))):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                t = np.arange(RATE // 2) / RATE
                wave = 0.3 * np.sin(2 * np.pi * rng.uniform(lo, hi) * t + rng.uniform(0, 6))
                wave += 0.01 * rng.standard_normal(t.size)
                sf.write(root / split / label / f"{i}.wav", wave.astype(np.float32), RATE)
    return root


def _trainer(data, out_dir, epochs=6, **overrides):
    fe = ASTFeatureExtractor(max_length=FRAMES)
    torch.manual_seed(0)
    model = ASTForAudioClassification(tiny_config(max_length=FRAMES, num_labels=2))
    collator = ASTAudioCollator(fe, num_labels=2, freqm=overrides.pop("freqm", 8), timem=overrides.pop("timem", 8),
                                mixup=overrides.pop("mixup", 0.0))
    fields = dict(output_dir=str(out_dir), num_train_epochs=epochs, per_device_train_batch_size=8,
                  learning_rate=1e-3, logging_strategy="epoch", save_strategy="no", use_cpu=True, seed=0,
                  disable_tqdm=True)
    fields.update(overrides)
    return ASTTrainer(model=model, args=ASTTrainingArguments(**fields), data_collator=collator,
                      train_dataset=data["train"], eval_dataset=data["test"])


def test_loss_falls_and_the_model_learns(tones, tmp_path):
    data = load_audio_dataset(tones)
    trainer = _trainer(data, tmp_path, epochs=10, per_device_train_batch_size=4)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 10 and np.mean(losses[-3:]) < 0.7 * losses[0], losses  # per-epoch losses are noisy
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] >= 0.75 and metrics["eval_mAUC"] >= 0.9, metrics  # chance: 0.5 and 0.5


def test_mixup_trains_with_soft_target_cross_entropy(tones, tmp_path):
    data = load_audio_dataset(tones)
    trainer = _trainer(data, tmp_path, epochs=1, mixup=1.0)
    assert trainer.model.config.problem_type == "single_label_classification"  # CE on soft targets, not BCE
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["labels"].shape == (8, 2) and not torch.all(batch["labels"].max(1).values == 1.0)
    trainer.train()
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_step_decay_and_warmup_inside_trainer(tones, tmp_path):
    data = load_audio_dataset(tones)
    trainer = _trainer(data, tmp_path, epochs=4, lr_decay_start=1, lr_decay_every=1, lr_decay_factor=0.5,
                       warmup_steps=2, logging_strategy="steps", logging_steps=1)
    trainer.train()
    rates = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    # 24 clips / batch 8 = 3 optimizer steps per epoch; Trainer logs the rate step k (0-based) used: warm-up
    # (k + 1) / 2 over the first 2 steps, halved at the end of every epoch from the first on.
    expected = [1e-3 * min(1.0, (k + 1) / 2) * 0.5 ** (k // 3) for k in range(12)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


def test_balanced_sampler_is_used(tones, tmp_path):
    data = load_audio_dataset(tones)
    trainer = _trainer(data, tmp_path, epochs=1, balanced_sampling=True)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler)
    np.testing.assert_allclose(sampler.weights.numpy(), 1000 / 12.01)  # 12 clips per class


def test_gradient_checkpointing_and_bf16_switches(tones, tmp_path):
    data = load_audio_dataset(tones)
    trainer = _trainer(data, tmp_path, epochs=1, max_steps=2, activation_checkpointing=True, bf16=True)
    calls = []
    mlp = trainer.model.audio_spectrogram_transformer.encoder.layer[0].intermediate  # a module inside the block
    mlp.register_forward_hook(lambda module, inputs, output: calls.append(output.dtype))
    trainer.train()
    assert trainer.model.is_activation_checkpointing
    assert len(calls) == 4  # 2 steps x (forward + recomputation in backward): checkpointing is really on
    assert torch.bfloat16 in calls  # autocast ran the block in bf16
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


@pytest.mark.parametrize("forced,warned", [("fp32", True), ("bf16", False)])
def test_bf16_training_warns_where_this_cpus_bf16_gemm_loses(tones, tmp_path, monkeypatch, caplog, forced, warned):
    """Where oneDNN's bf16 GEMM loses to float32 (the measured `bf16_policy`, forced here) bf16 autocast training
    is slower than float32 (0.93x against 1.22x on the demo, AVX-512 bf16 without AMX): `bf16=True` says so."""
    import logging

    from ast_hf import onednn

    if not onednn.BF16_UNITS:
        pytest.skip("this CPU has no bf16 units: bf16 training is refused by the demo and emulated by torch")
    monkeypatch.setenv("AST_HF_BF16_MATMUL", forced)
    onednn.bf16_policy.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="ast_hf.training.trainer"):
            _trainer(load_audio_dataset(tones), tmp_path, bf16=True)
    finally:
        onednn.bf16_policy.cache_clear()
    assert ("bf16 autocast training will be slower than float32" in caplog.text) == warned


def test_interrupted_training_resumes_from_its_last_checkpoint(tones, tmp_path):
    import shutil

    data = load_audio_dataset(tones)
    full = _trainer(data, tmp_path / "full", epochs=3, save_strategy="epoch")
    full.train()
    cut = _trainer(data, tmp_path / "cut", epochs=3, save_strategy="epoch")
    cut.train()
    shutil.rmtree(tmp_path / "cut" / "checkpoint-9")  # as if killed during the third epoch
    resumed = _trainer(data, tmp_path / "cut", epochs=3, save_strategy="epoch")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 9
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_audioset_initialisation_fresh_head_adapted_positions(tmp_path):
    from ast_hf import adapt_position_embeddings

    torch.manual_seed(0)
    audioset = ASTForAudioClassification(tiny_config(num_labels=20, max_length=128,
                                                     problem_type="multi_label_classification"))
    audioset.save_pretrained(tmp_path / "audioset")
    model = ASTForAudioClassification.from_pretrained(tmp_path / "audioset", num_labels=3, max_length=64)
    assert model.classifier.dense.weight.shape == (3, 64)
    expected = adapt_position_embeddings(audioset.audio_spectrogram_transformer.embeddings.position_embeddings.data,
                                         audioset.config.patch_grid(), audioset.config.patch_grid(64))
    torch.testing.assert_close(model.audio_spectrogram_transformer.embeddings.position_embeddings.data, expected)
    torch.testing.assert_close(model.audio_spectrogram_transformer.encoder.layer[0].intermediate.dense.weight,
                               audioset.audio_spectrogram_transformer.encoder.layer[0].intermediate.dense.weight)
    assert ASTTrainingArguments(output_dir=str(tmp_path)).learning_rate == 1e-5  # the low default


def test_checkpoints_hold_the_feature_extractor_at_the_collators_length(tones, tmp_path):
    """A collator that pads to its own max_length: the saved preprocessor_config.json makes the features the model
    was trained on (it held the extractor's 1024 frames, so the pipeline fed the 48-frame model 10.24 s clips)."""
    data = load_audio_dataset(tones)
    fe = ASTFeatureExtractor()  # max_length 1024
    collator = ASTAudioCollator(fe, num_labels=2, max_length=FRAMES)
    args = ASTTrainingArguments(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=4,
                                save_strategy="steps", save_steps=1, use_cpu=True, disable_tqdm=True, report_to="none")
    trainer = ASTTrainer(model=ASTForAudioClassification(tiny_config(max_length=FRAMES, num_labels=2)), args=args,
                         data_collator=collator, train_dataset=data["train"])
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))
    fe.mean, fe.std = -3.0, 2.0  # statistics written into the extractor after the trainer was built are saved too
    trainer.save_model(str(tmp_path / "later"))
    examples = [data["test"][i] for i in range(3)]
    waves = [sf.read(e["audio"]["path"], dtype="float32")[0] for e in examples]
    for folder, collated in ((tmp_path / "run" / "checkpoint-1", None), (tmp_path / "model", None),
                             (tmp_path / "later", collator.eval()(examples)["input_values"])):
        saved = ASTFeatureExtractor.from_pretrained(folder)
        assert saved.max_length == FRAMES and fe.max_length == 1024  # the user's extractor is left as it is
        if collated is not None:
            assert (saved.mean, saved.std) == (-3.0, 2.0)
            torch.testing.assert_close(saved(waves, sampling_rate=RATE, return_tensors="pt")["input_values"],
                                       collated, rtol=0, atol=0)


def test_a_multi_label_collator_is_refused_with_a_single_label_model(tones, tmp_path):
    """Cross-entropy would read each multi-hot row as one soft class distribution and train without a word."""
    data = load_audio_dataset(tones)
    model = ASTForAudioClassification(tiny_config(max_length=FRAMES, num_labels=2,
                                                  problem_type="single_label_classification"))
    collator = ASTAudioCollator(ASTFeatureExtractor(max_length=FRAMES), num_labels=2, multi_label=True)
    args = ASTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="collator gives multi-label targets .* problem_type is "
                                         "'single_label_classification'"):
        ASTTrainer(model=model, args=args, data_collator=collator, train_dataset=data["train"])
    model.config.problem_type = "multi_label_classification"
    ASTTrainer(model=model, args=args, data_collator=collator, train_dataset=data["train"])


def test_a_data_set_without_the_collators_columns_is_refused_by_name(tones, tmp_path):
    """A label column under another name read as 'no labels': evaluation reported no metrics without a word and
    training failed inside transformers ('did not return a loss'); a missing events column gave no events."""
    data = load_audio_dataset(tones)
    renamed = data["train"].rename_column("label", "genre")
    model = ASTForAudioClassification(tiny_config(max_length=FRAMES, num_labels=2))
    args = ASTTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    collator = ASTAudioCollator(ASTFeatureExtractor(max_length=FRAMES), num_labels=2)
    with pytest.raises(ValueError, match=r"split 'train' has no 'label' column, .* \(columns: audio, genre\); "
                                         r"pass label_column="):
        ASTTrainer(model=model, args=args, data_collator=collator, train_dataset=renamed)
    with pytest.raises(ValueError, match=r"split 'test' has no 'label' column"):
        ASTTrainer(model=model, args=args, data_collator=collator, eval_dataset={"test": renamed})
    with pytest.raises(ValueError, match=r"split 'train' has no 'sound' column, .* audio .* pass audio_column="):
        ASTTrainer(model=model, args=args, data_collator=ASTAudioCollator(
            ASTFeatureExtractor(max_length=FRAMES), num_labels=2, audio_column="sound"), train_dataset=data["train"])
    events = ASTAudioCollator(ASTFeatureExtractor(max_length=FRAMES), num_labels=2, label2id={"high": 0, "low": 1},
                              events_column="events")
    with pytest.raises(ValueError, match=r"split 'train' has no 'events' column, .* pass events_column="):
        ASTTrainer(model=ASTForAudioClassification(tiny_config(max_length=FRAMES, num_labels=2, frame_head=True)),
                   args=args, data_collator=events, train_dataset=data["train"])
    trainer = ASTTrainer(model=model, args=args, data_collator=ASTAudioCollator(
        ASTFeatureExtractor(max_length=FRAMES), num_labels=2, label_column="genre"), train_dataset=renamed)
    assert trainer.evaluate(renamed)["eval_accuracy"] >= 0.0  # named, the column is read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_example_script_in_two_processes(tones, tmp_path, launcher):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, layer_norm_eps=1e-6)))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    else:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO / "examples" / "accelerate" / "cpu_2proc.yaml")]
    command = [*launch, "--master_port" if launcher == "torchrun" else "--main_process_port", str(_free_port()),
               str(REPO / "examples" / "finetune.py"), "--recipe", "speechcommands", "--data",
               str(tones), "--config", str(config), "--output-dir", str(out), "--epochs", "2", "--batch-size", "4",
               "--max-length", str(FRAMES), "--lr", "1e-3", "--save-strategy", "no"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode:
        (tmp_path / "stderr.txt").write_text(result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["global_step"] == 6  # 24 clips / (2 processes x 4) = 3 steps an epoch: the data was sharded
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    reloaded = ASTForAudioClassification.from_pretrained(out / "final")
    assert reloaded.config.id2label == {0: "high", 1: "low"}
    assert reloaded.config.problem_type == "multi_label_classification"  # the recipe's BCE


def test_example_script_multilabel_recipe_in_process(tmp_path):
    """The AudioSet recipe offline: comma-separated labels from metadata.csv, BCE, balanced sampling, mixup,
    warm-up + step decay and weight averaging, all through examples/finetune.py."""
    import csv
    import importlib.util

    rng = np.random.default_rng(1)
    folder = tmp_path / "tags" / "train"
    folder.mkdir(parents=True)
    rows = []
    for i in range(12):
        names = [["Speech"], ["Music"], ["Speech", "Music"]][i % 3]
        wave = 0.1 * rng.standard_normal(RATE // 2)
        if "Music" in names:
            wave += 0.3 * np.sin(2 * np.pi * 440 * np.arange(RATE // 2) / RATE)
        sf.write(folder / f"{i}.wav", wave.astype(np.float32), RATE)
        rows.append({"file_name": f"{i}.wav", "label": ",".join(names)})
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "label"])
        writer.writeheader()
        writer.writerows(rows)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64)))
    spec = importlib.util.spec_from_file_location("finetune", REPO / "examples" / "finetune.py")
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    out = tmp_path / "run"
    assert finetune.main(["--recipe", "audioset", "--data", str(tmp_path / "tags"), "--config", str(config),
                          "--output-dir", str(out), "--epochs", "2", "--batch-size", "4", "--max-length", "48",
                          "--save-strategy", "epoch", "--cpu"]) == 0
    final = ASTForAudioClassification.from_pretrained(out / "final")
    assert final.config.num_labels == 527 and final.config.id2label[0] == "Speech"  # the AudioSet label table
    assert final.config.problem_type == "multi_label_classification"
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and (out / "checkpoint-6" / "weight_average.safetensors").is_file()
