"""`ASTFeatureExtractor`: waveforms -> normalised Kaldi log-mel features for the AST.

The configuration keys are those of `transformers`' `ASTFeatureExtractor`, so a `preprocessor_config.json`
written by either library loads in the other. Unlike it, the filterbank runs on the whole batch at once,
in torch, on the device the input lives on, can pad to the longest clip instead of a fixed length, and
returns a frame-level `attention_mask`.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor

from .audio_io import check_sampling_rate, complex_samples_message, integer_samples_message
from .filterbank import frame_geometry, kept_buffer, log_mel_filterbank, num_frames
from .labels import DATASETS

logger = logging.getLogger(__name__)

AUDIOSET_MEAN = DATASETS["audioset"].mean
AUDIOSET_STD = DATASETS["audioset"].std


class ASTFeatureExtractor(SequenceFeatureExtractor):
    r"""Kaldi-compatible log-mel filterbank features, padded or cut to `max_length` frames, normalised.

    Args:
        feature_size: channels of the raw audio (1: mono only).
        sampling_rate: expected rate of the waveforms in Hz (16000 for every released AST).
        num_mel_bins: mel bins per frame (128).
        max_length: frames (10 ms each) to pad or cut to with `padding="max_length"` (1024 = 10.24 s).
        padding_value: value of padded waveform samples (kept for compatibility; features pad with 0 log-mel).
        do_normalize: apply `(x - mean) / (2 * std)`.
        mean, std: normalisation statistics of the un-normalised fbank (AudioSet's by default).
        return_attention_mask: return the frame mask by default.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        max_length: int = 1024,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        mean: float = AUDIOSET_MEAN,
        std: float = AUDIOSET_STD,
        return_attention_mask: bool = False,
        **kwargs,
    ):
        # Checked here, not at the first call: a bad value (a typo, a hand-edited preprocessor_config.json) fails
        # there with an unrelated message ("audio sampled at 16000 Hz, but this feature extractor expects 16000 Hz"
        # for the string "16000", a numpy reduction error for 0 mel bins) or, for a NaN/inf mean or std, not at all.
        sampling_rate = check_sampling_rate(sampling_rate)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value,
                         **kwargs)
        if isinstance(num_mel_bins, bool) or not isinstance(num_mel_bins, (int, np.integer)) or num_mel_bins <= 0:
            raise ValueError(f"num_mel_bins must be a positive int, got {num_mel_bins!r}")
        for name, value in (("mean", mean), ("std", std)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number (the fbank's {name} over the training data), got "
                                 f"{value!r}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        _check_max_length(max_length)
        # Python numbers, the same values: numpy scalars (np.int64 frames, np.float32 statistics) are not JSON, and
        # save_pretrained failed on them.
        self.num_mel_bins = int(num_mel_bins)
        self.max_length = int(max_length)
        self.do_normalize = do_normalize
        self.mean = float(mean)
        self.std = float(std)
        self.return_attention_mask = return_attention_mask

    # ----------------------------------------------------------------------------------------------------------
    def normalize(self, features: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        """(fbank - mean) / (2 * std): the AST input convention (mean 0, std 0.5 on the training data).
        `in_place` overwrites `features` (the extractor's own output buffer) instead of copying it."""
        return (features if in_place else features.clone()).sub_(self.mean).div_(2 * self.std)

    def filterbank_normalisation(self) -> dict:
        """`log_mel_filterbank`'s shift and scale for this extractor: the normalisation done inside the filterbank."""
        return {"shift": self.mean, "scale": 2 * self.std} if self.do_normalize else {}

    @property
    def min_samples(self) -> int:
        """Samples in one analysis frame (25 ms): the shortest clip that yields a feature frame."""
        return frame_geometry(self.sampling_rate)[0]

    def frames_for(self, num_samples: int) -> int:
        """Feature frames a clip of `num_samples` samples gives (before padding or cutting)."""
        window, hop, _ = frame_geometry(self.sampling_rate)
        return num_frames(num_samples, window, hop)

    def _as_clips(self, raw_speech, device) -> torch.Tensor | list[torch.Tensor]:
        """Any accepted input -> a ready [batch, samples] float32 tensor on the target device, or a list of 1-D
        tensors (any dtype and device; copied once, into the padded batch, by `_padded_batch`)."""
        if isinstance(raw_speech, (torch.Tensor, np.ndarray)):
            self._check_ndim(raw_speech, batched=raw_speech.ndim == 2)
            if raw_speech.ndim == 2 and raw_speech.shape[0] == 0:
                raise ValueError(f"got an empty batch of shape {tuple(raw_speech.shape)}: give at least one clip")
            if isinstance(raw_speech, torch.Tensor) and raw_speech.ndim == 2:  # already a padded batch
                if not raw_speech.is_floating_point():
                    raise ValueError(_not_float_message("the batch", raw_speech.dtype))
                return raw_speech.to(device=device if device is not None else raw_speech.device, dtype=torch.float32)
            clips = list(raw_speech) if raw_speech.ndim == 2 else [raw_speech.reshape(-1)]
        elif isinstance(raw_speech, Sequence) and not isinstance(raw_speech, (str, bytes)):
            if len(raw_speech) == 0:
                raise ValueError("got an empty list: give a waveform (list of floats) or a list of waveforms")
            batched = not np.isscalar(raw_speech[0]) and not (
                isinstance(raw_speech[0], torch.Tensor) and raw_speech[0].ndim == 0)
            clips = raw_speech if batched else [raw_speech]
        else:
            raise ValueError(f"raw_speech must be a numpy array, a torch tensor, a list of floats or a list of "
                             f"clips; got {type(raw_speech).__name__}")

        tensors = []
        for i, clip in enumerate(clips):
            if not isinstance(clip, torch.Tensor):
                array = np.asarray(clip)
                if array.dtype.kind in "biu":
                    raise ValueError(integer_samples_message(f"clip {i}", array.dtype))
                if array.dtype.kind != "f":
                    raise ValueError(f"clip {i} holds {array.dtype} values; give numbers (float samples in [-1, 1])")
                if not array.dtype.isnative:  # big-endian samples (np.frombuffer(data, ">f4")): torch reads
                    array = array.astype(array.dtype.newbyteorder("="))  # native byte order only
                # a read-only array (e.g. a memory map) or one with negative strides (x[::-1]) is copied: torch
                # cannot share it
                shareable = array.flags.writeable and all(stride >= 0 for stride in array.strides)
                clip = torch.from_numpy(array if shareable else array.copy())
            elif not clip.is_floating_point():
                raise ValueError(_not_float_message(f"clip {i}", clip.dtype))
            elif clip.requires_grad:
                raise ValueError(f"clip {i} requires grad, but feature extraction is not differentiable: pass "
                                 f"waveforms.detach()")
            if clip.ndim != 1:
                raise ValueError(
                    f"clip {i} has shape {tuple(clip.shape)}; each clip must be mono, 1-D [samples]. Mix "
                    f"multi-channel audio down first, e.g. `audio.mean(axis=-1)` for (samples, channels)")
            tensors.append(clip)
        return tensors

    @staticmethod
    def _padded_batch(clips: list[torch.Tensor], samples: int, device) -> torch.Tensor:
        """[batch, samples] float32 on `device` (default: the first clip's): each clip's first `samples` samples,
        right-padded with zeros; in a buffer kept for the next call (see `kept_buffer`)."""
        target = torch.device(device) if device is not None else clips[0].device
        waveforms = kept_buffer("waveforms", (len(clips), samples), torch.float32, target)
        for row, clip in zip(waveforms, clips):
            n = min(samples, clip.shape[0])
            row[:n] = clip[:n]
            row[n:] = 0.0
        return waveforms

    def _check_ndim(self, array, batched: bool) -> None:
        if array.ndim > 2:
            raise ValueError(f"input has shape {tuple(array.shape)}; expected [samples] for one clip or "
                             f"[batch, samples] for a batch of mono clips")
        if batched and array.shape[-1] < self.min_samples and array.shape[0] >= self.min_samples:
            raise ValueError(
                f"input has shape {tuple(array.shape)}, which looks like (samples, channels) audio with "
                f"{array.shape[-1]} channels; AST takes mono: mix down with `audio.mean(axis=-1)`, or pass "
                f"[batch, samples]")

    def _check_values(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> None:
        short = (lengths < self.min_samples).nonzero().flatten().tolist()
        if short:
            i = short[0]
            n = int(lengths[i])
            what = ("is empty" if n == 0
                    else f"has {n} samples, shorter than one 25 ms frame ({self.min_samples} samples)")
            raise ValueError(f"clip {i} {what}; give at least {self.min_samples} samples at {self.sampling_rate} Hz")
        low, high = torch.aminmax(waveforms)  # one pass; NaN and inf propagate (an isfinite mask: 15x slower)
        if not bool(torch.isfinite(low) & torch.isfinite(high)):
            bad = (~torch.isfinite(waveforms)).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"clip(s) {bad} contain NaN or infinite samples; clean or drop them before "
                             f"feature extraction")

    # ----------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        raw_speech: np.ndarray | torch.Tensor | list[float] | list[np.ndarray] | list[torch.Tensor],
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        padding: bool | str = "max_length",
        max_length: int | None = None,
        truncation: bool | None = None,
        return_attention_mask: bool | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Featurise one clip or a batch.

        Args:
            raw_speech: one mono clip ([samples] array, tensor or list of floats), a list of clips of any lengths,
                or a [batch, samples] array/tensor. Samples are floats in [-1, 1] at `sampling_rate` Hz.
            sampling_rate: rate of `raw_speech` in Hz; must equal `self.sampling_rate` (resample first).
            return_tensors: "pt", "np" or None (lists of numpy arrays).
            padding: "max_length" (default, pad/cut to `max_length` frames, what the released models expect),
                or "longest" / True (pad to the longest clip of the batch; for variable-length inputs).
            max_length: frames to pad or cut to (default `self.max_length`).
            truncation: None (default) cuts clips longer than the target and warns; True cuts them as asked,
                without a warning (e.g. a training collator); False keeps every frame.
            return_attention_mask: also return `attention_mask` [batch, frames] (1 = real frame).
            device: where to compute (default: the input tensor's device, else CPU). Tensors stay there.

        Returns:
            `BatchFeature` with `input_values` [batch, frames, num_mel_bins] float32 (and `attention_mask`).
        """
        sampling_rate = None if sampling_rate is None else check_sampling_rate(sampling_rate)
        if max_length is not None:
            _check_max_length(max_length)
        if sampling_rate is None:
            logger.warning("pass sampling_rate=%d to ASTFeatureExtractor: without it a wrong rate goes unnoticed",
                           self.sampling_rate)
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"audio sampled at {sampling_rate} Hz, but this feature extractor expects {self.sampling_rate} Hz; "
                f"resample first (e.g. torchaudio.functional.resample(x, {sampling_rate}, {self.sampling_rate})), or "
                f"use pipeline('audio-classification'), which resamples")
        if padding not in ("max_length", "longest", True, False, "do_not_pad"):
            raise ValueError(f"padding must be 'max_length', 'longest', True or False, got {padding!r}")
        clips = self._as_clips(raw_speech, device)
        lengths = ([clip.shape[0] for clip in clips] if isinstance(clips, list) else
                   [clips.shape[1]] * clips.shape[0])
        longest = self.frames_for(max(lengths))
        limit = self.max_length if max_length is None else max_length
        target = limit if padding == "max_length" else longest
        if truncation is not False and max_length is not None:
            target = min(target, max_length)
        if truncation is False:
            target = max(target, longest)
        # Only the samples that reach the output's frames are copied and read (a long clip cut to `target` frames
        # is not converted whole).
        window, hop, _ = frame_geometry(self.sampling_rate)
        samples = min(max(lengths), (target - 1) * hop + window)
        waveforms = (self._padded_batch(clips, samples, device) if isinstance(clips, list)
                     else clips[:, :samples])
        lengths = torch.tensor(lengths, dtype=torch.long, device=waveforms.device)
        self._check_values(waveforms, lengths)
        # Written straight at the target length, normalised in the same pass: padding frames hold a zero log-mel
        # (normalised), frames past the target are never computed.
        features, frames = log_mel_filterbank(waveforms, lengths, sampling_rate=self.sampling_rate,
                                              num_mel_bins=self.num_mel_bins, output_frames=target,
                                              **self.filterbank_normalisation())
        if longest > target and truncation is None:
            logger.warning(
                "%d clip(s) longer than %d frames (%.2f s) were cut to that length; the rest is not seen by the "
                "model. Use ast_hf.tag_long_audio (sliding windows) or padding='longest' for variable-length input.",
                int((frames > target).sum()), target, target / 100)
        frames = frames.clamp(max=target)
        data = {"input_values": features}
        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            data["attention_mask"] = (torch.arange(target, device=features.device)[None, :]
                                      < frames[:, None]).to(torch.int32)
        if return_tensors in ("pt", "torch"):
            return BatchFeature(data)
        arrays = {k: v.cpu().numpy() for k, v in data.items()}
        if return_tensors == "np":
            return BatchFeature(arrays, tensor_type="np")
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        return BatchFeature({k: list(v) for k, v in arrays.items()})


def _not_float_message(what: str, dtype: torch.dtype) -> str:
    """Why a tensor of samples that are not real floats is refused: integer PCM (with how to convert), or complex
    values (casting would silently drop the imaginary part; numpy's complex clips are refused alike)."""
    if dtype.is_complex:
        return complex_samples_message(what, dtype)
    return integer_samples_message(what, dtype)


def _check_max_length(max_length) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length <= 0:
        raise ValueError(f"max_length must be a positive number of frames (10 ms each, e.g. 1024 for 10.24 s), "
                         f"got {max_length!r}")


__all__ = ["ASTFeatureExtractor", "AUDIOSET_MEAN", "AUDIOSET_STD"]
