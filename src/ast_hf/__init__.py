"""ast-hf: the Audio Spectrogram Transformer for the Hugging Face ecosystem.

`import ast_hf` leaves `transformers` untouched; call `ast_hf.register()` to make its Auto classes and
`pipeline("audio-classification", model=...)` build these classes.
"""

from .audio_io import load_audio
from .configuration_ast import ASTConfig
from .convert import ConversionError, convert_original_checkpoint
from .feature_extraction_ast import ASTFeatureExtractor
from .labels import dataset_info, load_label_table
from .modeling_ast import ASTForAudioClassification, ASTModel, ASTPreTrainedModel, adapt_position_embeddings
from .register import register, unregister
# Inference beyond the anchors: long recordings, archives, embeddings, explanations, export.
from .batch_inference import predict_files
from .embeddings import AudioEmbedding, embed
from .explain import Explanation, attention_rollout, explain
from .export import compare_models, compile_model, export_onnx, quantize_dynamic_int8
from .long_audio import AudioStream, LongAudioTags, TimelineRow, tag_long_audio
from .model_loading import load_for_inference
from .pipeline import ASTAudioClassificationPipeline

# Fine-tuning (ast_hf.training) imports Trainer and datasets: loaded on first use, so `import ast_hf` stays light.
_TRAINING_EXPORTS = ("ASTTrainer", "ASTTrainingArguments", "ASTAudioCollator", "ASTEnsemble", "load_audio_dataset",
                     "compute_normalization_stats", "compute_metrics", "average_checkpoints", "run_demo")


def __getattr__(name):
    if name in _TRAINING_EXPORTS:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module 'ast_hf' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = [
    "ASTConfig",
    "ASTFeatureExtractor",
    "ASTModel",
    "ASTForAudioClassification",
    "ASTPreTrainedModel",
    "adapt_position_embeddings",
    "convert_original_checkpoint",
    "ConversionError",
    "load_label_table",
    "dataset_info",
    "load_audio",
    "register",
    "unregister",
    "tag_long_audio",
    "LongAudioTags",
    "TimelineRow",
    "AudioStream",
    "predict_files",
    "embed",
    "AudioEmbedding",
    "explain",
    "Explanation",
    "attention_rollout",
    "export_onnx",
    "compile_model",
    "quantize_dynamic_int8",
    "compare_models",
    "load_for_inference",
    "ASTAudioClassificationPipeline",
    *_TRAINING_EXPORTS,
]
