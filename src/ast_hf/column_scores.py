"""Frame scores from a clip classifier without retraining: its head applied to every time column of patch tokens.

`column_scores(model, input_values)` runs the backbone once, takes the patch tokens after the final LayerNorm
([batch, f, t, D]), applies the clip head (`model.classifier`: LayerNorm + Linear) to each token and averages
the logits over the f frequency patches of each time column: logits [batch, t, labels], one row per
`time_stride` x 10 ms. Patch tokens were never trained to be read by the head, so this is the baseline a
trained frame head (`config.frame_head`) is measured against (docs/training.md).

To be reconciled with `ast_hf.frame_scores` (windows stitched over long recordings), which applies the same rule.
"""

from __future__ import annotations

import torch

from .inference import run_model
from .modeling_ast import patch_columns


def column_scores(model, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Clip-head logits per time column, averaged over frequency: [batch, time columns, num_labels] (float32, CPU).

    Args:
        model: an `ASTForAudioClassification` (any head; no frame head needed).
        input_values: [batch, frames, mel bins] features. attention_mask: optional [batch, frames] frame mask;
            columns past a clip's real frames hold no information (`modeling_ast.column_mask` marks them).
    """
    backbone = model.audio_spectrogram_transformer
    tokens = run_model(backbone, input_values, attention_mask).last_hidden_state
    with torch.inference_mode():
        columns = patch_columns(tokens, model.config.patch_grid(input_values.shape[1]))
        return model.classifier(columns).mean(dim=1).float().cpu()


__all__ = ["column_scores"]
