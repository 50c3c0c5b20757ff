"""Fine-tuning the AST with the authors' recipe on `transformers.Trainer`.

    from ast_hf.training import ASTAudioCollator, ASTTrainer, ASTTrainingArguments, load_audio_dataset

Modules: `augment` (SpecAugment, mixup, noise, time shift), `data` (data sets, decoding, checks), `collator`
(batched features + augmentation), `normalization` (dataset mean/std), `sampling` (balanced sampler), `metrics`
(accuracy, mAP, mAUC, d-prime; an `evaluate` module at `metric_path()`), `schedules` (warm-up + step decay),
`averaging` (weight averaging), `trainer` (`ASTTrainer`), `recipes` (the authors' hyper-parameters), `demo` (the
offline demo), `strong_labels` (event data sets, frame targets), `event_demo` (the sound-event demo; its metrics
come from `ast_hf.sed_metrics`). `datasets` is imported only when a data set is loaded. `ASTEnsemble` (prediction
ensembles) lives in `ast_hf.ensemble` and is re-exported here.
"""

from ..ensemble import ASTEnsemble, ASTEnsembleOutput
from .augment import feature_noise, mix_targets, mix_waveforms, sample_mixup, spec_augment, time_shift
from .averaging import (
                        WeightAveragingCallback,
                        average_checkpoints,
                        average_state_dicts,
                        checkpoints_for_epochs,
                        load_weights,
)
from .collator import ASTAudioCollator
from .data import CorruptAudioError, check_not_empty, decode_audio, label_names, load_audio_dataset, verify_audio
from .demo import DemoSettings, run_demo
from .event_demo import EventDemoSettings, run_event_demo
from .metrics import accuracy, average_precision, classification_metrics, compute_metrics, d_prime, metric_path, roc_auc
from .normalization import compute_normalization_stats
from .recipes import RECIPES, Recipe, get_recipe
from .sampling import balanced_sample_weights, balanced_sampler
from .schedules import get_step_decay_schedule, step_decay_factor
from .strong_labels import column_seconds, frame_targets, load_event_dataset
from .trainer import ASTTrainer, ASTTrainingArguments

__all__ = [
    "ASTAudioCollator", "ASTTrainer", "ASTTrainingArguments", "ASTEnsemble", "ASTEnsembleOutput",
    "WeightAveragingCallback", "average_checkpoints", "average_state_dicts", "checkpoints_for_epochs", "load_weights",
    "CorruptAudioError", "check_not_empty", "decode_audio", "label_names", "load_audio_dataset", "verify_audio",
    "compute_normalization_stats", "balanced_sample_weights", "balanced_sampler", "get_step_decay_schedule",
    "step_decay_factor", "accuracy", "average_precision", "roc_auc", "d_prime", "classification_metrics",
    "compute_metrics", "metric_path", "spec_augment", "sample_mixup", "mix_waveforms", "mix_targets",
    "feature_noise", "time_shift", "RECIPES", "Recipe", "get_recipe", "DemoSettings", "run_demo",
    "EventDemoSettings", "run_event_demo", "column_seconds", "frame_targets", "load_event_dataset",
]
