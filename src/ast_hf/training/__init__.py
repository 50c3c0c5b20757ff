"""Fine-tuning the AST with the authors' recipe on `transformers.Trainer`."""

from .augment import feature_noise, mix_targets, mix_waveforms, sample_mixup, spec_augment, time_shift
from .averaging import (ASTEnsemble, ASTEnsembleOutput, WeightAveragingCallback, average_checkpoints,
                        average_state_dicts, checkpoints_for_epochs)
from .metrics import accuracy, classification_metrics, compute_metrics, d_prime, metric_path
from .sampling import balanced_sample_weights, balanced_sampler
from .schedules import get_step_decay_schedule, step_decay_factor
