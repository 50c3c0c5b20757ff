"""Opt-in registration of ast-hf's classes with the `transformers` Auto classes.

`import ast_hf` changes nothing in `transformers`. After `ast_hf.register()`, every AST folder or Hub id
(`model_type: "audio-spectrogram-transformer"`) builds ast-hf's classes through `AutoConfig`, `AutoModel`,
`AutoModelForAudioClassification`, `AutoFeatureExtractor` and therefore `pipeline("audio-classification",
model="some/dir")`; so do folders with model type `ast-hf` (SSAST pooling, prefix tokens or patch shapes that
`transformers`' AST cannot compute, which plain `transformers` refuses). `unregister()` restores `transformers`'
own classes.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification
from transformers.models.auto import feature_extraction_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING, MODEL_MAPPING

from .configuration_ast import EXTENDED_MODEL_TYPE, ASTConfig
from .feature_extraction_ast import ASTFeatureExtractor
from .modeling_ast import ASTForAudioClassification, ASTModel

_MODEL_TYPE = ASTConfig.model_type
_saved: dict | None = None


def is_registered() -> bool:
    return CONFIG_MAPPING[_MODEL_TYPE] is ASTConfig


def register() -> None:
    """Make the `transformers` Auto classes and pipelines build ast-hf's AST classes. Idempotent."""
    global _saved
    if is_registered():
        return
    native_config = CONFIG_MAPPING[_MODEL_TYPE]
    _saved = {"config": native_config}
    AutoConfig.register(_MODEL_TYPE, ASTConfig, exist_ok=True)
    # a second name for the same class (AutoConfig.register insists on the class's own model_type)
    CONFIG_MAPPING.register(EXTENDED_MODEL_TYPE, ASTConfig, exist_ok=True)
    AutoModel.register(ASTConfig, ASTModel, exist_ok=True)
    AutoModelForAudioClassification.register(ASTConfig, ASTForAudioClassification, exist_ok=True)
    AutoFeatureExtractor.register(ASTConfig, ASTFeatureExtractor, exist_ok=True)
    # `preprocessor_config.json` names its class ("ASTFeatureExtractor") and transformers resolves that name
    # in its own package first: answer that one name with ours.
    native_lookup = _saved["class_from_name"] = feature_extraction_auto.feature_extractor_class_from_name

    def class_from_name(class_name: str):
        return ASTFeatureExtractor if class_name == ASTFeatureExtractor.__name__ else native_lookup(class_name)

    feature_extraction_auto.feature_extractor_class_from_name = class_from_name
    # pipeline("audio-classification") builds ast-hf's subclass (adds chunk_length_s / stride_length_s windows).
    from .pipeline import register_pipeline

    _saved["pipeline"] = register_pipeline()


def unregister() -> None:
    """Undo `register()`: `transformers` builds its own AST classes again."""
    global _saved
    if not is_registered() or _saved is None:
        return
    native_config = _saved["config"]
    CONFIG_MAPPING.register(_MODEL_TYPE, native_config, exist_ok=True)
    CONFIG_MAPPING._extra_content.pop(EXTENDED_MODEL_TYPE, None)
    for mapping in (MODEL_MAPPING, MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING, FEATURE_EXTRACTOR_MAPPING):
        mapping._extra_content.pop(ASTConfig, None)
    feature_extraction_auto.feature_extractor_class_from_name = _saved["class_from_name"]
    from .pipeline import unregister_pipeline

    unregister_pipeline(_saved["pipeline"])
    _saved = None


__all__ = ["register", "unregister", "is_registered"]
