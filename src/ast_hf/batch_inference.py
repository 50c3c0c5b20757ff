"""Tagging archives of many files: DataLoader workers decode and featurise, the model scores batches of windows,
`torchrun` / `accelerate launch` processes share the files, and the results merge into one JSONL or CSV file.

* Every file is tagged exactly like `tag_long_audio` does it (windows of `window` s every `hop` s, clip-level
  mean or max), so nothing is cut: a long file is scored over its whole length.
* Workers (`num_workers`) stream their files' windows (decoding in blocks, Kaldi fbank) and hand batches of up to
  `batch_size` windows, from one or several files, to the process that owns the model.
* Under `torchrun --nproc_per_node=N` or `accelerate launch` (RANK / WORLD_SIZE / LOCAL_RANK set), process r
  takes files r, r + N, ... and runs on `cuda:LOCAL_RANK` when there is a GPU. Every process appends its
  results, one JSON line per file, to `OUTPUT.part-r.jsonl`; when all are done, rank 0 merges the parts and
  any earlier output into OUTPUT (written atomically) and deletes the parts. The output folder must be
  visible to every process (one machine, or a shared file system).
* Resumable: files already in OUTPUT or in a part file are skipped, so an interrupted run (Ctrl-C, a killed
  job) continues where it stopped when started again with the same arguments.
* A file that cannot be read (missing, corrupt, empty, shorter than an explicit window) is reported on stderr
  and in `OUTPUT.errors.jsonl`, the rest are processed, and the run ends with a non-zero exit code. Failed
  files are tried again by the next run.
"""

from __future__ import annotations

import csv
import datetime
import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .atomic_io import atomic_path
from .audio_io import AudioStream
from .inference import apply_activation, featurize, label_names, resolve_activation, run_model, select_top
from .long_audio import aggregate_scores, iter_windows, window_samples

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".au",
                    ".wma", ".webm", ".mp4", ".mkv", ".caf", ".w64"}
LIST_EXTENSIONS = {".txt", ".lst", ".list"}
CSV_FIELDS = ["path", "duration", "windows", "rank", "label", "score"]
NO_INPUTS = "no input files: give audio files, folders holding audio, or .txt lists of paths"


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


def collect_inputs(items: Iterable[str | Path] | str | Path) -> list[str]:
    """Expand folders (audio files below them, recursively, sorted; macOS's "._*" metadata files left out) and
    list files (.txt / .lst / .list: one path per line, `#` comments, relative paths taken from the list's folder);
    keep other paths as given. Duplicates are dropped, the first occurrence kept. A single path (str or Path) is
    one item."""
    if isinstance(items, (str, Path)):
        # a str is an iterable of characters: "a.wav" would give "a", ".", ... and "." every audio file here
        items = [items]
    paths: list[str] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            # "._name.wav" files are macOS's AppleDouble metadata, not audio (copied along onto other disks)
            paths += sorted(str(p) for p in item.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
                            and not p.name.startswith("._") and p.is_file())
        elif item.suffix.lower() in LIST_EXTENSIONS and item.is_file():
            # utf-8-sig: a list saved with a byte-order mark (Windows editors) would glue it to the first path
            for line in item.read_text(encoding="utf-8-sig").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line).expanduser()  # "~/x.wav" is in the home folder, not beside the list
                    paths.append(str(entry if entry.is_absolute() else item.parent / entry))
        else:
            paths.append(str(item))
    return list(dict.fromkeys(paths))


# --------------------------------------------------------------------------------------------------------------
# Workers: files -> batches of featurised windows
# --------------------------------------------------------------------------------------------------------------


class WindowBatches(IterableDataset):
    """Yields dicts with `input_values` [n, frames, mel bins] (or None), `attention_mask` (or None), `owners` [n]
    (index of the file each window belongs to) and `notes`: files finished (`index`, `windows`, `duration` in s)
    or failed (`index`, `error`). A file's note comes with or after the batch holding its last window.
    A file whose windows cannot be featurised fails alone: its windows are dropped, the rest of the batch is
    scored. Each DataLoader worker takes every `num_workers`-th file."""

    def __init__(self, paths: list[str], indices: list[int], feature_extractor, window: int, hop: int,
                 allow_shorter: bool, min_frames: int, batch_size: int):
        self.paths, self.indices = paths, indices
        self.feature_extractor = feature_extractor
        self.window, self.hop, self.allow_shorter = window, hop, allow_shorter
        self.min_frames, self.batch_size = min_frames, batch_size

    def _featurize(self, pending: list) -> tuple[torch.Tensor, torch.Tensor | None]:
        return featurize(self.feature_extractor, [clip for _, clip in pending], self.min_frames)

    def _emit(self, pending: list, notes: list, failed: dict[int, str]) -> dict:
        """The batch of `pending` windows with `notes`. When featurising it fails, each file's windows are tried
        alone: the files that fail go into `failed` (index -> error), which drops their windows now and later and
        turns their notes into errors."""
        pending = [p for p in pending if p[0] not in failed]
        values = mask = None
        if pending:
            try:
                values, mask = self._featurize(pending)
            except (ValueError, RuntimeError) as batch_error:
                for index in dict.fromkeys(i for i, _ in pending):
                    try:
                        self._featurize([p for p in pending if p[0] == index])
                    except (ValueError, RuntimeError) as error:
                        failed[index] = f"{type(error).__name__}: {error}"
                if all(i not in failed for i, _ in pending):
                    raise batch_error  # not the fault of one file
                pending = [p for p in pending if p[0] not in failed]
                if pending:
                    values, mask = self._featurize(pending)
        notes = [{"index": n["index"], "error": failed[n["index"]]} if n["index"] in failed and "error" not in n
                 else n for n in notes]
        return {"input_values": values, "attention_mask": mask,
                "owners": torch.tensor([index for index, _ in pending], dtype=torch.long), "notes": notes}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.indices if info is None else self.indices[info.id::info.num_workers]
        rate = self.feature_extractor.sampling_rate
        pending: list[tuple[int, np.ndarray]] = []
        notes: list[dict] = []
        failed: dict[int, str] = {}  # files whose windows could not be featurised
        for index in mine:
            path = self.paths[index]
            count = end = 0
            try:
                stream = AudioStream(path, rate)
                for start, clip in iter_windows(stream, self.window, self.hop, self.allow_shorter, rate, path):
                    pending.append((index, clip))
                    count += 1
                    end = max(end, start + len(clip))
                    if len(pending) == self.batch_size:
                        yield self._emit(pending, notes, failed)
                        pending, notes = [], []
                notes.append({"index": index, "windows": count, "duration": end / rate})
            except (ValueError, OSError, RuntimeError) as error:
                pending = [p for p in pending if p[0] != index]
                notes.append({"index": index, "error": f"{type(error).__name__}: {error}"})
        if pending or notes:
            yield self._emit(pending, notes, failed)


# --------------------------------------------------------------------------------------------------------------
# Output: part files, merge, resume
# --------------------------------------------------------------------------------------------------------------


def part_paths(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f"{glob.escape(output.name)}.part-*.jsonl"))


def errors_path(output: Path) -> Path:
    return output.with_name(output.name + ".errors.jsonl")


def _read_jsonl(path: Path, strict: bool = False) -> Iterator[dict]:
    """The records of a JSONL file. A line that is no record is skipped (a part file's line cut by an
    interruption), or with `strict` (OUTPUT, written whole) raises a `ValueError` naming it."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and "path" in record:
                yield record
            elif strict and line.strip():
                raise ValueError(f"line {number} is not a record {{\"path\", ...}}")


def _read_csv(path: Path) -> Iterator[dict]:
    records: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is not None and not set(CSV_FIELDS) <= set(reader.fieldnames):
            raise ValueError(f"its header is {','.join(reader.fieldnames)}, not {','.join(CSV_FIELDS)}")
        for row in reader:
            try:
                record = records.setdefault(row["path"], {"path": row["path"], "duration": float(row["duration"]),
                                                          "windows": int(row["windows"]), "labels": [], "scores": []})
                if row["label"]:
                    record["labels"].append(row["label"])
                    record["scores"].append(float(row["score"]))
            except (TypeError, ValueError):  # TypeError: a short row's missing cells are None
                raise ValueError(f"line {reader.line_num} is not a row {','.join(CSV_FIELDS)}") from None
    yield from records.values()


def read_results(output: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(successes, failures) by path from OUTPUT and its part files; a later success wins over a failure.

    Raises:
        ValueError: OUTPUT exists but is no results file of `predict_files` (merging would replace it, and every
            line that is not a record would be lost).
    """
    sources = []
    if output.is_file():
        try:
            sources.append(list(_read_csv(output) if output.suffix.lower() == ".csv"
                                else _read_jsonl(output, strict=True)))
        except ValueError as error:  # also a UnicodeDecodeError: not a text file
            raise ValueError(f"{output} exists but is not a results file of ast-hf predict ({error}); the merged "
                             f"results would replace it: choose another output file or move it away") from None
    sources += [_read_jsonl(p) for p in part_paths(output)]
    done: dict[str, dict] = {}
    failed: dict[str, dict] = {}
    for source in sources:
        for record in source:
            if "error" in record:
                failed[record["path"]] = record
            else:
                done.setdefault(record["path"], record)
    return done, {p: r for p, r in failed.items() if p not in done}


def _end_cut_line(part: Path) -> None:
    """End a line left cut by an interruption (no final newline) in `part`, so the records appended next start on
    a line of their own; the cut record is then skipped when read, and its file scored again."""
    if part.is_file() and part.stat().st_size:
        with open(part, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def write_results(output: Path, records: list[dict]) -> None:
    """Write the merged records to OUTPUT (.csv: one row per label; else JSONL), atomically."""
    with atomic_path(output) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        if output.suffix.lower() == ".csv":
            writer = csv.writer(f)
            writer.writerow(CSV_FIELDS)
            for r in records:
                rows = list(zip(r["labels"], r["scores"])) or [("", "")]
                for rank, (label, score) in enumerate(rows, 1):
                    writer.writerow([r["path"], r["duration"], r["windows"], rank if label else "", label, score])
        else:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def merge_results(output: Path, order: list[str]) -> dict[str, dict]:
    """Merge OUTPUT and its parts into OUTPUT (input order first, earlier extra paths after), write or remove
    the errors file, delete the parts; returns the failures among `order`."""
    done, failed = read_results(output)
    position = {p: i for i, p in enumerate(order)}
    records = sorted(done.values(), key=lambda r: (position.get(r["path"], len(order)), r["path"]))
    write_results(output, records)
    failures = {p: failed[p] for p in order if p in failed}
    if failures:
        with atomic_path(errors_path(output)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for record in failures.values():
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif errors_path(output).exists():
        errors_path(output).unlink()
    for part in part_paths(output):
        part.unlink()
    return failures


# --------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Distributed:
    """This process's place among the `torchrun` / `accelerate launch` processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_group: bool = False

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        me = cls(rank, world, local)
        if world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if "MASTER_ADDR" not in os.environ:
                    raise ValueError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun or "
                                     "accelerate launch")
                # gloo: only CPU barriers are needed, whatever the device the model runs on.
                dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))
                me.started_group = True
        return me

    def device(self) -> torch.device:
        return torch.device(f"cuda:{self.local_rank}") if torch.cuda.is_available() else torch.device("cpu")

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def max(self, value: int) -> int:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value])
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def close(self) -> None:
        if self.started_group:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass
class BatchSummary:
    """What one process did: files scored now, skipped (already done), failed (path -> error), and the output."""

    output: Path
    scored: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    any_failed: bool = False  # in any process

    @property
    def exit_code(self) -> int:
        return 1 if self.any_failed else 0


def _record(path: str, note: dict, scores: np.ndarray, labels: list[str], aggregate: str, top_k: int | None,
            threshold: float | None) -> dict:
    top = select_top(aggregate_scores(scores, aggregate), labels, top_k, threshold)
    return {"path": path, "duration": round(note["duration"], 4), "windows": note["windows"],
            "labels": [label for label, _ in top], "scores": [round(score, 6) for _, score in top]}


def predict_files(
    inputs: Iterable[str | Path] | str | Path,
    model,
    feature_extractor,
    output: str | Path,
    window: float | None = None,
    hop: float | None = None,
    aggregate: str = "mean",
    top_k: int | None = 5,
    threshold: float | None = None,
    activation: str = "auto",
    batch_size: int = 8,
    num_workers: int = 2,
    progress: bool = True,
    distributed: Distributed | None = None,
    device: str | torch.device | None = None,
) -> BatchSummary:
    """Tag many files into one JSONL (default) or CSV (`output` ending in .csv) file.

    Args:
        inputs: files, folders, list files (see `collect_inputs`), or one of them as a str or Path.
        model, feature_extractor: an `ASTForAudioClassification` (or ensemble) and its feature extractor; the model
            is moved to this process's device.
        output: the merged result file. JSONL rows: {"path", "duration" (s), "windows", "labels", "scores"}; CSV
            rows: path, duration, windows, rank, label, score.
        window, hop, aggregate, activation: as in `tag_long_audio`.
        top_k, threshold: which clip-level labels to keep per file (top_k None or 0: all).
        batch_size: windows per model call. num_workers: DataLoader worker processes decoding files.
        distributed: the process group (default: from RANK / WORLD_SIZE, started if needed).
        device: where the model runs (default: `cuda:LOCAL_RANK` when there is a GPU, else the CPU); a plain
            "cuda" among several processes is each one's `cuda:LOCAL_RANK`.

    Returns:
        This process's `BatchSummary`; in rank 0 `failed` holds every process's failures.
    """
    aggregate_scores(np.zeros((1, 1)), aggregate)
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name ending in .jsonl or .csv")
    if output.suffix.lower() not in (".jsonl", ".csv"):  # results.json would hold JSON lines, not one JSON value
        raise ValueError(f"--output {output}: give a file name ending in .jsonl (JSON lines) or .csv")
    paths = collect_inputs(inputs)
    if not paths:
        raise ValueError(NO_INPUTS)
    dist = distributed or Distributed.from_env()
    config = model.config
    activation = resolve_activation(config, activation)
    labels = label_names(config)
    rate = feature_extractor.sampling_rate
    win, step, allow_shorter = window_samples(window, hop, rate, config.max_length)

    done, _ = read_results(output)
    mine = [i for i in range(dist.rank, len(paths), dist.world_size)]
    todo = [i for i in mine if paths[i] not in done]
    summary = BatchSummary(output=output, skipped=len(mine) - len(todo))

    if device is None:
        device = dist.device()
    else:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and dist.world_size > 1:
            device = torch.device(f"cuda:{dist.local_rank}")  # not every process on the first GPU
    model.to(device)
    dataset = WindowBatches(paths, todo, feature_extractor, win, step, allow_shorter, config.max_length, batch_size)
    workers = min(num_workers, len(todo))
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None)
    part = output.with_name(f"{output.name}.part-{dist.rank}.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    pending: dict[int, list[np.ndarray]] = {}

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="file", desc=f"rank {dist.rank}" if dist.world_size > 1 else "files",
               disable=not progress, position=dist.rank if dist.world_size > 1 else None)
    _end_cut_line(part)
    try:
        with open(part, "a", encoding="utf-8") as sink:
            for item in (loader if todo else []):
                if item["input_values"] is not None:
                    logits = run_model(model, item["input_values"], item["attention_mask"]).logits
                    scores = apply_activation(logits, activation)
                    for owner, row in zip(item["owners"].tolist(), scores):
                        pending.setdefault(owner, []).append(row)
                for note in item["notes"]:
                    path = paths[note["index"]]
                    windows = pending.pop(note["index"], [])
                    if "error" in note:
                        record = {"path": path, "error": note["error"]}
                        summary.failed[path] = note["error"]
                        bar.write(f"ast-hf predict: skipped {path}: {note['error']}", file=sys.stderr)
                    else:
                        record = _record(path, note, np.stack(windows), labels, aggregate, top_k, threshold)
                        summary.scored += 1
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                    sink.flush()
                    bar.update(1)
    finally:
        bar.close()
    dist.barrier()  # every part is complete
    if dist.rank == 0:
        failures = merge_results(output, paths)
        summary.failed = {p: r["error"] for p, r in failures.items()}
    # No process may leave (and fail the launcher) before the merge is written.
    summary.any_failed = bool(dist.max(int(bool(summary.failed))))
    if distributed is None:
        dist.close()
    return summary


__all__ = ["predict_files", "collect_inputs", "read_results", "merge_results", "BatchSummary", "Distributed",
           "WindowBatches"]
