"""The sound event type and its file format, DCASE TSV: `filename<TAB>onset<TAB>offset<TAB>event_label`, seconds.

Both the training side (strong labels) and the inference side (`ast_hf.sound_events` post-processing, `ast-hf
detect`, live tagging) use this one `SoundEvent` and this one reader/writer; post-processing lives apart so that
reading labels for training does not pull in detection code.

The first line is the header `filename onset offset event_label` (tab-separated). A row holding only a file name
(or a name and three empty fields) lists a file without events, as DCASE ground truth does. Reading checks every
row and raises `EventTableError` (a `ValueError`) naming the file and the 1-based line: a wrong number of fields,
times that are not finite numbers, negative times, onset >= offset, labels outside the given label set (a UTF-8
byte-order mark, as spreadsheet programs write, is skipped). Writing refuses, before anything is written, an event
the reader would refuse (and names or labels holding tabs or line breaks, which would shift the columns), so what
is written reads back; it is atomic: the file appears complete or not at all.
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
    lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: skip the BOM spreadsheets put first
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


def _field(text: str, what: str, where: str) -> str:
    """`text` if the reader gets it back in its own column: not blank, no tab, no line break (`splitlines`')."""
    if not text.strip() or any(c in text for c in "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"):
        raise ValueError(f"{where}: the {what} {text!r} cannot be written as a TSV field (empty, or a tab or line "
                         f"break inside)")
    return text


def _times(event: SoundEvent, where: str) -> tuple[str, str]:
    """Onset and offset as written: to the millisecond, or to the microsecond for an event shorter than that
    (a live window's last step can be one sample), whose millisecond times would be equal."""
    onset, offset = event.onset, event.offset
    if not (math.isfinite(onset) and math.isfinite(offset) and 0 <= onset < offset):
        raise ValueError(f"{where}: {event} needs finite times with 0 <= onset < offset (seconds)")
    for digits in (3, 6):
        text = f"{onset:.{digits}f}", f"{offset:.{digits}f}"
        if float(text[0]) < float(text[1]):
            return text
    raise ValueError(f"{where}: {event} is shorter than a microsecond")


def write_event_tsv(path: str | Path, table: Mapping[str, Sequence[SoundEvent]]) -> Path:
    """Write {file name: events} as a DCASE TSV, atomically (complete or absent): the header, then one row per
    event (times to the millisecond; to the microsecond for an event shorter than 1 ms) under its key's file
    name, a file without events as a name-only row. Returns the path.

    Raises:
        ValueError: a row `read_event_tsv` would refuse (naming the file name and event), before writing anything.
    """
    rows = ["\t".join(HEADER)]
    for name, events in table.items():
        where = f"{path}: file {name!r}"
        _field(name, "file name", where)
        if not events:
            rows.append(name)
        for e in events:
            rows.append("\t".join([name, *_times(e, where), _field(e.label, "event label", f"{where}, {e}")]))
    write_text_atomic(path, "\n".join(rows) + "\n")
    return Path(path)


__all__ = ["SoundEvent", "EventTableError", "read_event_tsv", "write_event_tsv", "HEADER"]
