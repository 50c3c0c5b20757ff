"""The sound event type and its file format, DCASE TSV: `filename<TAB>onset<TAB>offset<TAB>event_label`, seconds.

Both the training side (strong labels) and the inference side (`ast_hf.sound_events` post-processing, `ast-hf
detect`, live tagging) use this one `SoundEvent` and this one reader/writer; post-processing lives apart so that
reading labels for training does not pull in detection code.

The first line is the header `filename onset offset event_label` (tab-separated). A row holding only a file name
(or a name and three empty fields) lists a file without events, as DCASE ground truth does. Reading checks every
row and raises `EventTableError` (a `ValueError`) naming the file and the 1-based line: a wrong number of fields,
times that are not finite numbers, negative times, onset >= offset, labels outside the given label set. Writing
is atomic: the file appears complete or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .atomic_io import write_text_atomic

HEADER = ("filename", "onset", "offset", "event_label")


class EventTableError(ValueError):
    """A malformed event TSV; the message names the file and line."""


@dataclass(frozen=True)
class SoundEvent:
    """One occurrence of a sound: `label` from `onset` to `offset` seconds (onset < offset) in the recording
    `filename` (a file name as the TSV writes it; "" when not known yet)."""

    onset: float
    offset: float
    label: str
    filename: str = ""


def _time(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise EventTableError(f"{where}: {what} {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise EventTableError(f"{where}: {what} {text!r} must be a finite time >= 0 seconds")
    return value


def read_event_tsv(path: str | Path, labels: Iterable[str] | None = None) -> dict[str, list[SoundEvent]]:
    """Read a DCASE event TSV into {file name: events sorted by onset} (files without events map to []); each
    event's `filename` is its key.

    Args:
        path: the TSV file.
        labels: the allowed event labels; None accepts any.

    Raises:
        FileNotFoundError: no such file. EventTableError: the first problem found, naming `path` and the line.
    """
    path = Path(path)
    known = None if labels is None else set(labels)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].strip().split("\t")) != HEADER:
        raise EventTableError(f"{path}, line 1: expected the header {chr(9).join(HEADER)!r} (tab-separated), got "
                              f"{(lines[0] if lines else '')!r}")
    table: dict[str, list[SoundEvent]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) == 1 or (len(fields) == 4 and not any(f.strip() for f in fields[1:])):
            table.setdefault(fields[0].strip(), [])  # a file without events
            continue
        if len(fields) != 4:
            raise EventTableError(f"{where}: expected 4 tab-separated fields (filename, onset, offset, event_label), "
                                  f"got {len(fields)}: {line!r}")
        name, onset_text, offset_text, label = (f.strip() for f in fields)
        if not name:
            raise EventTableError(f"{where}: the filename is empty")
        onset, offset = _time(onset_text, "onset", where), _time(offset_text, "offset", where)
        if onset >= offset:
            raise EventTableError(f"{where}: onset {onset} s is not before offset {offset} s")
        if not label:
            raise EventTableError(f"{where}: the event_label is empty")
        if known is not None and label not in known:
            raise EventTableError(f"{where}: unknown event label {label!r}; known labels: {', '.join(sorted(known))}")
        table.setdefault(name, []).append(SoundEvent(onset, offset, label, name))
    for events in table.values():
        events.sort(key=lambda e: (e.onset, e.offset, e.label))
    return table


def write_event_tsv(path: str | Path, table: Mapping[str, Sequence[SoundEvent]]) -> Path:
    """Write {file name: events} as a DCASE TSV, atomically (complete or absent): the header, then one row per
    event (times to the millisecond) under its key's file name, a file without events as a name-only row.
    Returns the path."""
    rows = ["\t".join(HEADER)]
    for name, events in table.items():
        if not events:
            rows.append(name)
        rows += [f"{name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}" for e in events]
    write_text_atomic(path, "\n".join(rows) + "\n")
    return Path(path)


__all__ = ["SoundEvent", "EventTableError", "read_event_tsv", "write_event_tsv", "HEADER"]
