"""Strong labels in training: recordings with timed events, and frame targets at the model's patch-column rate.

* `load_event_dataset(folder, events_tsv)`: every audio file under `folder` with its events from a DCASE TSV
  (`ast_hf.event_tsv`), as a `datasets.Dataset` with an `audio` column (`Audio(decode=False)`, decoded by the
  collator) and an `events` column (a list of `{"onset", "offset", "event_label"}` per recording, seconds).
* `frame_targets(events, label2id, num_columns, column_seconds)`: 0/1 targets [columns, labels]. Column k stands
  for [k * s, (k + 1) * s) with s = `time_stride` x 10 ms (the frame head's row k); it is on for an event when
  the event covers the column's centre (k + 1/2) s, so decoding a run of columns a..b back to [a s, (b + 1) s)
  is off by at most s / 2 at each end. An event too short to cover any centre marks the column holding its
  midpoint, so no event is lost. Events past the last column (a cut recording) are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..batch_inference import AUDIO_EXTENSIONS
from ..event_tsv import EventTableError, SoundEvent, read_event_tsv
from ..long_audio import FRAME_SHIFT_SECONDS


def column_seconds(time_stride: int) -> float:
    """Seconds per time column of the patch grid: `time_stride` feature frames of 10 ms."""
    return time_stride * FRAME_SHIFT_SECONDS


def event_columns(onset: float, offset: float, num_columns: int, seconds: float) -> range:
    """The columns (of `num_columns`, `seconds` each) an event from `onset` to `offset` seconds marks."""
    eps = 1e-9  # a centre exactly on a boundary belongs to the event starting there, whatever the float rounding
    start = math.ceil(onset / seconds - 0.5 - eps)
    stop = math.ceil(offset / seconds - 0.5 - eps)
    if stop <= start:  # shorter than a column around no centre: the column holding its midpoint
        start = int((onset + offset) / 2 / seconds)
        stop = start + 1
    return range(max(0, start), min(num_columns, stop))


def frame_targets(events: Sequence[Mapping | SoundEvent], label2id: Mapping[str, int], num_columns: int,
                  seconds: float, num_labels: int | None = None) -> torch.Tensor:
    """0/1 frame targets [num_columns, num_labels] (float32) of one recording's events.

    Args:
        events: `SoundEvent`s or `{"onset", "offset", "event_label"}` mappings, seconds.
        label2id: event label -> column of the targets; an unknown label raises `ValueError`.
        num_columns: time columns of the model's patch grid for this input length.
        seconds: seconds per column (`column_seconds(time_stride)`).
        num_labels: width of the targets (default: len(label2id)).

    Raises:
        ValueError: an event label outside `label2id`, or times that are not finite numbers or end before they
            begin (a swapped onset and offset would otherwise mark one column between them, silently).
    """
    targets = torch.zeros(num_columns, len(label2id) if num_labels is None else num_labels)
    for event in events:
        onset, offset, label = ((event.onset, event.offset, event.label) if isinstance(event, SoundEvent)
                                else (event["onset"], event["offset"], event["event_label"]))
        if label not in label2id:
            raise ValueError(f"event label {label!r} is not in the label map ({', '.join(label2id)})")
        try:
            start, end = float(onset), float(offset)
        except (TypeError, ValueError):
            start = end = math.nan
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise ValueError(f"event {label!r} with onset {onset!r} and offset {offset!r}: onset and offset must be "
                             f"finite numbers of seconds with onset <= offset")
        targets[event_columns(start, end, num_columns, seconds), int(label2id[label])] = 1.0
    return targets


def load_event_dataset(folder: str | Path, events_tsv: str | Path, labels: Sequence[str] | None = None,
                       verify: bool = True):
    """Every audio file under `folder` with its events from `events_tsv` (DCASE format), for `ASTAudioCollator(
    events_column="events")`.

    A file the TSV does not name has no events; a name in the TSV without a file under `folder` (names are paths
    relative to it, e.g. `scene_0001.wav`) raises `EventTableError`, as do malformed rows and labels outside
    `labels` (see `ast_hf.event_tsv.read_event_tsv`). `verify` reads every file's header first
    (`verify_audio`), so an unreadable file is named before training starts.

    Returns:
        `datasets.Dataset` with columns `audio` ({"path", "bytes"}) and `events` (lists of {"onset", "offset",
        "event_label"}), sorted by file name.
    """
    import datasets

    from .data import check_not_empty, verify_audio

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such audio folder: {folder}")
    table = read_event_tsv(events_tsv, labels)
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()}
    absent = sorted(set(table) - set(files))
    if absent:
        raise EventTableError(f"{events_tsv} names {len(absent)} file(s) not under {folder}: "
                              f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}")
    rows = {"audio": [str(path) for path in files.values()],
            "events": [[{"onset": e.onset, "offset": e.offset, "event_label": e.label} for e in table.get(name, [])]
                       for name in files]}
    features = datasets.Features({"audio": datasets.Audio(decode=False),
                                  "events": [{"onset": datasets.Value("float64"), "offset": datasets.Value("float64"),
                                              "event_label": datasets.Value("string")}]})
    dataset = datasets.Dataset.from_dict(rows, features=features)
    check_not_empty(dataset, folder.name)
    return verify_audio(dataset) if verify else dataset


__all__ = ["column_seconds", "event_columns", "frame_targets", "load_event_dataset"]
