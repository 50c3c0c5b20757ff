"""ast-hf: the Audio Spectrogram Transformer for the Hugging Face ecosystem.

`import ast_hf` leaves `transformers` untouched; call `ast_hf.register()` to make its Auto classes and
`pipeline("audio-classification", model=...)` build these classes.

Names are imported on first use (torch and transformers take seconds to import), so `import ast_hf` and
`ast-hf --help` are instant; `from ast_hf import ASTForAudioClassification` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # the core: config, features, model, registration
    "ASTConfig": "configuration_ast",
    "ASTFeatureExtractor": "feature_extraction_ast",
    "ASTModel": "modeling_ast",
    "ASTForAudioClassification": "modeling_ast",
    "ASTPreTrainedModel": "modeling_ast",
    "adapt_position_embeddings": "modeling_ast",
    "register": "registration",
    "unregister": "registration",
    "load_audio": "audio_io",
    "keep_freed_memory": "allocator",
    # the converter and the label tables
    "convert_original_checkpoint": "convert",
    "ConversionError": "convert",
    "load_label_table": "labels",
    "dataset_info": "labels",
    # inference beyond the anchors: long recordings, archives, embeddings, explanations, export
    "tag_long_audio": "long_audio",
    "LongAudioTags": "long_audio",
    "TimelineRow": "long_audio",
    "AudioStream": "audio_io",
    "predict_files": "batch_inference",
    "embed": "embeddings",
    "AudioEmbedding": "embeddings",
    "explain": "explanation",
    "Explanation": "explanation",
    "attention_rollout": "explanation",
    "export_onnx": "export",
    "compile_model": "export",
    "quantize_dynamic_int8": "export",
    "compare_models": "export",
    "load_for_inference": "model_loading",
    "ASTEnsemble": "ensemble",
    "ASTEnsembleOutput": "ensemble",
    "ASTAudioClassificationPipeline": "pipeline",
    # when, not just what: frame scores, sound events, live tagging
    "frame_scores": "frame_level",
    "FrameScores": "frame_level",
    "SoundEvent": "event_tsv",
    "read_event_tsv": "event_tsv",
    "write_event_tsv": "event_tsv",
    "EventTableError": "event_tsv",
    "EventPostprocessing": "sound_events",
    "EventDetector": "sound_events",
    "detect_events": "sound_events",
    "event_metrics": "sed_metrics",
    "StreamingTagger": "streaming",
    "ScoredWindow": "streaming",
    # fine-tuning (imports Trainer and datasets)
    "ASTTrainer": "training",
    "ASTTrainingArguments": "training",
    "ASTAudioCollator": "training",
    "load_audio_dataset": "training",
    "compute_normalization_stats": "training",
    "compute_metrics": "training",
    "average_checkpoints": "training",
    "run_demo": "training",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ast_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # static type checkers and IDEs see the real names
    from .audio_io import load_audio
    from .configuration_ast import ASTConfig
    from .convert import ConversionError, convert_original_checkpoint
    from .feature_extraction_ast import ASTFeatureExtractor
    from .modeling_ast import ASTForAudioClassification, ASTModel, ASTPreTrainedModel, adapt_position_embeddings
    from .registration import register, unregister
