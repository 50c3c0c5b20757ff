"""The authors' fine-tuning recipes (YuanGongND/ast `egs/*/run*.sh`, YuanGongND/ssast `src/finetune/*/run*.sh`) as
data, for `examples/finetune.py`.

| recipe | frames | lr | epochs | batch | freqm | timem | mixup | noise | loss | decay (start, every, factor) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| esc50 | 512 | 1e-5 | 25 | 48 | 24 | 96 | 0 | no | CE | 5, 1, 0.85 |
| speechcommands | 128 | 2.5e-4 | 30 | 128 | 48 | 48 | 0.6 | yes | BCE | 5, 1, 0.85 |
| audioset | 1024 | 1e-5 | 5 | 12 | 48 | 192 | 0.5 | no | BCE | 2, 1, 0.5 |
| ssast-speechcommands | 128 | 2.5e-4 | 30 | 128 | 48 | 48 | 0.6 | yes | BCE | 5, 1, 0.85 |
| ssast-esc50 | 512 | 1e-4 | 50 | 48 | 24 | 96 | 0 | yes | CE | 6, 1, 0.85 |

Extras: esc50 and ssast-esc50 are 5-fold cross-validated; audioset uses balanced sampling, 1000 warm-up steps and
weight averaging of epochs 1-5; ssast-speechcommands is the Frame model (128x2) at strides 128/1 with mean pooling
and 1000 warm-up steps; ssast-esc50 the Patch model (16x16) at strides 10/10 with mean pooling.

ESC-50 and AudioSet start from the AudioSet-pretrained model (ESC-50: `audioset_pretrain=True`, lr 1e-5);
the authors' Speech Commands run starts from ImageNet (DeiT) weights: `examples/finetune.py --imagenet DEIT`
(`ASTForAudioClassification.from_imagenet`), or from the AudioSet model (the recipe's lr is kept). The SSAST
recipes start from a converted SSAST self-supervised checkpoint (`ast-hf convert SSAST-Base-Frame-400.pth ...`;
`SSAST-Base-Patch-400.pth` for ESC-50) and set the fine-tuning strides and pooling on load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..labels import DATASETS, dataset_key


@dataclass(frozen=True)
class Recipe:
    """One data set's training hyper-parameters and where its data lives on the Hub."""

    name: str
    max_length: int
    learning_rate: float
    epochs: int
    batch_size: int
    freqm: int
    timem: int
    mixup: float
    noise: bool
    loss: str  # "ce" (softmax cross-entropy) or "bce" (sigmoid binary cross-entropy)
    multi_label: bool
    lr_decay_start: int
    lr_decay_every: int
    lr_decay_factor: float
    warmup_steps: int = 0
    balanced_sampling: bool = False
    weight_averaging: tuple[int, int] | None = None
    metric: str = "accuracy"
    mean: float = 0.0
    std: float = 1.0
    hub_dataset: str = ""
    hub_config: str | None = None
    hub_label_column: str = "label"
    hub_train_split: str = "train"
    hub_eval_split: str = "test"
    fold_column: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    dataset: str | None = None  # the label table and statistics (None: `name`)
    # SSAST fine-tuning from a pretraining backbone: the strides and pooling to load it with (None: the model's)
    frequency_stride: int | None = None
    time_stride: int | None = None
    pooling: str | None = None

    @property
    def problem_type(self) -> str:
        return "multi_label_classification" if self.loss == "bce" else "single_label_classification"

    @property
    def dataset_name(self) -> str:
        """The data set whose label table and statistics the recipe uses ("esc50", "speechcommands", ...)."""
        return self.dataset or self.name


def _stats(name: str) -> dict:
    info = DATASETS[name]
    return {"mean": info.mean, "std": info.std}


RECIPES: dict[str, Recipe] = {
    "esc50": Recipe(
        "esc50", max_length=512, learning_rate=1e-5, epochs=25, batch_size=48, freqm=24, timem=96, mixup=0.0,
        noise=False, loss="ce", multi_label=False, lr_decay_start=5, lr_decay_every=1, lr_decay_factor=0.85,
        metric="accuracy", **_stats("esc50"), hub_dataset="ashraq/esc50", hub_label_column="category",
        hub_eval_split="", fold_column="fold",
        notes=("5-fold cross-validation over the `fold` column; the authors report the mean accuracy (95.6%)",)),
    "speechcommands": Recipe(
        "speechcommands", max_length=128, learning_rate=2.5e-4, epochs=30, batch_size=128, freqm=48, timem=48,
        mixup=0.6, noise=True, loss="bce", multi_label=False, lr_decay_start=5, lr_decay_every=1,
        lr_decay_factor=0.85, metric="accuracy", **_stats("speechcommands"),
        hub_dataset="google/speech_commands", hub_config="v0.02", hub_eval_split="validation",
        notes=("the authors pick the best epoch on validation and report test accuracy (98.1%)",)),
    "audioset": Recipe(
        "audioset", max_length=1024, learning_rate=1e-5, epochs=5, batch_size=12, freqm=48, timem=192, mixup=0.5,
        noise=False, loss="bce", multi_label=True, lr_decay_start=2, lr_decay_every=1, lr_decay_factor=0.5,
        warmup_steps=1000, balanced_sampling=True, weight_averaging=(1, 5), metric="mAP", **_stats("audioset"),
        hub_dataset="agkphysics/AudioSet", hub_config="unbalanced", hub_label_column="human_labels",
        notes=("full AudioSet, balanced sampling, weight averaging of epochs 1-5 (0.459 mAP); an ensemble of "
               "such models reaches 0.485",)),
    "ssastspeechcommands": Recipe(
        "ssast-speechcommands", dataset="speechcommands", max_length=128, learning_rate=2.5e-4, epochs=30,
        batch_size=128, freqm=48, timem=48, mixup=0.6, noise=True, loss="bce", multi_label=False, lr_decay_start=5,
        lr_decay_every=1, lr_decay_factor=0.85, warmup_steps=1000, metric="accuracy", **_stats("speechcommands"),
        hub_dataset="google/speech_commands", hub_config="v0.02", hub_eval_split="validation",
        frequency_stride=128, time_stride=1, pooling="mean",
        notes=("from SSAST-Base-Frame-400 (128x2 patches), fine-tuned at strides 128/1 with mean pooling "
               "(ft_avgtok), the authors' run_sc.sh",)),
    "ssastesc50": Recipe(
        "ssast-esc50", dataset="esc50", max_length=512, learning_rate=1e-4, epochs=50, batch_size=48, freqm=24,
        timem=96, mixup=0.0, noise=True, loss="ce", multi_label=False, lr_decay_start=6, lr_decay_every=1,
        lr_decay_factor=0.85, metric="accuracy", **_stats("esc50"), hub_dataset="ashraq/esc50",
        hub_label_column="category", hub_eval_split="", fold_column="fold", frequency_stride=10, time_stride=10,
        pooling="mean",
        notes=("from SSAST-Base-Patch-400 (16x16 patches), fine-tuned at strides 10/10 with mean pooling "
               "(ft_avgtok), 5-fold cross-validation, the authors' run_esc_patch.sh",)),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name` ("esc50", "speechcommands", "audioset", "ssast-speechcommands", "ssast-esc50");
    ValueError for others."""
    key = dataset_key(name)
    if key not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(r.name for r in RECIPES.values())}")
    return RECIPES[key]


__all__ = ["Recipe", "RECIPES", "get_recipe"]
