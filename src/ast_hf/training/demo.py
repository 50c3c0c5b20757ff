"""The offline demo: make a small labelled data set, fine-tune an AST on the CPU, evaluate on unheard voices.

`ast-hf demo --out DIR` (or `run_demo(DIR)`):

1. generates an `audiofolder` in DIR/data: six spoken words (espeak-ng: 8 English voices x 35 voice variants,
   speeds 120-220 wpm, pitches 20-80) and four synthetic sounds (sox: sirens, plucked strings, noise bursts,
   buzzers), 16 kHz, placed at a random offset, random gain, white noise at 10-30 dB SNR. The test split uses 8
   other voice variants: no test voice (voice + variant) is ever heard in training;
2. computes the normalisation statistics of the training split;
3. trains a small AST from scratch with `ASTTrainer` (SpecAugment, time shift and feature noise, AdamW with
   warm-up and cosine decay) on the CPU, with a progress bar;
4. evaluates on the test split, saves DIR/model (model + feature extractor), reloads it through
   `transformers.pipeline("audio-classification")`, prints a confusion table, and writes DIR/metrics.json.

DIR is written atomically: it appears complete at the end, or not at all.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

WORDS = ("yes", "no", "stop", "seven", "marvin", "happy")
SOUNDS = ("siren", "pluck", "noise", "buzzer")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2",
            "klatt3", "Alex", "Andy", "Annie", "aunty", "belinda", "boris", "david", "ed", "edward", "Gene", "iven",
            "Jacky", "john", "linda", "max", "Mike", "paul", "rob", "robert", "steph", "travis", "victor", "zac",
            "grandma", "grandpa", "norbert", "shelby")
ESPEAK_RATE = 22050
RATE = 16000


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo's result depends on (recorded in metrics.json)."""

    train_per_class: int = 150
    test_per_class: int = 40
    test_variants: int = 8
    clip_seconds: float = 1.28
    num_mel_bins: int = 64
    max_length: int = 128
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    patch_size: int = 16
    frequency_stride: int = 16
    time_stride: int = 8
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    freqm: int = 8
    timem: int = 16
    mixup: float = 0.0
    seed: int = 0
    # Training speed options (docs/training.md), all off by default: patchout of whole time columns / frequency
    # rows / a fraction of random patches of the 4 x 15 patch grid, and bf16 autocast (CPUs with bf16 units).
    patchout_time: int = 0
    patchout_freq: int = 0
    patchout_random: float = 0.0
    bf16: bool = False
    # Features of up to this many MB of clips kept from the first epoch on (the collator's cache_mb; mixup is off,
    # so a clip's features are the same every epoch): the demo's 1900 clips take ~62 MB.
    feature_cache_mb: float = 256.0
    # Opt-in token reduction measured on the test set after training: patches kept, after this many layers.
    token_reduction_keep: tuple[float, ...] = (0.75, 0.5, 0.25)
    token_reduction_after_layer: int = 2


QUICK = DemoSettings(train_per_class=4, test_per_class=2, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=128, epochs=1, batch_size=8, token_reduction_after_layer=0)


# --------------------------------------------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------------------------------------------


def _word(job: tuple) -> np.ndarray:
    from ..synthetic import speak

    word, voice, speed, pitch = job
    return speak(word, voice, speed=speed, pitch=pitch, sampling_rate=ESPEAK_RATE)  # resampled later, in batches


def _sound(job: tuple) -> np.ndarray:
    from ..synthetic import sox_synth

    kind, seed = job
    rng = np.random.default_rng(seed)
    seconds = float(rng.uniform(0.4, 1.0))
    if kind == "siren":
        low = rng.uniform(400, 900)
        high = low * rng.uniform(1.5, 2.5)
        sweep = f"{low:.0f}-{high:.0f}" if rng.random() < 0.5 else f"{high:.0f}-{low:.0f}"
        effect = ["sine", sweep]
    elif kind == "pluck":
        effect = ["pluck", f"{rng.uniform(110, 660):.0f}"]
    elif kind == "noise":
        effect = [str(rng.choice(["pinknoise", "brownnoise", "whitenoise"]))]
    else:  # buzzer
        effect = ["square", f"{rng.uniform(100, 400):.0f}"]
    return sox_synth(effect, seconds, sampling_rate=RATE)


def _resample_all(clips: list[np.ndarray], orig: int, new: int, chunk: int = 128) -> list[np.ndarray]:
    """Resample many clips with one torchaudio call per chunk (the sinc kernel is built once per chunk)."""
    import torchaudio.functional as AF

    out = []
    for start in range(0, len(clips), chunk):
        part = clips[start:start + chunk]
        padded = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(c) for c in part], batch_first=True)
        done = AF.resample(padded, orig, new)
        out += [done[i, : int(np.ceil(len(c) * new / orig))].numpy() for i, c in enumerate(part)]
    return out


def _place(clip: np.ndarray, rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Random gain, a random 0-250 ms lead-in (never past `seconds` in all), white noise at 10-30 dB SNR."""
    from ..synthetic import add_noise

    total = int(seconds * RATE)
    clip = clip[:total] / (np.abs(clip).max() + 1e-8) * rng.uniform(0.2, 0.9)
    offset = int(rng.integers(0, min(total - len(clip), RATE // 4) + 1))
    out = np.zeros(offset + len(clip), dtype=np.float32)
    out[offset:] = clip
    return np.clip(add_noise(out, float(rng.uniform(10, 30)), rng), -1, 1)


def voice_split(rng: np.random.Generator, voices: list[str], test_variants: int
                ) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """Hold out `test_variants` voice variants: (their names, {"train": [(voice, variant)], "test": [...]}),
    so that no test voice (voice + variant) is heard in training."""
    held_out = sorted(rng.choice(VARIANTS, size=test_variants, replace=False).tolist())
    return held_out, {"train": [(v, x) for v in voices for x in VARIANTS if x not in held_out],
                      "test": [(v, x) for v in voices for x in VARIANTS if x in held_out]}


def make_demo_data(folder: Path, settings: DemoSettings, workers: int = 2) -> dict:
    """Write the demo's audiofolder (folder/{train,test}/<label>/*.wav); returns a description of the split."""
    import soundfile as sf
    from tqdm.auto import tqdm

    from ..synthetic import espeak_voices

    rng = np.random.default_rng(settings.seed)
    voices = espeak_voices("en")
    test_variants, pools = voice_split(rng, voices, settings.test_variants)
    counts = {"train": settings.train_per_class, "test": settings.test_per_class}
    word_jobs, sound_jobs = [], []
    for split, pool in pools.items():
        for word in WORDS:
            for i in rng.choice(len(pool), size=counts[split], replace=counts[split] > len(pool)):
                voice, variant = pool[i]
                word_jobs.append((split, word, (word, f"{voice}+{variant}", int(rng.integers(120, 221)),
                                                int(rng.integers(20, 81)))))
        for kind in SOUNDS:
            sound_jobs += [(split, kind, (kind, int(rng.integers(1 << 31)))) for _ in range(counts[split])]
    total = len(word_jobs) + len(sound_jobs)
    with tqdm(total=total, desc="generating clips", unit="clip") as bar:
        with ProcessPoolExecutor(max(1, workers)) as pool:
            words = []
            for clip in pool.map(_word, [j[2] for j in word_jobs], chunksize=16):
                words.append(clip)
                bar.update()
            sounds = []
            for clip in pool.map(_sound, [j[2] for j in sound_jobs], chunksize=16):
                sounds.append(clip)
                bar.update()
    words = _resample_all(words, ESPEAK_RATE, RATE)
    index = {"train": 0, "test": 0}
    for (split, label, _), clip in zip(word_jobs + sound_jobs, words + sounds):
        target = folder / split / label
        target.mkdir(parents=True, exist_ok=True)
        sf.write(target / f"{index[split]:05d}.wav", _place(clip, rng, settings.clip_seconds), RATE, subtype="PCM_16")
        index[split] += 1
    return {"voices": voices, "test_variants": test_variants,
            "train_variants": sorted(set(VARIANTS) - set(test_variants)), "clips": index}


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def confusion_table(labels: list[str], truth: list[int], predicted: list[int]) -> str:
    """A text confusion table: rows are true classes, columns predictions, last column per-class accuracy."""
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for t, p in zip(truth, predicted):
        matrix[t, p] += 1
    width = max(5, max(len(x) for x in labels))
    head = " " * (width + 1) + " ".join(f"{x[:5]:>5}" for x in labels) + "   acc"
    rows = [head]
    for i, name in enumerate(labels):
        acc = matrix[i, i] / max(1, matrix[i].sum())
        rows.append(f"{name:>{width}} " + " ".join(f"{v:5d}" for v in matrix[i]) + f"  {acc:4.0%}")
    return "\n".join(rows)


def begin_demo(out_dir: str | Path, force: bool, seed: int, num_threads: int) -> Path:
    """What every demo does first: refuse a non-empty `out_dir` unless `force` (nothing is touched then), take
    `num_threads` CPU threads and seed torch. Returns `out_dir` as a Path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out or pass --force to replace it")
    torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    return out_dir


def demo_config(settings, labels: list[str], **fields):
    """The demos' AST config: the model sizes and patch grid of `settings` (a `DemoSettings` or
    `EventDemoSettings`), the authors' LayerNorm eps, `labels` as the label map; `fields` add to it."""
    from ..configuration_ast import ASTConfig

    return ASTConfig(
        hidden_size=settings.hidden_size, num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads, intermediate_size=settings.intermediate_size,
        patch_size=settings.patch_size, frequency_stride=settings.frequency_stride,
        time_stride=settings.time_stride, max_length=settings.max_length, num_mel_bins=settings.num_mel_bins,
        layer_norm_eps=1e-6, classifier_layer_norm_eps=1e-5, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)}, **fields)


def demo_training_arguments(settings, output_dir: Path, **fields):
    """The demos' `ASTTrainingArguments`: epochs, batch, optimiser and schedule of `settings`, on the CPU, no
    evaluation or checkpoints during training; `fields` add to them."""
    from .trainer import ASTTrainingArguments

    return ASTTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay, warmup_steps=settings.warmup_ratio, lr_scheduler_type="cosine",
        eval_strategy="no", save_strategy="no", logging_strategy="epoch", use_cpu=True, seed=settings.seed,
        dataloader_num_workers=0, report_to="none", **fields)


def token_reduction_table(model, features: torch.Tensor, truth: list[int], keeps: tuple[float, ...],
                          after_layer: int, batch_size: int = 64) -> list[dict]:
    """Accuracy and speed of the trained `model` on `features` [clips, frames, mel] with opt-in token reduction
    (`set_token_reduction(keep, after_layer)`) against the full model: one row per keep fraction (keep 1.0 = the
    full model first). Seconds are the best of three passes over the test set (float32, inference mode); cosine is
    the logit cosine similarity to the full model (mean and minimum over clips)."""
    from .metrics import accuracy  # the demo's main accuracy too: the same count prints the same percentage

    model.eval()

    def logits_and_seconds() -> tuple[torch.Tensor, float]:
        best, logits = float("inf"), None
        for _ in range(3):
            begun = time.perf_counter()
            with torch.inference_mode():
                logits = torch.cat([model(features[i: i + batch_size]).logits
                                    for i in range(0, len(features), batch_size)])
            best = min(best, time.perf_counter() - begun)
        return logits, best

    full, full_seconds = logits_and_seconds()
    truth = torch.tensor(truth)
    rows = [{"keep": 1.0, "accuracy": accuracy(full, truth), "seconds": full_seconds,
             "speedup": 1.0, "cosine_mean": 1.0, "cosine_min": 1.0}]
    try:
        for keep in keeps:
            model.set_token_reduction(keep=keep, after_layer=after_layer)
            logits, seconds = logits_and_seconds()
            cosine = torch.nn.functional.cosine_similarity(logits, full, dim=-1)
            rows.append({"keep": keep, "accuracy": accuracy(logits, truth),
                         "seconds": seconds, "speedup": full_seconds / seconds,
                         "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())})
    finally:
        model.set_token_reduction(None)
    return rows


def run_demo(out_dir: str | Path, quick: bool = False, force: bool = False, seed: int = 0,
             num_threads: int = 2, settings: DemoSettings | None = None, started: float | None = None,
             **options) -> dict:
    """Run the whole demo into `out_dir` and return the metrics written to `out_dir/metrics.json`.

    `started` (a `time.perf_counter()` value) lets a caller count its own start-up in `seconds`. `options` replace
    `DemoSettings` fields (e.g. `patchout_time=5, bf16=True`).

    Raises:
        ValueError: `bf16=True` on a CPU without bf16 units (autocast would be emulated, slower than float32)."""
    from transformers import pipeline

    from ..atomic_io import atomic_folder, json_text
    from ..feature_extraction_ast import ASTFeatureExtractor
    from ..modeling_ast import ASTForAudioClassification
    from .collator import ASTAudioCollator
    from .data import decode_audio, label_names, load_audio_dataset
    from .normalization import compute_normalization_stats
    from .trainer import ASTTrainer

    start = time.perf_counter() if started is None else started
    settings = replace(settings or (QUICK if quick else DemoSettings()), seed=seed, **options)
    if settings.bf16:
        from ..onednn import BF16_UNITS

        if not BF16_UNITS:
            raise ValueError("bf16 training needs a CPU with bf16 units (AVX-512 bf16 or AMX) that oneDNN can use; "
                             "this one has none: leave out --bf16")
    out_dir = begin_demo(out_dir, force, settings.seed, num_threads)

    with atomic_folder(out_dir, force=True) as staging:
        split_info = make_demo_data(staging / "data", settings, workers=num_threads)
        data = load_audio_dataset(staging / "data")
        labels = label_names(data["train"])
        fe = ASTFeatureExtractor(num_mel_bins=settings.num_mel_bins, max_length=settings.max_length)
        compute_normalization_stats(data["train"], fe)
        config = demo_config(settings, labels, problem_type="single_label_classification")
        model = ASTForAudioClassification(config)
        collator = ASTAudioCollator(fe, num_labels=len(labels), freqm=settings.freqm, timem=settings.timem,
                                    mixup=settings.mixup, noise=True,
                                    cache_mb=settings.feature_cache_mb if settings.mixup == 0 else 0.0)
        args = demo_training_arguments(
            settings, staging / "run", per_device_eval_batch_size=64, bf16=settings.bf16,
            patchout_time=settings.patchout_time, patchout_freq=settings.patchout_freq,
            patchout_random=settings.patchout_random)
        trainer = ASTTrainer(model=model, args=args, data_collator=collator, train_dataset=data["train"])
        trainer.train()
        test = trainer.predict(data["test"], metric_key_prefix="test")
        trainer.save_model(str(staging / "model"))  # model + preprocessor_config.json
        # bf16 autocast leaves the weights in float32: the table measures the float32 model.
        test_waves = [decode_audio(a, RATE, index=i) for i, a in enumerate(data["test"]["audio"])]
        test_features = fe(test_waves, sampling_rate=RATE, return_tensors="pt")["input_values"]
        reduction = token_reduction_table(trainer.model, test_features, list(data["test"]["label"]),
                                          settings.token_reduction_keep, settings.token_reduction_after_layer)

        # Reload the saved folder the way a user would, and classify the test clips with the pipeline.
        classifier = pipeline("audio-classification",
                              model=ASTForAudioClassification.from_pretrained(staging / "model"),
                              feature_extractor=ASTFeatureExtractor.from_pretrained(staging / "model"),
                              device="cpu")
        clips = [{"raw": wave, "sampling_rate": RATE} for wave in test_waves]
        truth = list(data["test"]["label"])
        outputs = classifier(clips, top_k=1, batch_size=64)
        predicted = [config.label2id[o[0]["label"]] for o in outputs]
        pipeline_accuracy = float(np.mean(np.array(predicted) == np.array(truth)))
        table = confusion_table(labels, truth, predicted)

        per_class = {name: float(np.mean([p == i for p, t in zip(predicted, truth) if t == i]))
                     for i, name in enumerate(labels)}
        metrics = {
            "accuracy": float(test.metrics["test_accuracy"]),
            "pipeline_accuracy": pipeline_accuracy,
            "mAP": float(test.metrics["test_mAP"]),
            "mAUC": float(test.metrics["test_mAUC"]),
            "num_test_clips": len(truth),
            "num_train_clips": len(data["train"]),
            "num_classes": len(labels),
            "labels": labels,
            "per_class_accuracy": per_class,
            "train_seconds": float(trainer.state.log_history[-1].get("train_runtime", float("nan"))),
            "token_reduction": reduction,
            "seconds": round(time.perf_counter() - start, 1),
            "quick": quick,
            "threads": num_threads,
            "load_average": list(os.getloadavg()),
            "split": split_info,
            "settings": asdict(settings),
            "normalization": {"mean": fe.mean, "std": fe.std},
        }
        (staging / "metrics.json").write_text(json_text(metrics, indent=2))
        import shutil

        shutil.rmtree(staging / "run", ignore_errors=True)
    print(table)
    print(f"accuracy on {len(truth)} clips of unheard voices: {metrics['accuracy']:.1%} (pipeline "
          f"{pipeline_accuracy:.1%}); {len(labels)} classes; {metrics['seconds']:.0f} s in all "
          f"({metrics['train_seconds']:.0f} s training)")
    for row in reduction[1:]:
        print(f"token reduction, keep {row['keep']:.0%} of patches after {settings.token_reduction_after_layer} "
              f"layers: accuracy {row['accuracy']:.1%} (full {reduction[0]['accuracy']:.1%}), "
              f"{row['speedup']:.2f}x the full model's speed, logit cosine >= {row['cosine_min']:.3f}")
    print(f"model saved to {out_dir / 'model'}; metrics in {out_dir / 'metrics.json'}")
    return metrics


__all__ = ["run_demo", "token_reduction_table", "make_demo_data", "voice_split", "DemoSettings", "QUICK",
           "confusion_table"]
