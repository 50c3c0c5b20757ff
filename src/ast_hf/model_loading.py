"""Loading models for inference from local folders or Hub ids: one checkpoint, or several as an ensemble."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def load_feature_extractor(source: str | Path, config):
    """The folder's (or Hub repo's) `preprocessor_config.json`; without one, the AudioSet-normalised default
    for the model's mel bins and `max_length`, with a warning."""
    from .feature_extraction_ast import ASTFeatureExtractor

    if Path(source).is_dir() and not (Path(source) / "preprocessor_config.json").is_file():
        logger.warning("%s has no preprocessor_config.json; using AudioSet normalisation, %d mel bins, %d frames",
                       source, config.num_mel_bins, config.max_length)
        return ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length)
    return ASTFeatureExtractor.from_pretrained(str(source))


def load_for_inference(sources: Sequence[str | Path] | str | Path, device: str | torch.device | None = None,
                       backbone_only: bool = False):
    """(model in eval mode on `device`, feature extractor) from a folder or Hub id, or several as one
    `ASTEnsemble` (probabilities averaged; the first one's feature extractor). Hub ids need a connection.

    Raises:
        FileNotFoundError: a local-looking path that does not exist. OSError: a Hub id that cannot be fetched.
    """
    from .modeling_ast import ASTForAudioClassification, ASTModel

    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    # "~/models/ast" (a Python string, or `--model=~/...`, which the shell leaves alone) is a folder in the home
    # directory; neither Path.exists nor from_pretrained expands "~", so it would be reported missing
    sources = [os.path.expanduser(s) if str(s).startswith("~") else s for s in sources]
    if not sources:
        raise ValueError("give a model: --model FOLDER_OR_HUB_ID")
    for source in sources:
        text = str(source)
        # Hub ids are "name" or "owner/name" (names may hold dots: "MIT/ast-finetuned-audioset-10-10-0.4593").
        if (text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text) and not Path(text).exists():
            raise FileNotFoundError(f"no model folder at {text}")
    if backbone_only and len(sources) > 1:
        raise ValueError("embeddings come from one model; give a single --model")
    try:
        if backbone_only:
            model = ASTModel.from_pretrained(str(sources[0]))
        elif len(sources) == 1:
            model = ASTForAudioClassification.from_pretrained(str(sources[0]))
        else:
            from .ensemble import ASTEnsemble

            model = ASTEnsemble.from_pretrained([str(s) for s in sources])
    except OSError as error:
        # a bare name that is no folder here was tried as a Hub id: say so, not only that the Hub was unreachable
        remote = [str(s) for s in sources if not Path(s).exists()]
        if not remote:
            raise
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        cause = " ".join(str(error).split())  # one line: the CLI prints errors as one
        raise OSError(f"{', '.join(remote)}: no model folder of that name here, and as a Hub id it could not be "
                      f"fetched{offline}; give a model folder or a reachable Hub id ({cause})") from error
    feature_extractor = load_feature_extractor(sources[0], model.config)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), feature_extractor


__all__ = ["load_for_inference", "load_feature_extractor"]
