"""`ASTConfig`: the Audio Spectrogram Transformer's hyper-parameters.

Field names and defaults are those of `transformers`' own `ASTConfig`, so a `config.json` written by either
library loads in the other. One field is added, `classifier_layer_norm_eps`: the authors' classification
head normalises with eps 1e-5 while their backbone uses 1e-6; left at `None` the head uses
`layer_norm_eps`, which is what `transformers` does (1e-12 for both by default).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

# The authors' LayerNorm epsilons (timm's ViT blocks and `nn.LayerNorm` in `mlp_head`).
ORIGINAL_LAYER_NORM_EPS = 1e-6
ORIGINAL_CLASSIFIER_LAYER_NORM_EPS = 1e-5
# Tokens before the patches in every token sequence (and position embedding table): cls, then distillation.
NUM_PREFIX_TOKENS = 2


def patch_grid(num_mel_bins: int, num_frames: int, patch_size: int, frequency_stride: int, time_stride: int) -> tuple[int, int]:
    """Number of patches along (frequency, time) for an input of `num_frames` frames x `num_mel_bins` bins."""
    if num_mel_bins < patch_size or num_frames < patch_size:
        raise ValueError(
            f"an input of {num_frames} frames x {num_mel_bins} mel bins is smaller than one {patch_size}x{patch_size} "
            f"patch; give at least {patch_size} frames (about {patch_size * 10} ms of audio)"
        )
    return (num_mel_bins - patch_size) // frequency_stride + 1, (num_frames - patch_size) // time_stride + 1


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
        patch_size: side of the square patch, in frames and mel bins.
        qkv_bias: whether the query/key/value projections have a bias.
        frequency_stride: patch stride along mel bins.
        time_stride: patch stride along frames.
        max_length: number of frames (10 ms each) the position embeddings were learned for; inputs of
            other lengths are accepted and the embeddings adapted on the fly.
        num_mel_bins: number of mel bins of the input spectrogram.
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
    patch_size: int = 16
    qkv_bias: bool = True
    frequency_stride: int = 10
    time_stride: int = 10
    max_length: int = 1024
    num_mel_bins: int = 128
    frame_head: bool = False

    def validate_architecture(self):
        """Part of `@strict` validation: the shapes must describe a buildable model."""
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        for name in ("patch_size", "frequency_stride", "time_stride", "max_length", "num_mel_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        self.patch_grid()  # the configured input must hold at least one patch

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
