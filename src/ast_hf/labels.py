"""Label tables and input statistics of the datasets the released AST checkpoints were trained on.

The class-index tables (`index,mid,display_name`, row `index` = output unit `index`) ship in
`ast_hf/labels/*.csv`, as published with the authors' recipes. The statistics are those of the authors'
recipes: mean and std of the un-normalised Kaldi log-mel fbank over the training set, used as
`(fbank - mean) / (2 * std)`, and the number of 10 ms frames each recipe pads or cuts to.

This module imports neither torch nor transformers, so it is cheap to import for the statistics alone.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class DatasetInfo:
    """What a recipe's checkpoint needs to be used as it was trained.

    Attributes:
        name: short key ("audioset", "esc50", "speechcommands").
        title: human-readable name.
        num_labels: classes in the label table.
        label_file: CSV file name inside `ast_hf/labels/`.
        mean, std: statistics of the un-normalised log-mel fbank (log energy, natural log).
        max_length: frames (10 ms each) the recipe pads or cuts every clip to.
        problem_type: `transformers` problem type; AudioSet is multi-label (sigmoid scores).
        metric: the score the authors report for it ("mAP" or "accuracy").
    """

    name: str
    title: str
    num_labels: int
    label_file: str
    mean: float
    std: float
    max_length: int
    problem_type: str
    metric: str


DATASETS: dict[str, DatasetInfo] = {
    "audioset": DatasetInfo("audioset", "AudioSet", 527, "class_labels_indices.csv", -4.2677393, 4.5689974,
                            1024, "multi_label_classification", "mAP"),
    "esc50": DatasetInfo("esc50", "ESC-50", 50, "esc_class_labels_indices.csv", -6.6268077, 5.358466,
                         512, "single_label_classification", "accuracy"),
    "speechcommands": DatasetInfo("speechcommands", "Speech Commands V2", 35,
                                  "speechcommands_class_labels_indices.csv", -6.845978, 5.5654526, 128,
                                  "single_label_classification", "accuracy"),
}


def dataset_key(name: str) -> str:
    """The key a dataset or recipe name is looked up by: lower case, "-" and "_" dropped ("ESC-50" -> "esc50")."""
    return name.lower().replace("-", "").replace("_", "")


def generic_label(index: int) -> str:
    """The name of output unit `index` when a model has no label names: "LABEL_{index}", as `transformers` writes."""
    return f"LABEL_{index}"


def generic_id2label(num_labels: int) -> dict[int, str]:
    """{0: "LABEL_0", ..., num_labels - 1: "LABEL_{num_labels - 1}"}."""
    return {i: generic_label(i) for i in range(num_labels)}


def dataset_for_name(name: str) -> DatasetInfo | None:
    """The `DatasetInfo` called `name` (compared by `dataset_key`: "ESC-50" is "esc50"), or None."""
    return DATASETS.get(dataset_key(name))


def dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of "audioset", "esc50" or "speechcommands"; ValueError for other names."""
    info = dataset_for_name(name)
    if info is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return info


def dataset_for_num_labels(num_labels: int) -> DatasetInfo | None:
    """The dataset whose label table has `num_labels` classes (527, 50, 35), or None."""
    return next((info for info in DATASETS.values() if info.num_labels == num_labels), None)


def _read_csv(rows, source: str) -> dict[int, str]:
    reader = csv.DictReader(rows)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    name_field = next((f for f in ("display_name", "name", "label") if f in fields), None)
    if "index" not in fields or name_field is None:
        raise ValueError(f"{source}: expected a CSV header with an `index` column and a `display_name` (or `name`, "
                         f"`label`) column, like `index,mid,display_name`; got {fields}")
    id2label: dict[int, str] = {}
    for line, row in enumerate(reader, start=2):
        if None in row:  # DictReader puts the fields past the header's under the key None
            raise ValueError(f"{source}, line {line}: {len(row[None])} field(s) more than the header {fields}; "
                             f"quote names that contain commas, e.g. 1,/m/2,\"Bird vocalization, bird call\"")
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        try:
            index = int(row["index"])
        except ValueError:
            raise ValueError(f"{source}, line {line}: index {row['index']!r} is not an integer") from None
        if index < 0:  # no output unit has it (and the gap check below would name no missing index)
            raise ValueError(f"{source}, line {line}: index {index} is negative; indices are output units 0..N-1")
        if index in id2label:
            raise ValueError(f"{source}, line {line}: index {index} appears twice")
        if not row[name_field]:
            raise ValueError(f"{source}, line {line}: empty {name_field} for index {index}")
        id2label[index] = row[name_field]
    if not id2label:
        raise ValueError(f"{source}: no label rows")
    if sorted(id2label) != list(range(len(id2label))):
        missing = sorted(set(range(max(id2label) + 1)) - set(id2label))
        raise ValueError(f"{source}: indices must run 0..{len(id2label) - 1} without gaps; missing {missing[:10]}")
    return dict(sorted(id2label.items()))


def load_label_table(name_or_path: str | Path) -> dict[int, str]:
    """id2label {output unit: display name} of a dataset ("audioset", "esc50", "speechcommands") or a CSV file.

    A CSV file needs a header with `index` and `display_name` (or `name` / `label`) columns; the indices must
    run 0..N-1. Raises FileNotFoundError for a missing file and ValueError for a malformed one.
    """
    text = str(name_or_path)
    info = dataset_for_name(text)
    if info is not None and not Path(text).suffix:
        with resources.files("ast_hf").joinpath("labels", info.label_file).open(encoding="utf-8", newline="") as rows:
            return _read_csv(rows, info.label_file)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"label table {text!r} is neither a file nor one of {', '.join(DATASETS)}")
    with path.open(encoding="utf-8-sig", newline="") as rows:
        return _read_csv(rows, str(path))


__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "dataset_for_name", "dataset_for_num_labels", "dataset_key",
           "generic_label", "generic_id2label", "load_label_table"]
