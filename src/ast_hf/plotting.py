"""PNG figures of long-audio tags and attention explanations, drawn over the spectrogram.

Figures are built with `matplotlib.figure.Figure` and the Agg renderer, never `pyplot`: nothing global changes
in the caller's process (no backend switch, no open windows). Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic_io import atomic_path


def _figure(height_ratios: list[float], width: float = 12.0, height: float = 6.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(len(height_ratios), 1, sharex=True, height_ratios=height_ratios, squeeze=False)[:, 0]
    return fig, axes


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def draw_spectrogram(fig, ax, spectrogram: np.ndarray, seconds_per_column: float, cmap: str = "magma",
                     colorbar: bool = True, start: float = 0.0):
    """Draw a [mel bins, columns] log-mel with time in seconds from `start` (x) and mel bins (y)."""
    mel_bins, columns = spectrogram.shape
    image = ax.imshow(spectrogram, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest",
                      extent=(start, start + columns * seconds_per_column, 0, mel_bins))
    ax.set_ylabel("mel bin")
    ax.set_xlabel("time (s)")
    if colorbar:
        fig.colorbar(image, ax=ax, label="log-mel (normalised)", pad=0.01, fraction=0.04)
    return image


def plot_timeline(tags, path: str | Path, top_k: int = 5, title: str | None = None) -> Path:
    """The `top_k` best clip-level labels' per-window scores over time (heat map, one row per label, best on
    top) above the spectrogram, sharing the time axis in seconds. Each window's score is drawn from halfway to
    the previous window's centre to halfway to the next one's."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    order = np.argsort(-tags.clip_scores, kind="stable")[:top_k]
    centres = (tags.starts + tags.ends) / 2
    edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [tags.duration]])
    fig, (ax_tags, ax_spec) = _figure([1.0, 1.4], height=2.5 + 0.35 * len(order) + 3.0)
    bounded = tags.activation in ("sigmoid", "softmax")
    mesh = ax_tags.pcolormesh(edges, np.arange(len(order) + 1), tags.scores[:, order].T, cmap="viridis",
                              vmin=0.0 if bounded else None, vmax=1.0 if bounded else None, shading="flat")
    ax_tags.set_yticks(np.arange(len(order)) + 0.5,
                       [f"{_short(tags.labels[i])} ({tags.clip_scores[i]:.2f})" for i in order])
    ax_tags.invert_yaxis()
    ax_tags.set_ylabel(f"top {len(order)} labels\n({tags.aggregate} score)")
    fig.colorbar(mesh, ax=ax_tags, label=f"window score ({tags.activation})", pad=0.01, fraction=0.04)
    if tags.spectrogram is not None and tags.spectrogram.size:
        draw_spectrogram(fig, ax_spec, tags.spectrogram, tags.spectrogram_hop)
    ax_spec.set_xlim(0.0, tags.duration)
    ax_tags.set_title(title or f"{len(tags.starts)} windows of {tags.ends[0] - tags.starts[0]:.2f} s, "
                               f"{tags.duration:.1f} s recording")
    return _save(fig, path)


def plot_events(frames, events, path: str | Path, top_k: int = 5, title: str | None = None,
                reference=None) -> Path:
    """Frame scores as a heat map (`top_k` rows: labels with events first, then the highest-peaking ones) with
    the detected events outlined in red and, when given, the `reference` (ground-truth) events as white bars along
    the bottom of each row, above the spectrogram; time in seconds. `frames` is a `FrameScores`, `events` and
    `reference` lists of `SoundEvent`."""
    from matplotlib.patches import Rectangle

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    reference = list(reference or [])
    events = list(events)
    unknown = sorted({e.label for e in events + reference} - set(frames.labels))
    if unknown:  # list.index below would only say "'cat' is not in list"
        raise ValueError(f"event label(s) {unknown} are not labels of the frame scores ({len(frames.labels)} labels: "
                         f"{', '.join(frames.labels[:10])}{', ...' if len(frames.labels) > 10 else ''})")
    with_events = list(dict.fromkeys(frames.labels.index(e.label) for e in events + reference))
    by_peak = [int(i) for i in np.argsort(-frames.scores.max(axis=0), kind="stable") if i not in with_events]
    order = (with_events + by_peak)[:top_k]
    edges = np.arange(len(frames.scores) + 1) * frames.hop
    fig, (ax_scores, ax_spec) = _figure([1.0, 1.4], height=2.5 + 0.35 * len(order) + 3.0)
    bounded = frames.activation in ("sigmoid", "softmax")
    mesh = ax_scores.pcolormesh(edges, np.arange(len(order) + 1), frames.scores[:, order].T, cmap="viridis",
                                vmin=0.0 if bounded else None, vmax=1.0 if bounded else None, shading="flat")
    ax_scores.set_yticks(np.arange(len(order)) + 0.5, [_short(frames.labels[i]) for i in order])
    ax_scores.invert_yaxis()
    row_of = {label_index: row for row, label_index in enumerate(order)}
    for event in reference:
        row = row_of.get(frames.labels.index(event.label))
        if row is not None:  # a bar in the row's lower quarter (the y axis is inverted: larger is lower)
            ax_scores.add_patch(Rectangle((event.onset, row + 0.72), event.offset - event.onset, 0.2, color="white",
                                          alpha=0.8, linewidth=0))
    for event in events:
        row = row_of.get(frames.labels.index(event.label))
        if row is not None:
            ax_scores.add_patch(Rectangle((event.onset, row + 0.08), event.offset - event.onset, 0.84, fill=False,
                                          edgecolor="red", linewidth=1.5))
    fig.colorbar(mesh, ax=ax_scores, label=f"frame score ({frames.activation})", pad=0.01, fraction=0.04)
    if frames.spectrogram is not None and frames.spectrogram.size:
        draw_spectrogram(fig, ax_spec, frames.spectrogram, frames.spectrogram_hop)
    ax_spec.set_xlim(0.0, frames.duration)
    shown = f"{len(events)} events (red)" + (", reference (white)" if reference else "")
    ax_scores.set_title(title or f"{shown}, frame scores every {frames.hop * 1000:.0f} ms, "
                                 f"{frames.duration:.1f} s recording")
    return _save(fig, path)


def patch_map_to_pixels(grid_map: np.ndarray, num_mel_bins: int, num_frames: int,
                        patch_size: int | tuple[int, int], frequency_stride: int, time_stride: int) -> np.ndarray:
    """Spread a [f, t] patch map over the [mel bins, frames] it covers (`patch_size`: a square side, or mel bins x
    frames); overlapping patches are averaged and pixels no patch covers (the uncovered edge) are NaN."""
    from .configuration_ast import patch_shape

    patch_f, patch_t = patch_shape(patch_size)
    f, t = grid_map.shape
    total = np.zeros((num_mel_bins, num_frames), np.float64)
    count = np.zeros_like(total)
    for fi in range(f):
        for ti in range(t):
            rows = slice(fi * frequency_stride, fi * frequency_stride + patch_f)
            cols = slice(ti * time_stride, ti * time_stride + patch_t)
            total[rows, cols] += grid_map[fi, ti]
            count[rows, cols] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_explanation(explanation, path: str | Path, title: str | None = None, max_layers: int = 12) -> Path:
    """Write `explanation_figure` as a PNG."""
    return _save(explanation_figure(explanation, title, max_layers), path)


def explanation_figure(explanation, title: str | None = None, max_layers: int = 12):
    """The attention rollout over the spectrogram (top), the spectrogram alone, and the per-layer cls/distillation
    attention maps on the patch grid (bottom rows), all with mel bins and time in seconds of the recording: from
    `explanation.start`, where the explained segment begins."""
    cfg = explanation.grid_config
    spec = explanation.features.T  # [mel bins, frames]
    mel_bins, frames = spec.shape
    start = explanation.start
    end = start + frames * 0.01
    heat = patch_map_to_pixels(explanation.rollout, mel_bins, frames, *cfg)
    layers = explanation.layer_maps[: max_layers]
    per_row = max(1, min(len(layers), 6))
    layer_rows = -(-len(layers) // per_row) if len(layers) else 0

    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 7 + 1.8 * layer_rows), layout="constrained")
    grid = fig.add_gridspec(2 + layer_rows, per_row, height_ratios=[2.2, 1.6] + [1.0] * layer_rows)
    ax_roll = fig.add_subplot(grid[0, :])
    ax_spec = fig.add_subplot(grid[1, :], sharex=ax_roll)
    draw_spectrogram(fig, ax_roll, spec, 0.01, cmap="gray", colorbar=False, start=start)
    overlay = ax_roll.imshow(heat, origin="lower", aspect="auto", cmap="inferno", alpha=0.6,
                             extent=(start, end, 0, mel_bins), interpolation="nearest")
    fig.colorbar(overlay, ax=ax_roll, label="rollout attention\n(share of patches)", pad=0.01, fraction=0.04)
    top = ", ".join(f"{label} {score:.2f}" for label, score in explanation.top[:3])
    ax_roll.set_title(title or f"attention rollout from the cls/distillation tokens   |   top: {top}")
    draw_spectrogram(fig, ax_spec, spec, 0.01, start=start)
    ax_spec.set_xlim(start, end)
    ax_roll.set_xlabel("")
    real = start + explanation.real_frames * 0.01
    if real < end:  # the clip was padded to the model's input length
        for ax in (ax_roll, ax_spec):
            ax.axvline(real, color="cyan", linestyle="--", linewidth=1.2)
        ax_spec.text(real, mel_bins * 0.95, "  padding", color="cyan", va="top", fontsize=9)
    pixel_maps = [patch_map_to_pixels(m, mel_bins, frames, *cfg) for m in layers]
    vmax = max((float(np.nanmax(p)) for p in pixel_maps), default=1.0)
    layer_axes, image = [], None
    for index, pixels in enumerate(pixel_maps):
        ax = fig.add_subplot(grid[2 + index // per_row, index % per_row])
        image = ax.imshow(pixels, origin="lower", aspect="auto", cmap="inferno", extent=(start, end, 0, mel_bins),
                          interpolation="nearest", vmin=0.0, vmax=vmax)
        ax.set_title(f"layer {index + 1}: cls/dist attention", fontsize=9)
        ax.tick_params(labelsize=7)
        if index % per_row == 0:
            ax.set_ylabel("mel bin", fontsize=8)
        if index // per_row == layer_rows - 1:
            ax.set_xlabel("time (s)", fontsize=8)
        layer_axes.append(ax)
    if image is not None:
        fig.colorbar(image, ax=layer_axes, label="share of patches", pad=0.01, fraction=0.04)
    return fig


__all__ = ["plot_timeline", "plot_events", "plot_explanation", "explanation_figure", "patch_map_to_pixels",
           "draw_spectrogram"]
