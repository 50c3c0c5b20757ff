"""`ASTTrainer` and `ASTTrainingArguments`: the authors' recipe on the standard `transformers.Trainer`.

On top of `Trainer` (which brings DDP/FSDP through `accelerate`, mixed precision, gradient checkpointing,
checkpointing and resuming), it adds:

* the collator's augmentations in training only (the training loader gets `collator.train()`, evaluation
  `collator.eval()`);
* the authors' step decay after a linear warm-up (`lr_decay_start`, `lr_decay_every`, `lr_decay_factor`);
* balanced sampling for multi-label data (`balanced_sampling=True`);
* weight averaging over epochs `weight_averaging_start..weight_averaging_end`, loaded into the model at the end;
* patchout (PaSST: time columns, frequency rows and random patches left out of training batches;
  `patchout_time`, `patchout_freq`, `patchout_random`), set on the model with `set_patchout`;
* `compute_metrics` = accuracy, mAP, mAUC, d-prime, unless another is given;
* `learning_rate` defaults to 1e-5, the authors' rate for fine-tuning the AudioSet model (ESC-50, AudioSet);
  raise it for a model trained from scratch or for Speech Commands (2.5e-4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
from transformers import Trainer, TrainingArguments

from .. import autocast_cpu
from .averaging import WeightAveragingCallback
from .collator import ASTAudioCollator
from .data import check_not_empty
from .metrics import compute_metrics as ast_compute_metrics
from .sampling import balanced_sampler
from .schedules import get_step_decay_schedule

logger = logging.getLogger(__name__)

_DEFAULT = object()


@dataclass
class ASTTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the AST recipe's extra switches (all off by default)."""

    learning_rate: float = field(default=1e-5, metadata={
        "help": "Peak learning rate; 1e-5 is the authors' rate for fine-tuning the AudioSet model."})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Kept False: the collator needs the raw audio and label columns."})
    lr_decay_start: int | None = field(default=None, metadata={
        "help": "Epoch (0-based count of finished epochs) from which the learning rate is multiplied by "
                "lr_decay_factor every lr_decay_every epochs (the authors' step decay); None: use "
                "lr_scheduler_type."})
    lr_decay_every: int = field(default=1, metadata={"help": "Epochs between two decays."})
    lr_decay_factor: float = field(default=0.5, metadata={"help": "Multiplier applied at each decay."})
    balanced_sampling: bool = field(default=False, metadata={
        "help": "Draw training clips with weights sum(1000 / (label count + 0.01)) over their labels (with strong "
                "labels, the classes of their events; a clip without any is never drawn)."})
    weight_averaging_start: int | None = field(default=None, metadata={
        "help": "First epoch (1-based) whose end-of-epoch weights enter the average; None: no averaging."})
    weight_averaging_end: int | None = field(default=None, metadata={
        "help": "Last epoch (1-based, inclusive) of the average; None: the last epoch."})
    patchout_time: int = field(default=0, metadata={
        "help": "Patchout (PaSST): whole time columns of the patch grid left out of each training batch; 0: none."})
    patchout_freq: int = field(default=0, metadata={
        "help": "Patchout (PaSST): whole frequency rows of the patch grid left out of each training batch; 0: none."})
    patchout_random: float = field(default=0.0, metadata={
        "help": "Patchout (PaSST): fraction in [0, 1) of the remaining patches left out at random; 0: none."})


def _collator_for_frame_head(collator: ASTAudioCollator, config) -> ASTAudioCollator:
    """A collator of strong labels checked against the model (frame head, multi-label clip head, same time
    columns), with `model_config` filled in from it when unset."""
    if not config.frame_head:
        raise ValueError("the collator makes frame targets (events_column) but the model has no frame head; build or "
                         "load it with frame_head=True")
    if config.problem_type != "multi_label_classification":
        raise ValueError(f"with events_column the clip head learns the classes present in each recording (multi-hot, "
                         f"BCE); the model's problem_type is {config.problem_type!r}: set multi_label_classification")
    if collator.model_config is None:
        return replace(collator, model_config=config)
    ours, theirs = (c.patch_grid(collator.max_length or collator.feature_extractor.max_length)[1]
                    for c in (collator.model_config, config))
    if (ours, collator.model_config.time_stride) != (theirs, config.time_stride):
        stride = collator.model_config.time_stride
        raise ValueError(f"the collator's model_config gives {ours} time columns of stride {stride}, the model "
                         f"{theirs} of stride {config.time_stride}; pass the model's config")
    return collator


def _check_columns(dataset, collator: ASTAudioCollator, name: str) -> None:
    """Refuse a data set (one with `column_names`) that lacks the collator's audio column or its targets' column:
    the collator reads a missing label column as 'no labels' (evaluation then reports no metrics and training
    fails inside the model without a loss) and a missing events column as 'no events' (all-zero frame targets)."""
    columns = getattr(dataset, "column_names", None)
    if not columns:  # a list of examples, or a stream without a known schema
        return
    target = collator.events_column if collator.events_column is not None else collator.label_column
    for column, kind, option in ((collator.audio_column, "audio", "audio_column"),
                                 (target, "events" if collator.events_column is not None else "label",
                                  "events_column" if collator.events_column is not None else "label_column")):
        if column not in columns:
            raise ValueError(f"split {name!r} has no {column!r} column, which the collator reads for the {kind} "
                             f"(columns: {', '.join(columns)}); pass {option}= to ASTAudioCollator")


class ASTTrainer(Trainer):
    """`Trainer` for `ASTForAudioClassification` fed by an `ASTAudioCollator`.

    Args are those of `Trainer`; `data_collator` must be an `ASTAudioCollator`. `processing_class` defaults to
    the collator's feature extractor (so checkpoints hold `preprocessor_config.json`) and `compute_metrics` to
    accuracy / mAP / mAUC / d-prime. When the model's `problem_type` is unset it is set from the collator:
    multi-label (BCE) or single-label (cross-entropy, soft targets under mixup); a multi-label collator with a
    single-label model is refused, as is a data set without the collator's audio and label (or events) columns.
    Checkpoints hold the feature extractor with the collator's `max_length`, the length the model was trained on.
    A collator of strong labels (`events_column`) needs a model with a frame head; evaluation then also passes
    `frame_targets` (so the loss includes the frame loss), and without clip labels (`clip_labels=False`) no clip
    metrics are computed.
    """

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, compute_metrics=_DEFAULT, callbacks=None, **kwargs):
        if not isinstance(data_collator, ASTAudioCollator):
            raise ValueError("ASTTrainer needs data_collator=ASTAudioCollator(...): it decodes, augments and "
                             "featurises the audio")
        if train_dataset is not None:
            check_not_empty(train_dataset, "train")
            _check_columns(train_dataset, data_collator, "train")
        if eval_dataset is not None:
            for name, part in (eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]):
                check_not_empty(part, name)
                _check_columns(part, data_collator, name)
        if model is not None:
            cfg = model.config
            if cfg.num_labels != data_collator.num_labels:
                raise ValueError(f"the model has {cfg.num_labels} outputs but the collator {data_collator.num_labels} "
                                 f"labels; load the model with num_labels={data_collator.num_labels}")
            if cfg.num_mel_bins != data_collator.feature_extractor.num_mel_bins:
                raise ValueError(f"the model takes {cfg.num_mel_bins} mel bins, the feature extractor makes "
                                 f"{data_collator.feature_extractor.num_mel_bins}")
            multi_label = data_collator.multi_label or data_collator.events_column is not None
            if cfg.problem_type is None:
                cfg.problem_type = "multi_label_classification" if multi_label else "single_label_classification"
            elif data_collator.multi_label and cfg.problem_type == "single_label_classification":
                # cross-entropy would read each multi-hot row as one soft class distribution, without a word
                # (strong labels are checked with the frame head below)
                raise ValueError("the collator gives multi-label targets (multi-hot rows) but the model's problem_type "
                                 "is 'single_label_classification' (softmax cross-entropy over one class per clip); "
                                 "set model.config.problem_type = 'multi_label_classification' (sigmoid BCE)")
            if data_collator.events_column is not None:
                data_collator = _collator_for_frame_head(data_collator, cfg)
            if isinstance(args, ASTTrainingArguments):  # training only: the model applies it in train mode
                model.set_patchout(args.patchout_time, args.patchout_freq, args.patchout_random)
        if compute_metrics is _DEFAULT and data_collator.events_column is not None and not data_collator.clip_labels:
            compute_metrics = None  # clip metrics need clip labels; evaluation reports the frame loss
        callbacks = list(callbacks or [])
        if isinstance(args, ASTTrainingArguments) and args.weight_averaging_start is not None:
            callbacks.append(WeightAveragingCallback(args.weight_averaging_start, args.weight_averaging_end))
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset,
                         processing_class=processing_class or data_collator.feature_extractor,
                         compute_metrics=ast_compute_metrics if compute_metrics is _DEFAULT else compute_metrics,
                         callbacks=callbacks, **kwargs)
        if self.args.label_names is None and data_collator.events_column is not None:
            # evaluation then passes the frame targets (not a `*label*` argument of the model) and computes the loss
            self.label_names = ["labels", "frame_targets"] if data_collator.clip_labels else ["frame_targets"]
        self._steps_per_epoch: int | None = None
        if self.args.bf16 and self.args.device.type == "cpu" and (reason := autocast_cpu.slow_bf16_training_reason()):
            logger.warning("bf16=True: %s", reason)

    # ---- the feature extractor saved with checkpoints ----------------------------------------------------------
    @property
    def processing_class(self):
        """What `save_model` and checkpoints save beside the model: the collator's feature extractor, with the
        collator's `max_length` when the collator pads clips to another length than the extractor's (a fresh copy
        on every read, so statistics written into the extractor later are saved too). Without this a checkpoint's
        `preprocessor_config.json` would make the pipeline feed the model clips of another length than it was
        trained on."""
        saved = self.__dict__.get("_processing_class")
        collator = self.__dict__.get("data_collator")
        frames = getattr(collator, "max_length", None)
        if (isinstance(collator, ASTAudioCollator) and saved is collator.feature_extractor and frames
                and frames != saved.max_length):
            return type(saved)(**{**saved.to_dict(), "max_length": frames})
        return saved

    @processing_class.setter
    def processing_class(self, value):
        self._processing_class = value

    # ---- the collator in training or evaluation mode -----------------------------------------------------------
    def _with_collator(self, collator, build):
        saved = self.data_collator
        self.data_collator = collator
        try:
            return build()
        finally:
            self.data_collator = saved

    def get_train_dataloader(self):
        return self._with_collator(self.data_collator.train(), super().get_train_dataloader)

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_collator(self.data_collator.eval(),
                                   lambda: super(ASTTrainer, self).get_eval_dataloader(eval_dataset))

    def get_test_dataloader(self, test_dataset):
        return self._with_collator(self.data_collator.eval(),
                                   lambda: super(ASTTrainer, self).get_test_dataloader(test_dataset))

    # ---- balanced sampling ------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        if not getattr(self.args, "balanced_sampling", False):
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        collator = self.data_collator
        if collator.events_column is not None:  # strong labels: a recording's classes are those of its events
            labels = [collator.event_classes(events, f"example {i}")
                      for i, events in enumerate(dataset[collator.events_column])]
        else:
            labels = [sorted(set(collator.label_indices(value, f"example {i}")))
                      for i, value in enumerate(dataset[collator.label_column])]
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return balanced_sampler(labels, collator.num_labels, seed=seed, multi_hot=False)

    # ---- the authors' step decay ------------------------------------------------------------------------------
    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        self._steps_per_epoch = values[1]  # num_update_steps_per_epoch
        return values

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        start = getattr(self.args, "lr_decay_start", None)
        if self.lr_scheduler is None and start is not None:
            self.lr_scheduler = get_step_decay_schedule(
                optimizer if optimizer is not None else self.optimizer, self._steps_per_epoch or num_training_steps,
                decay_start=start, decay_every=self.args.lr_decay_every, decay_factor=self.args.lr_decay_factor,
                warmup_steps=self.args.get_warmup_steps(num_training_steps))
            self._created_lr_scheduler = True
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)


__all__ = ["ASTTrainer", "ASTTrainingArguments"]
