"""ast-hf: the Audio Spectrogram Transformer for the Hugging Face ecosystem."""

from .configuration_ast import ASTConfig
from .feature_extraction_ast import ASTFeatureExtractor
from .modeling_ast import ASTForAudioClassification, ASTModel, ASTPreTrainedModel, adapt_position_embeddings

__version__ = "0.1.0"
__all__ = ["ASTConfig", "ASTFeatureExtractor", "ASTModel", "ASTForAudioClassification", "ASTPreTrainedModel", "adapt_position_embeddings"]
