#!/usr/bin/env python
"""Measure the two ways of feeding features to Trainer: the collator (decode + fbank per batch, what ast-hf
does) against features precomputed once with `datasets.map` and read back from Arrow.

    python examples/bench_data_path.py --seconds 10 --frames 1024 --batch 12 --clips 96   # AudioSet-like
    python examples/bench_data_path.py --seconds 1 --frames 128 --batch 32 --clips 256    # Speech Commands-like
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ast_hf import ASTFeatureExtractor
    from ast_hf.training import ASTAudioCollator, load_audio_dataset

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for i in range(args.clips):
            label = root / "train" / f"c{i % 2}"
            label.mkdir(parents=True, exist_ok=True)
            sf.write(label / f"{i}.wav", (0.1 * rng.standard_normal(int(16000 * args.seconds))).astype(np.float32),
                     16000, subtype="PCM_16")
        data = load_audio_dataset(root, split="train")
        fe = ASTFeatureExtractor(max_length=args.frames)
        collator = ASTAudioCollator(fe, num_labels=2, freqm=48, timem=args.frames // 5, mixup=0.5).train()
        batches = [[data[j] for j in range(i, min(i + args.batch, len(data)))] for i in range(0, len(data), args.batch)]
        start = time.perf_counter()
        for batch in batches:
            collator(batch)
        per_batch_collator = (time.perf_counter() - start) / len(batches)

        start = time.perf_counter()
        plain = ASTAudioCollator(fe, num_labels=2)
        mapped = data.map(lambda rows: {"input_values": plain([{"audio": a, "label": 0} for a in rows["audio"]])[
            "input_values"].numpy()}, batched=True, batch_size=args.batch, remove_columns=["audio"],
            cache_file_name=str(Path(tmp) / "features.arrow"))
        map_seconds = time.perf_counter() - start
        mapped = mapped.with_format("torch")
        start = time.perf_counter()
        for i in range(0, len(mapped), args.batch):
            mapped[i:i + args.batch]["input_values"]
        per_batch_arrow = (time.perf_counter() - start) / len(batches)
        audio_bytes = sum(f.stat().st_size for f in root.rglob("*.wav")) / args.clips
        feature_bytes = os.path.getsize(Path(tmp) / "features.arrow") / args.clips
    print(f"{args.clips} clips of {args.seconds} s, {args.frames} frames, batch {args.batch}, {args.threads} threads")
    print(f"collator (decode + mixup + fbank + SpecAugment): {1000 * per_batch_collator:.1f} ms/batch")
    print(f"datasets.map once: {map_seconds:.1f} s; then reading features: {1000 * per_batch_arrow:.1f} ms/batch")
    print(f"disk per clip: audio {audio_bytes / 1e3:.0f} kB (16-bit WAV), features {feature_bytes / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
