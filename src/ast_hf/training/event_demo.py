"""The offline sound-event demo: 10 s scenes with timed words and sounds, a frame head trained on the CPU.

`ast-hf demo --task events --out DIR` (or `run_event_demo(DIR)`):

1. generates scenes in DIR/data/{train,val,test}/scene_NNNN.wav with ground truth DIR/data/{train,val,test}.tsv
   (DCASE format): the classification demo's six spoken words (espeak-ng) and four sound kinds (sox), each trimmed
   to its audible extent, placed at random onsets without overlap over steady background noise. Test scenes are
   spoken by voice variants never heard in training (`voice_split`); validation scenes by the training voices, in
   scenes never trained on;
2. trains a small AST with a frame head (`frame_head=True`) from scratch with `ASTTrainer`: frame targets from
   the TSV at the patch-column rate, SpecAugment; then fits the clip head, backbone frozen, to the classes present
   in each training scene (`fit_clip_head`), so the model also holds a clip classifier;
3. saves DIR/model, reloads it with `from_pretrained` and scores the validation and test scenes two ways: the
   trained frame head, and `ast_hf.frame_level.column_scores(..., clip_head=True)` (that clip classifier applied to
   each time column's frequency-pooled tokens, no frame training);
4. per method, tunes each label's on threshold and hysteresis on the validation scenes (`tune_postprocessing`),
   turns the test scores into events with `ast_hf.sound_events.detect_events`, scores them with
   `ast_hf.sed_metrics.event_metrics` (sed_eval: event-based F1, 200 ms collar; segment-based F1, 1 s) and writes
   DIR/metrics.json, DIR/test_events.tsv and DIR/scene.png (scores, detected and true events over the spectrogram
   of one test scene).

DIR is written atomically: it appears complete at the end, or not at all.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..event_tsv import SoundEvent
from ..sound_events import EventPostprocessing, detect_events
from .demo import ESPEAK_RATE, RATE, SOUNDS, WORDS, _resample_all, _sound, _word, voice_split

LABELS = WORDS + SOUNDS


@dataclass(frozen=True)
class EventDemoSettings:
    """Everything the events demo's result depends on (recorded in metrics.json)."""

    train_scenes: int = 480
    test_scenes: int = 60
    val_scenes: int = 40
    scene_seconds: float = 10.0
    min_events: int = 4
    max_events: int = 7
    min_gap: float = 0.3
    test_variants: int = 8
    snr_db: tuple[float, float] = (10.0, 30.0)
    num_mel_bins: int = 64
    max_length: int = 1008
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    patch_size: int = 16
    frequency_stride: int = 16
    time_stride: int = 16
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    freqm: int = 8
    timem: int = 20
    mixup: float = 0.0
    clip_head_steps: int = 300
    median_columns: int = 3
    min_duration: float = 0.0
    threshold_grid: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    off_ratio_grid: tuple[float, ...] = (1.0, 0.5)
    seed: int = 0


QUICK_EVENTS = EventDemoSettings(train_scenes=6, test_scenes=2, val_scenes=2, min_events=2, max_events=3,
                                 hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 epochs=1, batch_size=3, clip_head_steps=10, threshold_grid=(0.3, 0.5),
                                 off_ratio_grid=(1.0,))


# --------------------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------------------


def _background(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Steady noise of unit RMS: white and brown (integrated white) noise in a random mixture."""
    white = rng.standard_normal(samples)
    brown = np.cumsum(rng.standard_normal(samples))
    brown -= np.convolve(brown, np.ones(1601) / 1601, mode="same")  # remove the random walk's drift (< 10 Hz)
    mix = rng.uniform(0, 1)
    noise = mix * white / white.std() + (1 - mix) * brown / (brown.std() + 1e-8)
    return (noise / noise.std()).astype(np.float32)


def compose_scene(clips: list[tuple[str, np.ndarray]], rng: np.random.Generator, settings: EventDemoSettings
                  ) -> tuple[np.ndarray, list[SoundEvent]]:
    """Place (label, trimmed clip) pairs at random onsets, in order and without overlap (>= `min_gap` s apart),
    over background noise at `snr_db` below the events' mean power; clips that do not fit are left out.

    Returns:
        (waveform [scene samples] float32 in [-1, 1], the events placed, times in seconds).
    """
    total = int(settings.scene_seconds * RATE)
    gap = int(settings.min_gap * RATE)
    while clips and sum(len(c) for _, c in clips) + gap * (len(clips) + 1) > total:
        clips = clips[:-1]
    free = total - sum(len(c) for _, c in clips) - gap * (len(clips) + 1)
    spare = np.diff(np.r_[0, np.sort(rng.integers(0, free + 1, size=len(clips))), free])  # free time split at random
    scene = np.zeros(total, dtype=np.float32)
    events, position, power = [], 0, []
    for (label, clip), extra in zip(clips, spare[:-1]):
        position += gap + int(extra)
        clip = clip / (np.abs(clip).max() + 1e-8) * rng.uniform(0.2, 0.9)
        scene[position:position + len(clip)] = clip
        power.append(float(np.mean(np.square(clip))))
        events.append(SoundEvent(round(position / RATE, 3), round((position + len(clip)) / RATE, 3), label))
        position += len(clip)
    level = np.sqrt((np.mean(power) if power else 1e-3) / 10 ** (rng.uniform(*settings.snr_db) / 10))
    return np.clip(scene + level * _background(total, rng), -1, 1), events


def make_event_scenes(folder: Path, settings: EventDemoSettings, workers: int = 2) -> dict:
    """Write folder/{train,val,test}/scene_NNNN.wav and folder/{train,val,test}.tsv; returns a description of the
    split. Validation scenes use the training voices (thresholds are tuned on them, never on test voices); they are
    drawn after the test scenes, so adding them leaves the training and test scenes as they were."""
    import soundfile as sf
    from tqdm.auto import tqdm

    from ..event_tsv import write_event_tsv
    from ..synthetic import espeak_voices, trim_silence

    rng = np.random.default_rng(settings.seed)
    test_variants, pools = voice_split(rng, espeak_voices("en"), settings.test_variants)
    plan = []  # (split, scene, label, job) per event
    splits = (("train", settings.train_scenes), ("test", settings.test_scenes), ("val", settings.val_scenes))
    for split, count in splits:
        pool = pools["test" if split == "test" else "train"]
        for scene in range(count):
            for label in rng.choice(LABELS, size=int(rng.integers(settings.min_events, settings.max_events + 1))):
                if label in WORDS:
                    voice, variant = pool[int(rng.integers(len(pool)))]
                    job = (str(label), f"{voice}+{variant}", int(rng.integers(120, 221)), int(rng.integers(20, 81)))
                else:
                    job = (str(label), int(rng.integers(1 << 31)))
                plan.append((split, scene, str(label), job))
    words = [i for i, p in enumerate(plan) if p[2] in WORDS]
    sounds = [i for i, p in enumerate(plan) if p[2] not in WORDS]
    with tqdm(total=len(plan), desc="generating events", unit="clip") as bar, ProcessPoolExecutor(workers) as pool:
        spoken = []
        for clip in pool.map(_word, [plan[i][3] for i in words], chunksize=8):
            spoken.append(clip)
            bar.update()
        made = []
        for clip in pool.map(_sound, [plan[i][3] for i in sounds], chunksize=8):
            made.append(clip)
            bar.update()
    clips = dict(zip(words + sounds, _resample_all(spoken, ESPEAK_RATE, RATE) + made))  # plan index -> clip
    counts = {}
    for split, count in splits:
        (folder / split).mkdir(parents=True, exist_ok=True)
        table = {}
        for scene in range(count):
            parts = [(p[2], trim_silence(clips[i], RATE)) for i, p in enumerate(plan)
                     if p[0] == split and p[1] == scene]
            waveform, events = compose_scene(parts, rng, settings)
            name = f"scene_{scene:04d}.wav"
            sf.write(folder / split / name, waveform, RATE, subtype="PCM_16")
            table[name] = events
        write_event_tsv(folder / f"{split}.tsv", table)
        counts[split] = {"scenes": count, "events": sum(len(e) for e in table.values())}
    return {"test_variants": test_variants, "counts": counts}


# --------------------------------------------------------------------------------------------------------------
# Scores -> events: thresholds tuned on the validation scenes
# --------------------------------------------------------------------------------------------------------------


def _detect_all(scores: dict[str, np.ndarray], labels: list[str], column_seconds: float,
                params: EventPostprocessing, duration: float) -> dict[str, list[SoundEvent]]:
    """{scene: events} of {scene: [time columns, labels] scores}."""
    return {name: detect_events(s, labels, column_seconds, params, filename=name, duration=duration)
            for name, s in scores.items()}


def tune_postprocessing(scores: dict[str, np.ndarray], reference: dict[str, list[SoundEvent]], labels: list[str],
                        column_seconds: float, settings: EventDemoSettings) -> EventPostprocessing:
    """Per-label on threshold and hysteresis (off = on x ratio) maximising that label's event F1 + segment F1
    (sed_eval, as the test is scored) on validation scenes: {scene: [time columns, labels] scores in [0, 1]} and
    their true events. A label is tuned alone (its own scores and events), so labels do not trade off; ties keep
    the first (lowest) threshold of `threshold_grid` and the first ratio of `off_ratio_grid`."""
    from ..sed_metrics import event_metrics

    on, off = {}, {}
    for k, label in enumerate(labels):
        truth = {name: [e for e in events if e.label == label] for name, events in reference.items()}
        best = -1.0
        for ratio in settings.off_ratio_grid:
            for threshold in settings.threshold_grid:
                params = EventPostprocessing(threshold, threshold * ratio, settings.median_columns,
                                             settings.min_duration)
                found = _detect_all({n: s[:, [k]] for n, s in scores.items()}, [label], column_seconds, params,
                                    settings.scene_seconds)
                result = event_metrics(truth, found, [label])
                if result["event_f1"] + result["segment_f1"] > best:
                    best = result["event_f1"] + result["segment_f1"]
                    on[label], off[label] = threshold, threshold * ratio
    return EventPostprocessing(on, off, settings.median_columns, settings.min_duration)


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def _features(fe, audio: list) -> torch.Tensor:
    """[clips, frames, mel bins] features of a batch of the data set's audio values."""
    from .data import decode_audio

    return fe([decode_audio(a, RATE) for a in audio], sampling_rate=RATE, return_tensors="pt")["input_values"]


def fit_clip_head(model, fe, dataset, label2id: dict[str, int], steps: int, batch_size: int = 32) -> float:
    """Fit the clip head (LayerNorm + Linear) of a frame-trained model, backbone frozen, to the classes present
    in each recording (BCE, Adam, full batch): the clip classifier `column_scores` then reads per column. Training
    it with the backbone instead slows the frame head down (docs/training.md). Returns the final loss."""
    from ..inference import run_model

    pooled, targets = [], torch.zeros(len(dataset), len(label2id))
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        pooled.append(run_model(model.audio_spectrogram_transformer, _features(fe, rows["audio"])).pooler_output)
        for i, events in enumerate(rows["events"]):
            targets[start + i, [label2id[e["event_label"]] for e in events]] = 1.0
    pooled = torch.cat(pooled).clone()
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.classifier(pooled), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def _score_scenes(model, fe, dataset, batch_size: int = 8) -> tuple[dict, dict, dict]:
    """(frame-head scores, clip-head column scores, features) of every scene, each {scene file name: array}:
    [time columns, labels] probabilities (one column per `time_stride` x 10 ms) and [frames, mel bins] features."""
    from ..frame_level import column_scores

    frame, column, features = {}, {}, {}
    for start in range(0, len(dataset), batch_size):
        audio = dataset[start:start + batch_size]["audio"]
        names = [Path(a["path"]).name for a in audio]
        values = _features(fe, audio)
        frame.update(zip(names, column_scores(model, values)))
        column.update(zip(names, column_scores(model, values, clip_head=True)))
        features.update(zip(names, values.numpy()))
    return frame, column, features


def run_event_demo(out_dir: str | Path, quick: bool = False, force: bool = False, seed: int = 0,
                   num_threads: int = 2, settings: EventDemoSettings | None = None,
                   started: float | None = None) -> dict:
    """Run the events demo into `out_dir` and return the metrics written to `out_dir/metrics.json`.

    `started` (a `time.perf_counter()` value) lets a caller count its own start-up in `seconds`."""
    from ..atomic_io import atomic_folder, json_text
    from ..event_tsv import read_event_tsv, write_event_tsv
    from ..feature_extraction_ast import ASTFeatureExtractor
    from ..frame_level import FrameScores
    from ..modeling_ast import ASTForAudioClassification
    from ..plotting import plot_events
    from ..sed_metrics import event_metrics
    from .collator import ASTAudioCollator
    from .demo import begin_demo, demo_config, demo_training_arguments
    from .normalization import compute_normalization_stats
    from .strong_labels import column_seconds, load_event_dataset
    from .trainer import ASTTrainer

    start = time.perf_counter() if started is None else started
    settings = replace(settings or (QUICK_EVENTS if quick else EventDemoSettings()), seed=seed)
    out_dir = begin_demo(out_dir, force, settings.seed, num_threads)
    labels = list(LABELS)
    label2id = {x: i for i, x in enumerate(labels)}

    with atomic_folder(out_dir, force=True) as staging:
        split_info = make_event_scenes(staging / "data", settings, workers=num_threads)
        train = load_event_dataset(staging / "data" / "train", staging / "data" / "train.tsv", labels)
        val = load_event_dataset(staging / "data" / "val", staging / "data" / "val.tsv", labels)
        test = load_event_dataset(staging / "data" / "test", staging / "data" / "test.tsv", labels)
        fe = ASTFeatureExtractor(num_mel_bins=settings.num_mel_bins, max_length=settings.max_length)
        compute_normalization_stats(train, fe, num_clips=64)  # 64 scenes of 10 s pin mean and std well enough
        config = demo_config(settings, labels, problem_type="multi_label_classification", frame_head=True)
        model = ASTForAudioClassification(config)
        collator = ASTAudioCollator(fe, num_labels=len(labels), label2id=label2id, events_column="events",
                                    clip_labels=False, freqm=settings.freqm, timem=settings.timem,
                                    mixup=settings.mixup)
        args = demo_training_arguments(settings, staging / "run")
        trainer = ASTTrainer(model=model, args=args, data_collator=collator, train_dataset=train)
        trainer.train()
        clip_head_loss = fit_clip_head(model, fe, train, label2id, settings.clip_head_steps)
        trainer.save_model(str(staging / "model"))
        shutil.rmtree(staging / "run", ignore_errors=True)

        # Score the validation and test scenes with the saved model, reloaded as a user would.
        reloaded = ASTForAudioClassification.from_pretrained(staging / "model")
        reloaded_fe = ASTFeatureExtractor.from_pretrained(staging / "model")
        val_frame, val_column, _ = _score_scenes(reloaded, reloaded_fe, val)
        frame, column, features = _score_scenes(reloaded, reloaded_fe, test)
        seconds = column_seconds(config.time_stride)
        val_reference = read_event_tsv(staging / "data" / "val.tsv", labels)
        val_reference = {name: val_reference.get(name, []) for name in val_frame}
        reference = read_event_tsv(staging / "data" / "test.tsv", labels)
        reference = {name: reference.get(name, []) for name in frame}
        results, estimated = {}, {}
        for method, val_scores, scores in (("frame_head", val_frame, frame), ("column_scores", val_column, column)):
            params = tune_postprocessing(val_scores, val_reference, labels, seconds, settings)
            estimated[method] = _detect_all(scores, labels, seconds, params, settings.scene_seconds)
            results[method] = {**event_metrics(reference, estimated[method], labels),
                               "on_thresholds": {k: round(v, 3) for k, v in params.on_threshold.items()},
                               "off_thresholds": {k: round(v, 3) for k, v in params.off_threshold.items()}}
        write_event_tsv(staging / "test_events.tsv", estimated["frame_head"])
        shown = max(frame, key=lambda name: len(reference[name]))
        plot_events(FrameScores(labels, frame[shown], seconds, settings.scene_seconds, "sigmoid",
                                features[shown].T), estimated["frame_head"][shown], staging / "scene.png",
                    top_k=len(labels), reference=reference[shown],
                    title=f"test scene {shown} (unheard voices): frame-head scores, events (red), truth (white)")
        metrics = {
            "event_f1": results["frame_head"]["event_f1"],
            "segment_f1": results["frame_head"]["segment_f1"],
            "frame_head": results["frame_head"],
            "column_scores": results["column_scores"],
            "num_test_scenes": len(frame),
            "num_val_scenes": len(val_frame),
            "num_train_scenes": len(train),
            "num_test_events": sum(len(e) for e in reference.values()),
            "labels": labels,
            "column_seconds": seconds,
            "metric_settings": {"t_collar": 0.2, "percentage_of_length": 0.2, "segment_seconds": 1.0,
                                "library": "sed_eval"},
            "train_seconds": float(trainer.state.log_history[-1].get("train_runtime", float("nan"))),
            "clip_head_loss": clip_head_loss,
            "seconds": round(time.perf_counter() - start, 1),
            "quick": quick,
            "threads": num_threads,
            "load_average": list(os.getloadavg()),
            "split": split_info,
            "settings": asdict(settings),
            "normalization": {"mean": fe.mean, "std": fe.std},
        }
        (staging / "metrics.json").write_text(json_text(metrics, indent=2))
    for method in ("frame_head", "column_scores"):
        r = metrics[method]
        print(f"{method:>13}: event F1 {r['event_f1']:.3f} (class mean {r['event_f1_macro']:.3f}), segment F1 "
              f"{r['segment_f1']:.3f} (class mean {r['segment_f1_macro']:.3f})")
    print(f"{metrics['num_test_events']} events in {len(frame)} test scenes of unheard voices; "
          f"{metrics['seconds']:.0f} s in all")
    print(f"model saved to {out_dir / 'model'}; metrics in {out_dir / 'metrics.json'}")
    return metrics


__all__ = ["run_event_demo", "make_event_scenes", "compose_scene", "tune_postprocessing", "fit_clip_head",
           "EventDemoSettings", "QUICK_EVENTS", "LABELS"]
