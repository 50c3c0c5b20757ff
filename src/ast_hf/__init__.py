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
]
