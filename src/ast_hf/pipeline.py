"""`ASTAudioClassificationPipeline`: `transformers`' audio-classification pipeline plus sliding windows.

Without `chunk_length_s` / `stride_length_s` it scores as `transformers.AudioClassificationPipeline` does (the
model sees the first `max_length` frames). With either, the recording is tagged with sliding windows by
`ast_hf.tag_long_audio`: `chunk_length_s` is the window length and `stride_length_s` the step between window
starts (the meaning "stride" has in the AST itself, `time_stride`; not the ASR pipeline's overlap), both in
seconds. A file path is then decoded in blocks, so memory stays flat for recordings of any length. Either way
every input (path, URL, bytes, torchcodec decoder, waveform dict) is decoded by `ast_hf.audio_io`, so a file
gives the pipeline the samples it gives `load_audio`, `tag_long_audio` and training.

`ast_hf.register()` makes `pipeline("audio-classification", ...)` build this class; it also works directly:
`ASTAudioClassificationPipeline(model=model, feature_extractor=fe)`.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from transformers import AudioClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .audio_io import check_sampling_rate, decoder_samples, float_samples, load_audio, resample
from .long_audio import tag_long_audio

TASK = "audio-classification"


class ASTAudioClassificationPipeline(AudioClassificationPipeline):
    """Audio classification; `chunk_length_s=` / `stride_length_s=` (seconds) tag long recordings.

    Extra call (or constructor) arguments:
        chunk_length_s: window length in seconds (default when only `stride_length_s` is given: the model's input
            length). A recording shorter than the window is scored whole.
        stride_length_s: step between window starts in seconds (default min(5 s, window / 2); at most the
            window).
        aggregate: "mean" (default) or "max" of the window scores, for the clip-level labels.
        return_timeline: also return the per-window labels: `{"labels": [...], "timeline": [{"start", "end",
            "label", "score"}, ...]}` instead of the list of labels.
        chunk_batch_size: windows per model call (default 8).
    `aggregate`, `return_timeline` (true) and `chunk_batch_size` apply to the windows: given without
    `chunk_length_s` / `stride_length_s` they raise a ValueError (they would be ignored).
    """

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, chunk_length_s=None, stride_length_s=None,
                             aggregate=None, return_timeline=None, chunk_batch_size=None, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k=top_k,
                                                                        function_to_apply=function_to_apply,
                                                                        **kwargs)
        for name, value in (("chunk_length_s", chunk_length_s), ("stride_length_s", stride_length_s)):
            if value is not None:
                preprocess[name] = value
        # The options of the windows reach preprocess too, which refuses them when there are no windows.
        for name, value in (("return_timeline", return_timeline or None), ("aggregate", aggregate),
                            ("chunk_batch_size", chunk_batch_size)):
            if value is not None:
                preprocess[name] = value
        if aggregate is not None:
            forward["aggregate"] = aggregate
        if chunk_batch_size is not None:
            forward["chunk_batch_size"] = chunk_batch_size
        if function_to_apply is not None:
            forward["function_to_apply"] = function_to_apply
        if return_timeline is not None:
            postprocess["return_timeline"] = return_timeline
        return preprocess, forward, postprocess

    def preprocess(self, inputs, chunk_length_s=None, stride_length_s=None, **window_options):
        chunked = chunk_length_s is not None or stride_length_s is not None
        if window_options and not chunked:
            # Without windows they would be ignored: the model scores the first `max_length` frames only, once (a
            # list of labels, no timeline), whatever `aggregate` says.
            verb = "applies" if len(window_options) == 1 else "apply"
            raise ValueError(f"{' / '.join(window_options)} {verb} to sliding windows: pass chunk_length_s= (window "
                             f"length, seconds) and/or stride_length_s= too; without them only the start of the "
                             f"recording is scored")
        if chunked and not (hasattr(self.model.config, "max_length") and hasattr(self.feature_extractor, "frames_for")):
            raise ValueError("chunk_length_s / stride_length_s need an AST model and ast_hf.ASTFeatureExtractor; "
                             f"got {type(self.model).__name__} / {type(self.feature_extractor).__name__}")
        rate = self.feature_extractor.sampling_rate
        source, source_rate = decoded_input(inputs, rate, stream_paths=chunked)
        if not chunked:
            return super().preprocess({"raw": resample(source, source_rate, rate), "sampling_rate": rate})
        return {"long_audio": source, "sampling_rate": source_rate, "window": chunk_length_s,
                "hop": stride_length_s}

    def _forward(self, model_inputs, aggregate="mean", chunk_batch_size=8, function_to_apply=None):
        if "long_audio" not in model_inputs:
            return super()._forward(model_inputs)
        tags = tag_long_audio(self.model, self.feature_extractor, model_inputs["long_audio"],
                              sampling_rate=model_inputs["sampling_rate"], window=model_inputs["window"],
                              hop=model_inputs["hop"], aggregate=aggregate, batch_size=chunk_batch_size,
                              activation=function_to_apply or "auto", progress=False, allow_shorter=True)
        return {"tags": tags}

    def postprocess(self, model_outputs, top_k=5, function_to_apply=None, return_timeline=False):
        if "tags" not in model_outputs:
            return super().postprocess(model_outputs, top_k=top_k, function_to_apply=function_to_apply)
        tags = model_outputs["tags"]
        labels = [{"score": score, "label": label} for label, score in tags.top(top_k)]
        if not return_timeline:
            return labels
        timeline = [{"start": row.start, "end": row.end, "label": row.label, "score": row.score}
                    for row in tags.timeline(top_k)]
        return {"labels": labels, "timeline": timeline}


def decoded_input(inputs, rate: int, stream_paths: bool = False) -> tuple[str | np.ndarray, int]:
    """A pipeline input -> (mono float32 waveform [samples] or, with `stream_paths`, a file path to stream, and its
    rate in Hz), decoded by `audio_io` whatever the form: a path (str or `os.PathLike`) or URL, encoded bytes, a
    torchcodec `AudioDecoder`, a `{"raw" or "array", "sampling_rate"}` dict, or a float waveform in [-1, 1] at the
    extractor's `rate`."""
    source, source_rate = inputs, rate
    if isinstance(source, os.PathLike):
        source = os.fsdecode(source)
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        from huggingface_hub.utils import httpx

        response = httpx.get(source, follow_redirects=True)
        if response.is_error:
            raise ValueError(f"cannot download {source}: HTTP {response.status_code} {response.reason_phrase}")
        source = response.content
    if isinstance(source, str):
        return (source, rate) if stream_paths else (load_audio(source, rate), rate)
    if isinstance(source, (bytes, bytearray)):
        return load_audio(source, rate), rate
    if (torchcodec := sys.modules.get("torchcodec")) and isinstance(source, torchcodec.decoders.AudioDecoder):
        return decoder_samples(source)
    if isinstance(source, dict):
        if "sampling_rate" not in source or (source.get("raw") is None and source.get("array") is None):
            raise ValueError('a dict input needs "sampling_rate" and a "raw" or "array" waveform')
        source_rate = check_sampling_rate(source["sampling_rate"])
        source = source["raw"] if source.get("raw") is not None else source["array"]
    source = float_samples(source)
    if source.ndim != 1:
        raise ValueError(f"expected one mono waveform [samples], got shape {source.shape}")
    return source, source_rate


def register_pipeline() -> dict:
    """Make `pipeline("audio-classification")` build `ASTAudioClassificationPipeline`; returns what to restore."""
    previous = dict(PIPELINE_REGISTRY.supported_tasks[TASK])
    entry = dict(previous, impl=ASTAudioClassificationPipeline)
    PIPELINE_REGISTRY.supported_tasks[TASK] = entry
    return previous


def unregister_pipeline(previous: dict) -> None:
    """Restore the registry entry `register_pipeline()` replaced."""
    PIPELINE_REGISTRY.supported_tasks[TASK] = previous


__all__ = ["ASTAudioClassificationPipeline", "register_pipeline", "unregister_pipeline"]
