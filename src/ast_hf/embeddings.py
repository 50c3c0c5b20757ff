"""Clip embeddings for retrieval and linear probes: the pooled AST output, optionally the patch tokens.

The embedding of a window is the model's `pooler_output` [D]: after the final LayerNorm, the mean of the
prefix (cls and distillation) tokens, or of the patch tokens for `pooling="mean"` models (SSAST): the vector the
classifier head reads. A recording is cut into windows exactly as
`tag_long_audio` does (streamed, memory flat with length) and the recording's embedding is the mean of its
window embeddings. Patch tokens come back on the [frequency, time] patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio_io import audio_blocks
from .inference import featurize, run_model
from .long_audio import batched, iter_windows, window_samples


@dataclass
class AudioEmbedding:
    """Embeddings of one recording.

    Attributes:
        embedding: [D] mean of the window embeddings.
        window_embeddings: [windows, D] pooled output of each window.
        starts, ends: [windows] window times in seconds.
        patches: [windows, f, t, D] last-layer patch tokens (after the final LayerNorm) on the patch grid, or None.
    """

    embedding: np.ndarray
    window_embeddings: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    patches: np.ndarray | None = None


def backbone(model):
    """The `ASTModel` inside an `ASTForAudioClassification` (or the model itself)."""
    return getattr(model, "audio_spectrogram_transformer", model)


def embed(model, feature_extractor, audio: str | Path | np.ndarray | torch.Tensor, sampling_rate: int | None = None,
          window: float | None = None, hop: float | None = None, return_patches: bool = False, batch_size: int = 8,
          progress: bool = False) -> AudioEmbedding:
    """Embed a recording of any length.

    Args:
        model: `ASTModel` or `ASTForAudioClassification` (its backbone is used; the head is not run).
        audio: a file path (streamed) or a mono waveform [samples] with `sampling_rate` (Hz).
        window, hop: seconds, as in `tag_long_audio` (default: the model's input length, a shorter recording is
            embedded whole; hop min(5 s, window / 2)).
        return_patches: also return the patch tokens as [windows, f, t, D].
    """
    net = backbone(model)
    config = net.config
    rate = feature_extractor.sampling_rate
    win, step, allow_shorter = window_samples(window, hop, rate, config.max_length)
    blocks, _, name = audio_blocks(audio, sampling_rate, rate)
    from tqdm.auto import tqdm

    pooled, patches, starts, lengths = [], [], [], []
    windows = iter_windows(blocks, win, step, allow_shorter, rate, name)
    for batch in tqdm(batched(windows, batch_size), unit="batch", desc="embedding", disable=not progress):
        values, mask = featurize(feature_extractor, [clip for _, clip in batch], config.max_length)
        out = run_model(net, values, mask)
        pooled.append(out.pooler_output.float().cpu().numpy())
        if return_patches:
            f, t = config.patch_grid(values.shape[1])
            tokens = out.last_hidden_state[:, config.num_prefix_tokens:].float().cpu().numpy()
            patches.append(tokens.reshape(len(batch), f, t, -1))
        starts += [start for start, _ in batch]
        lengths += [len(clip) for _, clip in batch]
    window_embeddings = np.concatenate(pooled)
    starts_s = np.asarray(starts, dtype=np.float64) / rate
    return AudioEmbedding(embedding=window_embeddings.mean(axis=0), window_embeddings=window_embeddings,
                          starts=starts_s, ends=starts_s + np.asarray(lengths) / rate,
                          patches=np.concatenate(patches) if return_patches else None)


def embed_files(paths: list[str] | str | Path, model, feature_extractor, output: str | Path,
                window: float | None = None, hop: float | None = None, return_patches: bool = False,
                batch_size: int = 8, progress: bool = True) -> dict[str, str]:
    """Embed files into one .npz (written atomically, no pickles): `paths` [N], `embeddings` [N, D],
    `window_embeddings` [W, D], `window_file` [W] (row in `paths`), `window_start` / `window_end` [W] (s) and,
    with `return_patches`, `patches_<i>` [windows, f, t, D] for file i. Files that fail are skipped and
    returned as {path: error}.

    Raises:
        ValueError: `paths` is empty, or no file could be embedded (nothing is written then).
        IsADirectoryError: `output` is a folder (before any file is embedded).
    """
    import sys

    from tqdm.auto import tqdm

    from .atomic_io import atomic_path, check_file_destination

    if isinstance(paths, (str, Path)):  # one path, not its characters
        paths = [paths]
    paths = [str(p) for p in paths]
    if not paths:
        raise ValueError("no files to embed")
    check_file_destination(output)  # before the work, not when the result is moved into place
    kept, failed, arrays = [], {}, {}
    for path in tqdm(paths, unit="file", desc="embedding", disable=not progress):
        try:
            result = embed(model, feature_extractor, path, window=window, hop=hop, return_patches=return_patches,
                           batch_size=batch_size)
        except (ValueError, OSError, RuntimeError) as error:
            failed[path] = f"{type(error).__name__}: {error}"
            print(f"ast-hf embed: skipped {path}: {error}", file=sys.stderr)
            continue
        if return_patches:
            arrays[f"patches_{len(kept)}"] = result.patches
        kept.append((path, result))
    if not kept:
        first, error = next(iter(failed.items()))
        raise ValueError(f"none of the {len(paths)} files could be embedded ({first}: {error}); {output} was not "
                         f"written")
    arrays.update(
        paths=np.array([p for p, _ in kept]), embeddings=np.stack([r.embedding for _, r in kept]),
        window_embeddings=np.concatenate([r.window_embeddings for _, r in kept]),
        window_file=np.concatenate([np.full(len(r.starts), i) for i, (_, r) in enumerate(kept)]),
        window_start=np.concatenate([r.starts for _, r in kept]),
        window_end=np.concatenate([r.ends for _, r in kept]))
    with atomic_path(output, suffix=".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return failed


__all__ = ["AudioEmbedding", "embed", "embed_files", "backbone"]
