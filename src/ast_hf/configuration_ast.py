"""`ASTConfig`: the Audio Spectrogram Transformer's hyper-parameters.

Field names and defaults are those of `transformers`' own `ASTConfig`, so a `config.json` written by either
library loads in the other. One field is added, `classifier_layer_norm_eps`: the authors' classification
head normalises with eps 1e-5 while their backbone uses 1e-6; left at `None` the head uses
`layer_norm_eps`, which is what `transformers` does (1e-12 for both by default).

The rest of the AST family (SSAST) needs what `transformers`' AST cannot express: `pooling="mean"`, one prefix
token, non-square patches (`patch_size=(128, 2)`). A config that uses any of them is saved with `model_type`
`EXTENDED_MODEL_TYPE`, which plain `transformers` does not know, so its Auto classes and pipelines refuse the folder
instead of building a model that computes something else; every other config keeps `transformers`' model type.
"""

from __future__ import annotations

import math
import numbers

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# The authors' LayerNorm epsilons (timm's ViT blocks and `nn.LayerNorm` in `mlp_head`).
ORIGINAL_LAYER_NORM_EPS = 1e-6
ORIGINAL_CLASSIFIER_LAYER_NORM_EPS = 1e-5
# Tokens before the patches in every token sequence (and position embedding table): cls, then distillation.
NUM_PREFIX_TOKENS = 2
# `model_type` written for configs that `transformers`' AST would misread (see the module docstring).
EXTENDED_MODEL_TYPE = "ast-hf"
POOLINGS = ("cls", "mean")
# Counts and sizes: whole numbers (the widths, the patch grid and the position table are built from them).
INTEGER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "frequency_stride",
                  "time_stride", "max_length", "num_mel_bins", "num_prefix_tokens")


def patch_shape(patch_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(mel bins, frames) covered by one patch: an int is a square patch, a pair is (frequency, time)."""
    if isinstance(patch_size, int):
        return patch_size, patch_size
    if not isinstance(patch_size, (list, tuple)) or len(patch_size) != 2:
        raise ValueError(f"patch_size must be an int or a (frequency, time) pair, got {patch_size!r}")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer() for v in patch_size):
        raise ValueError(f"patch_size must hold whole numbers of mel bins and frames, got {patch_size!r}")
    return int(patch_size[0]), int(patch_size[1])


def patch_grid(num_mel_bins: int, num_frames: int, patch_size: int | tuple[int, int], frequency_stride: int,
               time_stride: int) -> tuple[int, int]:
    """Number of patches along (frequency, time) for an input of `num_frames` frames x `num_mel_bins` bins."""
    patch_f, patch_t = patch_shape(patch_size)
    if num_mel_bins < patch_f or num_frames < patch_t:
        raise ValueError(
            f"an input of {num_frames} frames x {num_mel_bins} mel bins is smaller than one {patch_f}x{patch_t} "
            f"patch (mel bins x frames); give at least {patch_t} frames (about {patch_t * 10} ms of audio)"
        )
    return (num_mel_bins - patch_f) // frequency_stride + 1, (num_frames - patch_t) // time_stride + 1


@strict(accept_kwargs=True)
class ASTConfig(PreTrainedConfig):
    r"""Configuration of an [`ASTModel`] / [`ASTForAudioClassification`].

    The defaults describe the widths, depth, strides and input length of
    [MIT/ast-finetuned-audioset-10-10-0.4593](https://huggingface.co/MIT/ast-finetuned-audioset-10-10-0.4593).
    Keep that link: once `ast_hf.register()` maps the model type to this class, `transformers` builds the example
    docstrings of its own AST classes from the checkpoint named here (without one it prints an error line).

    Args:
        hidden_size: width D of the tokens (192 tiny, 384 small, 768 base).
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: heads per block (D / 64 in the released models).
        intermediate_size: width of the MLP inside each block (4 D).
        hidden_act: MLP activation; "gelu" is the exact (erf) GELU the authors use.
        hidden_dropout_prob: dropout after attention projection, MLP and embeddings.
        attention_probs_dropout_prob: dropout on attention probabilities.
        initializer_range: std of the truncated normal used for fresh weights.
        layer_norm_eps: eps of the backbone LayerNorms (authors: 1e-6).
        classifier_layer_norm_eps: eps of the head LayerNorm (authors: 1e-5); `None` means `layer_norm_eps`.
        patch_size: side of a square patch, or a (mel bins, frames) pair (SSAST "Frame" models: (128, 2)).
        qkv_bias: whether the query/key/value projections have a bias.
        frequency_stride: patch stride along mel bins.
        time_stride: patch stride along frames.
        max_length: number of frames (10 ms each) the position embeddings were learned for; inputs of
            other lengths are accepted and the embeddings adapted on the fly.
        num_mel_bins: number of mel bins of the input spectrogram.
        pooling: "cls" (the AST: mean of the prefix tokens after the final LayerNorm) or "mean" (SSAST's
            `ft_avgtok`: mean of the patch tokens after the final LayerNorm, over each clip's real patches).
        num_prefix_tokens: tokens before the patches: 2 (cls + distillation, distilled DeiTs) or 1 (cls only,
            SSAST `base_nokd`).
        frame_head: add a frame-level head beside the clip head: `ASTForAudioClassification` then also returns
            `frame_logits` [batch, time columns, num_labels], one row per patch column (`time_stride` x 10 ms),
            trained with per-frame BCE from strong labels (`frame_targets`). False (default) builds exactly the
            model without it.
    """

    model_type = "audio-spectrogram-transformer"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_layer_norm_eps: float | None = None
    patch_size: int | list[int] | tuple[int, int] = 16
    qkv_bias: bool = True
    frequency_stride: int = 10
    time_stride: int = 10
    max_length: int = 1024
    num_mel_bins: int = 128
    pooling: str = "cls"
    num_prefix_tokens: int = NUM_PREFIX_TOKENS
    frame_head: bool = False

    def __post_init__(self, **kwargs):
        # One spelling per patch: a square pair is the int transformers' AST reads, a pair is a tuple.
        if not isinstance(self.patch_size, int):
            shape = patch_shape(self.patch_size)
            self.patch_size = shape[0] if shape[0] == shape[1] else shape
        # A whole float (`max_length=5.12 * 100`, a `config.json` that says 1024.0) is that integer, as for
        # patch_size; a fractional one is refused in `validate_architecture` (torch would fail far from here).
        for name in INTEGER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict` validation: the shapes must describe a buildable model."""
        super().validate_architecture()
        for name in INTEGER_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        for name, least in (("hidden_size", 1), ("num_attention_heads", 1), ("intermediate_size", 1),
                            ("num_hidden_layers", 0)):
            if getattr(self, name) < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        for name in ("frequency_stride", "time_stride", "max_length", "num_mel_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if min(self.patch_shape) < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size!r}")
        for name, side, unit in zip(("frequency_stride", "time_stride"), self.patch_shape, ("mel bins", "frames")):
            if getattr(self, name) > side:  # as adapt_patch_grid refuses it
                raise ValueError(f"{name} {getattr(self, name)} is larger than the patch's {side} {unit}: the model "
                                 f"would skip input between patches; give 1..{side}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:  # NaN fails too
                raise ValueError(f"{name} is a probability in [0, 1], got {value!r}")
        for name in ("layer_norm_eps", "classifier_layer_norm_eps"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number (the LayerNorm's epsilon), got {value!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.num_prefix_tokens not in (1, 2):
            raise ValueError(f"num_prefix_tokens must be 1 (cls) or 2 (cls + distillation), got "
                             f"{self.num_prefix_tokens}")
        self.patch_grid()  # the configured input must hold at least one patch

    @property
    def patch_shape(self) -> tuple[int, int]:
        """(mel bins, frames) covered by one patch."""
        return patch_shape(self.patch_size)

    @property
    def is_transformers_compatible(self) -> bool:
        """Whether `transformers`' own AST computes this model: square patches, 2 prefix tokens, "cls" pooling, no
        frame head (transformers would load the clip head and drop the frame head without a word)."""
        return (isinstance(self.patch_size, int) and self.num_prefix_tokens == 2 and self.pooling == "cls"
                and not self.frame_head)

    def to_dict(self) -> dict:
        output = super().to_dict()
        if not self.is_transformers_compatible:
            output["model_type"] = EXTENDED_MODEL_TYPE
        return output

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """As `PreTrainedConfig.get_config_dict`, reading `EXTENDED_MODEL_TYPE` as this class's own model type."""
        config_dict, unused = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") == EXTENDED_MODEL_TYPE:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, unused

    @property
    def head_layer_norm_eps(self) -> float:
        """eps actually used by the classification head's LayerNorm."""
        return self.layer_norm_eps if self.classifier_layer_norm_eps is None else self.classifier_layer_norm_eps

    def patch_grid(self, num_frames: int | None = None) -> tuple[int, int]:
        """(frequency patches, time patches) for `num_frames` frames (default `max_length`)."""
        return patch_grid(
            self.num_mel_bins,
            self.max_length if num_frames is None else num_frames,
            self.patch_size,
            self.frequency_stride,
            self.time_stride,
        )
