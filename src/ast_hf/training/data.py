"""Training data: `datasets` audio columns and local `audiofolder`s, decoded to 16 kHz mono, checked up front.

Decoding. `datasets` 5 decodes audio with `torchcodec` (an `AudioDecoder` per example). ast-hf casts the audio
column to `Audio(decode=False)` instead and decodes in the collator, one batch at a time, with `ast_hf.audio_io`,
the decoder inference uses too (soundfile first, the `ffmpeg` binary for anything else), so a clip gives training
the samples it gives `predict`, and a bad file is reported by name or skipped on request instead of failing deep
inside a data worker. Columns that are already decoded (`AudioDecoder` objects, `{"array", "sampling_rate"}`
dicts) are accepted too. Every clip is mixed down to mono and resampled to the feature extractor's rate (16 kHz)
with torchaudio's band-limited resampler.

Checks. `verify_audio` reads every file's header (no samples) before training: files that cannot be opened
raise one `ValueError` naming them, or are dropped with a warning listing them when `skip_corrupt=True`;
clips sampled below 16 kHz are refused unless `allow_upsampling=True` (upsampling leaves the upper mel bins
empty, unlike anything the model was trained on). An empty split raises a `ValueError` naming the split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..audio_io import check_sampling_rate, decoder_samples, load_audio, probe, resample

logger = logging.getLogger(__name__)

TARGET_RATE = 16000


class CorruptAudioError(ValueError):
    """An audio file or blob that cannot be decoded; the message names it."""


def audio_name(audio, index: int | None = None) -> str:
    """A human-readable name for an audio value: its path, else 'example N'."""
    path = None
    if isinstance(audio, dict):
        path = audio.get("path")
    elif isinstance(audio, (str, Path)):
        path = str(audio)
    elif hasattr(audio, "metadata") and getattr(audio, "_hf_encoded", None):
        path = audio._hf_encoded.get("path")
    return str(path) if path else f"example {index}" if index is not None else "an in-memory clip"


def encoded_source(audio) -> str | Path | bytes | None:
    """The file path or encoded bytes behind an audio value, None for decoded values (arrays, decoders)."""
    if isinstance(audio, dict) and audio.get("array") is None:
        return audio.get("bytes") or audio.get("path")
    return audio if isinstance(audio, (str, Path)) else None


class UpsamplingRefused(ValueError):
    """A clip sampled below the model's rate, refused without allow_upsampling (readable, so not corrupt)."""


def _refuse_upsampling(name: str, rate: int, sampling_rate: int, allow_upsampling: bool) -> None:
    if rate < sampling_rate and not allow_upsampling:
        raise UpsamplingRefused(f"{name} is sampled at {rate} Hz, below the model's {sampling_rate} Hz: upsampling "
                                f"leaves the mel bins above {rate // 2} Hz empty. Pass allow_upsampling=True "
                                f"(--allow-upsampling) to accept it anyway")


def decode_audio(audio, sampling_rate: int = TARGET_RATE, allow_upsampling: bool = False,
                 index: int | None = None) -> np.ndarray:
    """One audio value of a data set -> mono float32 waveform [samples] at `sampling_rate` Hz.

    Files and bytes are decoded by `ast_hf.audio_io.load_audio` (the decoder every entry point uses), after their
    header's rate is checked; decoded values are mixed down and resampled the same way.

    Args:
        audio: `{"path", "bytes"}` (an `Audio(decode=False)` column), `{"array", "sampling_rate"}`, a torchcodec
            `AudioDecoder` (an `Audio()` column of datasets 5), or a file path.
        allow_upsampling: accept clips sampled below `sampling_rate`.
        index: the example's position, used in error messages when the clip has no path.

    Raises:
        CorruptAudioError: the clip is missing, cannot be decoded or holds no samples (the message names it).
        ValueError: the clip is sampled below `sampling_rate` and `allow_upsampling` is False.
    """
    name = audio_name(audio, index)
    source = encoded_source(audio)
    try:
        if source is not None:  # the rate is checked from the header, before decoding
            return load_audio(source, sampling_rate, name, check_rate=lambda rate: _refuse_upsampling(
                name, rate, sampling_rate, allow_upsampling))
        if isinstance(audio, dict) and audio.get("array") is not None:
            if audio.get("sampling_rate") is None:
                raise ValueError(f"{name} has an array but no sampling_rate; give {{'array', 'sampling_rate'}}")
            rate = check_sampling_rate(audio["sampling_rate"])
            data = np.asarray(audio["array"], dtype=np.float32)
            # [samples], [samples, channels] or [channels, samples] (channels are the short side)
            waveform = data if data.ndim == 1 else (data.T if data.shape[0] < data.shape[-1] else data).mean(axis=1)
        elif hasattr(audio, "get_all_samples"):
            waveform, rate = decoder_samples(audio)
        else:
            raise ValueError(f"{name}: unsupported audio value of type {type(audio).__name__}; expected a path, "
                             f"{{'path', 'bytes'}}, {{'array', 'sampling_rate'}} or a torchcodec AudioDecoder")
    except UpsamplingRefused:
        raise
    except (ValueError, FileNotFoundError) as error:
        raise CorruptAudioError(str(error)) from None
    except RuntimeError as error:  # torchcodec decoding errors of decoded columns
        raise CorruptAudioError(f"cannot decode {name}: {error}") from None
    _refuse_upsampling(name, rate, sampling_rate, allow_upsampling)
    try:
        if waveform.size == 0:
            raise ValueError(f"{name} holds no audio samples (zero-length recording)")
        waveform = resample(waveform, rate, sampling_rate)
        if not np.isfinite(waveform).all():
            raise ValueError(f"{name} contains NaN or infinite samples")
        return waveform
    except ValueError as error:
        raise CorruptAudioError(str(error)) from None


# --------------------------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------------------------


def _header(audio) -> int:
    """Sampling rate read from a file's header (no samples decoded); raises CorruptAudioError."""
    if isinstance(audio, dict) and audio.get("array") is not None:
        return int(audio["sampling_rate"])
    source = encoded_source(audio)
    if source is None:
        raise CorruptAudioError("neither a file path nor audio bytes")
    try:
        info = probe(source)
    except (ValueError, FileNotFoundError) as error:
        raise CorruptAudioError(str(error)) from None
    if info.frames == 0:
        raise CorruptAudioError("no audio samples (zero-length recording)")
    return info.sampling_rate


def verify_audio(dataset, audio_column: str = "audio", skip_corrupt: bool = False,
                 sampling_rate: int = TARGET_RATE, allow_upsampling: bool = False, split: str | None = None):
    """Open every clip's header once, before training. Returns the data set, without the unreadable clips when
    `skip_corrupt` (each one named in a warning); otherwise unreadable clips raise one `ValueError` naming them.
    Clips sampled below `sampling_rate` raise unless `allow_upsampling`."""
    from tqdm.auto import tqdm

    where = f" in split {split!r}" if split else ""
    bad, low = [], []
    values = dataset.select_columns([audio_column]).cast_column(audio_column, _undecoded())
    position = 0
    with tqdm(total=len(dataset), desc=f"checking audio{where}", unit="clip", leave=False) as bar:
        for batch in values.iter(batch_size=256):
            for audio in batch[audio_column]:
                try:
                    rate = _header(audio)
                    if rate < sampling_rate and not allow_upsampling:
                        low.append((position, audio_name(audio, position), rate))
                except (CorruptAudioError, FileNotFoundError) as error:
                    bad.append((position, audio_name(audio, position), str(error)))
                position += 1
            bar.update(len(batch[audio_column]))
    if low:
        listing = "; ".join(f"{name} ({rate} Hz)" for _, name, rate in low[:5])
        raise ValueError(f"{len(low)} clip(s){where} are sampled below {sampling_rate} Hz: {listing}"
                         f"{' ...' if len(low) > 5 else ''}. Upsampling leaves the mel bins above half their rate "
                         f"empty; pass allow_upsampling=True (--allow-upsampling) to accept them")
    if not bad:
        return dataset
    listing = "\n".join(f"  {name}: {reason}" for _, name, reason in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    if not skip_corrupt:
        raise CorruptAudioError(f"{len(bad)} audio file(s){where} cannot be read:\n{listing}{more}\nFix or remove "
                                f"them, or pass skip_corrupt=True (--skip-corrupt) to leave them out")
    logger.warning("skipping %d unreadable audio file(s)%s:\n%s%s", len(bad), where, listing, more)
    dropped = {i for i, _, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in dropped])


def _undecoded():
    import datasets

    return datasets.Audio(decode=False)


def load_audio_dataset(source: str | Path, split: str | None = None, *, audio_column: str = "audio",
                       label_column: str | None = "label", verify: bool = True, skip_corrupt: bool = False,
                       allow_upsampling: bool = False, **load_kwargs):
    """Load a local audiofolder or a Hub data set for training, audio left undecoded for the collator.

    Args:
        source: a folder in `audiofolder` layout (`DIR/<split>/<label>/<clip>.wav`, or a `metadata.csv` with a
            `file_name` column; a leading `~` is the home folder), or a Hub data set id (needs the network).
        split: one split ("train") or None for all of them (a `DatasetDict`).
        verify: read every header first (see `verify_audio`); `skip_corrupt`, `allow_upsampling` as there.
        load_kwargs: passed to `datasets.load_dataset` (e.g. `name=` for a configuration).

    Returns:
        `datasets.Dataset` (one split) or `DatasetDict`, with `audio_column` cast to `Audio(decode=False)`.
    """
    import datasets

    local = Path(source).expanduser()
    if local.is_dir():
        loaded = datasets.load_dataset("audiofolder", data_dir=str(local), split=split, **load_kwargs)
    elif local.exists() or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"no such data folder: {source} (an audiofolder is a directory)")
    else:
        loaded = datasets.load_dataset(str(source), split=split, **load_kwargs)
    splits = {split or "data": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    for name, part in splits.items():
        if audio_column not in part.column_names:
            raise ValueError(f"split {name!r} of {source} has no {audio_column!r} column (columns: "
                             f"{', '.join(part.column_names)}); pass audio_column=")
        if label_column is not None and label_column not in part.column_names:
            raise ValueError(f"split {name!r} of {source} has no {label_column!r} column (columns: "
                             f"{', '.join(part.column_names)}); pass label_column=, or put each clip in a folder "
                             f"named after its label")
        check_not_empty(part, name)
        part = part.cast_column(audio_column, datasets.Audio(decode=False))
        if verify:
            part = verify_audio(part, audio_column, skip_corrupt=skip_corrupt, allow_upsampling=allow_upsampling,
                                split=name)
            check_not_empty(part, name)
        splits[name] = part
    return splits[split or "data"] if isinstance(loaded, datasets.Dataset) else datasets.DatasetDict(splits)


def check_not_empty(dataset, name: str = "data") -> None:
    """Raise a `ValueError` naming the split when `dataset` holds no examples."""
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"split {name!r} is empty: it holds no audio clips; check the folder layout "
                         f"(DIR/{name}/<label>/<clip>.wav) or the split name")


def label_names(dataset, label_column: str = "label") -> list[str] | None:
    """Class names of a `ClassLabel` (or `Sequence(ClassLabel)`) column, else None."""
    feature = dataset.features.get(label_column)
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) / List(ClassLabel)
    return list(feature.names) if hasattr(feature, "names") else None


__all__ = ["CorruptAudioError", "decode_audio", "verify_audio", "load_audio_dataset", "check_not_empty",
           "label_names", "audio_name", "TARGET_RATE"]
