"""`ASTAudioCollator`: a batch of data-set examples -> model inputs, augmented only while training.

Per batch: decode and resample every clip to 16 kHz (`decode_audio`), mixup on the waveforms, one batched
`ASTFeatureExtractor` call (the Kaldi filterbank of the whole batch in one go, on `device`), SpecAugment,
then the Speech Commands noise and time shift. With strong labels (`events_column`) it also makes frame targets
[batch, time columns, labels] at the model's patch-column rate (`strong_labels.frame_targets`), mixed like the
clip targets. Features are computed in the collator rather than once with
`datasets.map` because mixup draws new pairs every epoch and a 10 s AudioSet clip's features (1024 x 128
float32, 512 kB) take 16 times the room of its 16-bit waveform; the measured cost is in docs/training.md.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..configuration_ast import ASTConfig
from ..feature_extraction_ast import ASTFeatureExtractor
from .augment import feature_noise, mix_targets, mix_waveforms, sample_mixup, spec_augment, time_shift
from .data import CorruptAudioError, audio_name, decode_audio, encoded_source
from .strong_labels import column_seconds, frame_targets

logger = logging.getLogger(__name__)


@dataclass
class ASTAudioCollator:
    """Collate examples `{audio_column: ..., label_column: ...}` into `{"input_values", "labels"}`.

    Args:
        feature_extractor: computes (and normalises) the features; its `sampling_rate` is the target rate.
        num_labels: number of classes.
        label2id: maps string labels to indices (needed when the label column holds strings).
        multi_label: labels are lists of classes (indices or names), comma-separated strings of class names (a
            string that is itself a name of `label2id`, e.g. AudioSet's "Narration, monologue", is that one class),
            or multi-hot rows of `num_labels` 0s and 1s (any float or bool row; an integer row that repeats a 0 or
            1, e.g. [0, 1, 0, 1]); targets are multi-hot. An integer row that reads both ways (e.g. [0, 1] with 2
            classes: classes 0 and 1, or class 1) raises a `ValueError`: give it as floats or as class names.
        audio_column, label_column: names of the columns.
        max_length: frames every clip is padded or cut to (default: the feature extractor's `max_length`).
        freqm, timem: SpecAugment maximum mask widths in mel bins / frames (training only).
        mixup: probability that a training clip is mixed with a random partner (lambda ~ Beta(alpha, alpha)).
        mixup_alpha: Beta parameter (the authors: 10).
        noise: the Speech Commands feature noise and +-`max_shift`-frame time shift (training only).
        one_hot: return targets [batch, num_labels] floats rather than class indices [batch]; default: when
            `multi_label` or `mixup > 0` (soft targets need it: False with `mixup > 0` raises a `ValueError`).
        skip_corrupt: drop clips that fail to decode (each named in a warning) instead of raising.
        allow_upsampling: accept clips sampled below 16 kHz.
        training: apply the augmentations; `ASTTrainer` hands a `.train()` copy to the training loader and an
            `.eval()` copy to evaluation.
        device: where to compute the features (default CPU; the model moves them itself).
        events_column: a column of strong labels (per clip a list of {"onset", "offset", "event_label"}, seconds;
            `load_event_dataset` makes it). The batch then also holds `frame_targets` [batch, time columns, labels]
            (`strong_labels.frame_targets`), and `labels` are the clip's multi-hot event classes; `label2id` is
            required. Mixup mixes frame targets with the clip's own lambda, and the partner's events stay at their
            times, as its waveform does: the mixed clip is as long as the longer of the two (the shorter one
            zero-padded), so no event of the partner loses its audio. SpecAugment leaves the targets as they are: a
            masked span (< `timem` frames) hides part of a sound, not the sound, and labelling it off would teach
            the model to split events at every dropout. The noise recipe's time shift is refused: it moves sounds by
            up to `max_shift` frames away from their targets.
        model_config: the model's `ASTConfig` (needed with `events_column`): its patch grid gives the number and
            length of the time columns. `ASTTrainer` fills it in from the model.
        clip_labels: with `events_column`, also return the clip's classes as `labels` (the clip head trains beside
            the frame head); False trains the frame head alone (in the events demo the clip loss held the frame
            head back: event F1 0.14 after 800 joint updates, docs/training.md).
        cache_mb: keep the (normalised, un-augmented) features of clips read from files, up to this many MB, and
            reuse them in later epochs instead of decoding and featurising the clip again; the first clips seen
            fill it, none is evicted (under shuffling a cache smaller than the data set serves its share of every
            batch). SpecAugment and the noise recipe still draw anew every time. Needs `mixup=0` (mixup changes
            the waveforms, so the features, every epoch). The `train()` and `eval()` copies share the cache and its
            budget. 0 (default): off.
    """

    feature_extractor: ASTFeatureExtractor
    num_labels: int
    label2id: Mapping[str, int] | None = None
    multi_label: bool = False
    audio_column: str = "audio"
    label_column: str = "label"
    max_length: int | None = None
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    noise: bool = False
    max_shift: int = 10
    one_hot: bool | None = None
    skip_corrupt: bool = False
    allow_upsampling: bool = False
    training: bool = False
    device: str | torch.device | None = None
    events_column: str | None = None
    model_config: ASTConfig | None = None
    clip_labels: bool = True
    cache_mb: float = 0.0

    def __post_init__(self):
        if self.cache_mb < 0:
            raise ValueError(f"cache_mb is a size in MB >= 0, got {self.cache_mb}")
        if self.cache_mb and self.mixup > 0:
            raise ValueError("cache_mb keeps each clip's features for later epochs, but mixup mixes new pairs of "
                             "waveforms every epoch, so there is nothing to keep: use one or the other")
        # path -> features [frames, mel]; shared by the train() and eval() copies (the same clip, the same features)
        self._cache: dict[str, torch.Tensor] = {}
        self._cache_size = {"bytes": 0}  # shared by the copies, as the cache is: one budget
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup is a probability in [0, 1], got {self.mixup}")
        if self.mixup > 0 and self.one_hot is False and self.events_column is None:
            # a mixed clip's target is lam y_i + (1 - lam) y_j: no class index holds it (as integers every mixed
            # clip took its partner's label)
            raise ValueError("mixup > 0 mixes each clip's target with its partner's (soft targets), which class "
                             "indices cannot hold: leave one_hot unset (or True) with mixup, or set mixup=0")
        if self.label2id is not None:
            bad = {k: v for k, v in self.label2id.items() if not 0 <= int(v) < self.num_labels}
            if bad:
                raise ValueError(f"label2id maps {bad} outside [0, {self.num_labels})")
        if self.events_column is not None:
            if self.label2id is None:
                raise ValueError("events_column needs label2id: the map from event labels to target columns")
            if self.noise:
                raise ValueError("noise=True also shifts every clip in time by up to max_shift frames, which moves "
                                 "its sounds away from their frame targets; leave noise off with events_column "
                                 "(mixup and SpecAugment keep targets aligned)")

    # ----------------------------------------------------------------------------------------------------------
    def train(self) -> ASTAudioCollator:
        """A copy that augments (for the training loader)."""
        out = copy.copy(self)
        out.training = True
        return out

    def eval(self) -> ASTAudioCollator:
        """A copy that does not augment (for evaluation and prediction)."""
        out = copy.copy(self)
        out.training = False
        return out

    @property
    def returns_one_hot(self) -> bool:
        if self.events_column is not None:  # a recording holds any number of event classes
            return True
        return self.one_hot if self.one_hot is not None else (self.multi_label or self.mixup > 0)

    # ----------------------------------------------------------------------------------------------------------
    def event_classes(self, events, name: str) -> list[int]:
        """A clip's classes from its strong labels (`events_column`): those of its events, sorted, each once."""
        return sorted({self.label_indices([e["event_label"]], name)[0] for e in events or []})

    def label_indices(self, value, name: str) -> list[int]:
        """One example's label value -> class indices; unknown labels raise a `ValueError` naming `name`."""
        if value is None:
            raise ValueError(f"{name} has no label")
        if isinstance(value, str):
            whole = not self.multi_label or (self.label2id is not None and value in self.label2id)
            parts = [value] if whole else [p.strip() for p in value.split(",")]
        elif isinstance(value, (list, tuple, np.ndarray)):
            parts = list(value)
            if self.multi_label and parts and not any(isinstance(p, str) for p in parts):
                parts = self._numeric_row(value, name)
        else:
            parts = [value]
        if len(parts) != 1 and not self.multi_label:
            raise ValueError(f"{name} has {len(parts)} labels {parts}; pass multi_label=True for multi-label data")
        indices = []
        for part in parts:
            if isinstance(part, str):
                if self.label2id is None:
                    raise ValueError(f"{name} has the string label {part!r} but no label2id was given to map it "
                                     f"to a class index")
                if part not in self.label2id:
                    known = ", ".join(list(self.label2id)[:8])
                    raise ValueError(f"label {part!r} of {name} is not in the label map ({len(self.label2id)} "
                                     f"labels: {known}{', ...' if len(self.label2id) > 8 else ''}); add it to the "
                                     f"label map or fix the data")
                indices.append(int(self.label2id[part]))
            else:
                index = int(part)
                if not 0 <= index < self.num_labels:
                    raise ValueError(f"label index {index} of {name} is outside [0, {self.num_labels}); the model "
                                     f"has {self.num_labels} classes")
                indices.append(index)
        return indices

    def _numeric_row(self, value, name: str) -> list[int]:
        """A multi-label value of numbers: a multi-hot row -> its classes; a list of class indices as it is."""
        row = np.asarray(value)
        form = f"give class indices, class names or a multi-hot row of {self.num_labels} 0s and 1s"
        if row.ndim != 1 or row.dtype.kind not in "iufb":
            raise ValueError(f"{name} has the labels {value!r}; {form}")
        hot = row.size == self.num_labels and bool(np.isin(row, (0, 1)).all())
        if row.dtype.kind in "fb":  # not indices: a multi-hot row
            if not hot:
                raise ValueError(f"{name} has the labels {row.tolist()}, read as a multi-hot row (floats), which "
                                 f"needs {self.num_labels} values, each 0 or 1; {form}")
            return np.flatnonzero(row).tolist()
        values = row.tolist()
        distinct = len(set(values)) == len(values)
        if hot and distinct and all(0 <= x < self.num_labels for x in values):
            raise ValueError(f"{name} has the labels {values}, which read both as class indices and as a multi-hot "
                             f"row of {self.num_labels}; give it as floats ({[float(x) for x in values]}: "
                             f"multi-hot) or as class names")
        if hot:
            return np.flatnonzero(row).tolist()
        if not distinct:
            raise ValueError(f"{name} lists a class index more than once in {values}; {form}")
        return values

    def num_columns(self) -> int:
        """Time columns of the frame targets: the model's patch grid over `max_length` frames."""
        if self.model_config is None:
            raise ValueError("events_column needs model_config (the model's ASTConfig) to place frame targets on "
                             "its time columns; ASTTrainer fills it in from the model")
        return self.model_config.patch_grid(self.max_length or self.feature_extractor.max_length)[1]

    def _frame_targets(self, event_lists: Sequence[Sequence[Mapping]], names: Sequence[str]) -> torch.Tensor:
        """[batch, time columns, num_labels] frame targets of each clip's events (a bad event is named with its
        clip's name)."""
        columns, seconds = self.num_columns(), column_seconds(self.model_config.time_stride)
        rows = []
        for events, name in zip(event_lists, names):
            try:
                rows.append(frame_targets(events, self.label2id, columns, seconds, self.num_labels))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        return torch.stack(rows)

    def _targets(self, label_lists: Sequence[list[int]]) -> torch.Tensor:
        if not self.returns_one_hot:
            return torch.tensor([x[0] for x in label_lists], dtype=torch.long)
        targets = torch.zeros(len(label_lists), self.num_labels)
        for row, indices in enumerate(label_lists):
            targets[row, indices] = 1.0
        return targets

    # ----------------------------------------------------------------------------------------------------------
    def _cache_key(self, audio) -> str | None:
        """The file path of an audio value read from a file, the key of its cached features (None: not cached)."""
        if not self.cache_mb:
            return None
        source = encoded_source(audio)
        return str(source) if isinstance(source, (str, Path)) else None

    def _features(self, waveforms: list[torch.Tensor | None], cached: list[torch.Tensor | None],
                  keys: list[str | None]) -> torch.Tensor:
        """[batch, frames, mel] normalised features: the cached rows as they are, the others computed in one
        batched call (and kept while `cache_mb` allows)."""
        fe = self.feature_extractor
        todo = [waveform for waveform, row in zip(waveforms, cached) if row is None]
        if not todo:
            return torch.stack(cached)
        # Cut to max_length as the authors' loader does (asked for, so no per-batch warning).
        computed = fe(todo, sampling_rate=fe.sampling_rate, padding="max_length", max_length=self.max_length,
                      truncation=True, return_tensors="pt", device=self.device)["input_values"]
        rows = iter(computed)
        features = [row if row is not None else next(rows) for row in cached]
        for key, row, hit in zip(keys, features, cached):
            size = row.numel() * row.element_size()
            if (hit is None and key is not None and key not in self._cache
                    and self._cache_size["bytes"] + size <= self.cache_mb * 2**20):
                self._cache[key] = row.clone()  # not a view: the batch is augmented in place later
                self._cache_size["bytes"] += size
        return computed if len(todo) == len(cached) else torch.stack(features)

    def __call__(self, examples: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        fe = self.feature_extractor
        waveforms, label_lists, event_lists, cached, keys, names = [], [], [], [], [], []
        for i, example in enumerate(examples):
            audio = example[self.audio_column]
            key = self._cache_key(audio)
            try:
                hit = self._cache.get(key) if key is not None else None
                waveform = None if hit is not None else decode_audio(
                    audio, fe.sampling_rate, allow_upsampling=self.allow_upsampling, index=i)
                if waveform is not None and waveform.shape[0] < fe.min_samples:
                    raise CorruptAudioError(f"{audio_name(audio, i)} is shorter than one 25 ms frame")
            except CorruptAudioError as error:
                if not self.skip_corrupt:
                    raise
                logger.warning("skipping %s", error)
                continue
            if self.events_column is not None:  # strong labels: the clip's classes are those of its events
                events = example.get(self.events_column) or []
                event_lists.append(events)
                label_lists.append(self.event_classes(events, audio_name(audio, i)))
            else:
                labels = example.get(self.label_column)
                label_lists.append(self.label_indices(labels, audio_name(audio, i)) if labels is not None else None)
            waveforms.append(None if waveform is None else torch.from_numpy(waveform))
            names.append(audio_name(audio, i))
            cached.append(hit)
            keys.append(key)
        if not waveforms:
            raise ValueError("every clip of this batch failed to decode; see the warnings above")
        has_labels = all(x is not None for x in label_lists)
        if not has_labels and any(x is not None for x in label_lists):
            # a batch without targets would train without a loss, and an evaluation batch without its labels
            # would leave the labels out of step with the predictions: refuse the unlabelled clip by name
            missing = names[next(i for i, x in enumerate(label_lists) if x is None)]
            raise ValueError(f"{missing} has no {self.label_column!r} but other clips of its batch have one; label "
                             f"every clip (or none, for prediction) or leave the unlabelled ones out of the data set")
        wants_clip_targets = has_labels and (self.clip_labels or self.events_column is None)
        targets = self._targets(label_lists) if wants_clip_targets else None
        frames = self._frame_targets(event_lists, names) if self.events_column is not None else None

        if self.training and self.mixup > 0 and len(waveforms) > 1:
            partner, lam = sample_mixup(len(waveforms), self.mixup, self.mixup_alpha)
            # with frame targets the partner keeps all its audio, as it keeps all its events
            waveforms = mix_waveforms(waveforms, partner, lam, pad_to_longer=frames is not None)
            if targets is not None:
                targets = mix_targets(targets, partner, lam)
            if frames is not None:
                frames = mix_targets(frames, partner, lam)

        features = self._features(waveforms, cached, keys)
        if self.training:
            if self.freqm or self.timem:
                fill = float(fe.normalize(torch.tensor(0.0))) if fe.do_normalize else 0.0
                features = spec_augment(features, self.freqm, self.timem, mask_value=fill)
            if self.noise:
                features = time_shift(feature_noise(features), self.max_shift)
        batch = {"input_values": features}
        if targets is not None:
            batch["labels"] = targets
        if frames is not None:
            batch["frame_targets"] = frames
        return batch


__all__ = ["ASTAudioCollator"]
