"""Kaldi-compatible log-mel filterbank, vectorised over a batch, on any device.

It reproduces `torchaudio.compliance.kaldi.fbank` with the settings the AST authors use
(`htk_compat=True, use_energy=False, window_type="hanning", dither=0.0, frame_shift=10`):

* frames of 25 ms (400 samples at 16 kHz) every 10 ms (160 samples), only whole frames (`snip_edges`),
* per-frame DC removal, pre-emphasis 0.97 (first sample against itself), symmetric Hann window,
* zero-padding to the next power of two (512 points), power spectrum,
* triangular mel filters on the Kaldi mel scale 1127 ln(1 + f / 700) between 20 Hz and Nyquist,
* natural log with a floor of float32 eps.

Precision. Everything between the waveform and the log runs in float64, and the result is rounded to float32
once. In float32 the FFT's rounding error is a fixed fraction of a frame's total energy, so mel cells far below
the frame's loudest (the empty bands of a sweep, any band of a signal riding on a large DC offset or at int16
scale) lose digits, and how many depends on the host's FFT and matmul kernels: a float32 filterbank is off from
the exact Kaldi answer by as much as torchaudio's own float32 fbank, more or less by host. In float64 the only
error left is the output's own float32 rounding (half a unit in the last place), on every host; the float64
work costs some speed (benchmarks/results/). Apple's MPS has no float64: there the work stays in float32.

All clips of a batch go through the same operations; the work is cut into chunks of frames so that the
intermediate spectra stay in cache (one giant FFT over the whole batch measured slower on CPU). Around the FFT
(torch's), a chunk takes two passes: framing (frame mean removal, pre-emphasis, window) straight into a reused
zero-padded FFT buffer, and the mel projection of the power spectrum. On a CPU both are compiled kernels
(`ast_hf.filterbank_cpu`: one read of each frame's samples, and only the bins where each filter has weight); on
other devices they are tensor operations (the framing touching each frame twice, the mel projection one dense
matmul).
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps  # Kaldi's (and torchaudio's) log floor, in every precision
# Frames per chunk: the float64 FFT buffer and spectrum of 1024 frames (~8 MB together) beat smaller and larger
# chunks on the CPUs measured (benchmarks/).
FRAMES_PER_CHUNK = 1024
# Largest |shift| folded into the window (see log_mel_filterbank).
MAX_WINDOWED_SHIFT = 30.0


def frame_geometry(sampling_rate: int, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
                   ) -> tuple[int, int, int]:
    """(window size, hop, FFT size) in samples for the given rate."""
    window = int(sampling_rate * frame_length_ms * 0.001)
    hop = int(sampling_rate * frame_shift_ms * 0.001)
    return window, hop, 1 << (window - 1).bit_length()


def num_frames(num_samples, window: int, hop: int):
    """Whole frames in `num_samples` samples (Kaldi `snip_edges=True`); works on ints and integer tensors."""
    if isinstance(num_samples, torch.Tensor):
        return torch.where(num_samples < window, 0, (num_samples - window) // hop + 1)
    return 0 if num_samples < window else (num_samples - window) // hop + 1


def _mel(freq):
    """Kaldi's mel scale of a frequency in Hz (a float or a tensor)."""
    if isinstance(freq, torch.Tensor):
        # log(1 + x), not log1p: the same float32 weights as torchaudio's (and so the authors') mel banks
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=32)
def _mel_matrix_cpu(num_mel_bins: int, n_fft: int, sampling_rate: int, low_freq: float, high_freq: float
                    ) -> torch.Tensor:
    nyquist = 0.5 * sampling_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"mel range must satisfy 0 <= low_freq < high_freq <= {nyquist} Hz, got {low_freq}, "
                         f"{high_freq}")
    num_fft_bins = n_fft // 2
    fft_bin_width = sampling_rate / n_fft
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    mel_delta = (mel_high - mel_low) / (num_mel_bins + 1)
    index = torch.arange(num_mel_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + index * mel_delta
    center = mel_low + (index + 1.0) * mel_delta
    right = mel_low + (index + 2.0) * mel_delta
    mel = _mel(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)  # [mel bins, n_fft/2]
    # Kaldi has no weight on the Nyquist bin: one zero column makes it [mel bins, n_fft/2 + 1].
    weights = torch.nn.functional.pad(weights, (0, 1))
    # Computed in float32 as torchaudio does (its float64 fbank casts these same float32 weights), held in float64.
    return weights.t().to(torch.float64).contiguous()  # [n_fft/2 + 1, mel bins], ready for `power @ weights`


def _paired(weights: torch.Tensor) -> torch.Tensor:
    """[bins, filters] -> [2 * bins, filters], each bin's row twice: `squares @ paired` = `power @ weights` for the
    interleaved squared (real, imaginary) parts of a spectrum, so |X|^2 needs no strided pass of its own."""
    return weights.repeat_interleave(2, dim=0)


@functools.lru_cache(maxsize=32)
def _window_cpu(window_size: int) -> torch.Tensor:
    return torch.hann_window(window_size, periodic=False, dtype=torch.float64)


_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}
_WORKSPACE = threading.local()


# Buffers kept between calls on a thread: at most this many bytes each (a larger one is allocated afresh).
MAX_KEPT_BYTES = 64 << 20


def kept_buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised buffer of `shape`, kept for the next call on this thread (CPU only, up to MAX_KEPT_BYTES).

    Why: a fresh allocation of megabytes comes from the kernel page by page, one page fault per 4 KB on its first
    write, and the chunk loop's intermediates, reallocated every chunk, took thousands of faults per call (a fifth
    of the time of a 16-clip batch, benchmarks/). The GPU's caching allocator already reuses its blocks."""
    numel = math.prod(shape)
    if device.type != "cpu" or numel * dtype.itemsize > MAX_KEPT_BYTES:
        return torch.empty(shape, dtype=dtype, device=device)
    buffers = _WORKSPACE.__dict__.setdefault("buffers", {})
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffer[:numel].view(shape)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype the filterbank computes in on `device`: float64, or float32 where the device has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _cached_on(tensor: torch.Tensor, key: tuple, device: torch.device) -> torch.Tensor:
    """`tensor` (float64, on the CPU) moved to `device` in its compute dtype, cached."""
    full_key = key + (str(device),)
    cached = _DEVICE_CACHE.get(full_key)
    if cached is None:
        cached = _DEVICE_CACHE[full_key] = tensor.to(device, compute_dtype(device))
    return cached


@functools.lru_cache(maxsize=32)
def _mel_rows_cpu(num_mel_bins: int, n_fft: int, sampling_rate: int, low_freq: float, high_freq: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mel matrix as `filterbank_cpu.mel_energies` reads it: each filter's first FFT bin [mel] int64, number
    of bins [mel] int64 and weights [mel, widest] float64 (zero-padded), its bins being those from its first to its
    last non-zero weight (none for an empty filter)."""
    rows = _mel_matrix_cpu(num_mel_bins, n_fft, sampling_rate, low_freq, high_freq).t()
    first_bin = np.zeros(num_mel_bins, np.int64)
    widths = np.zeros(num_mel_bins, np.int64)
    for m, row in enumerate(rows):
        nonzero = row.nonzero().flatten()
        if len(nonzero):
            first_bin[m], widths[m] = int(nonzero[0]), int(nonzero[-1]) - int(nonzero[0]) + 1
    weights = np.zeros((num_mel_bins, max(1, int(widths.max()))), np.float64)
    for m in range(num_mel_bins):
        weights[m, :widths[m]] = rows[m, first_bin[m]:first_bin[m] + widths[m]].numpy()
    return first_bin, widths, weights


def _frame_means(waveforms: torch.Tensor, num: int, window: int, hop: int) -> torch.Tensor:
    """Mean of each of the first `num` frames, [batch, num], from sums over blocks of gcd(window, hop) samples
    (one read of the waveform instead of one of every overlapping frame)."""
    block = math.gcd(window, hop)
    end = (num - 1) * hop + window
    sums = waveforms[:, :end].reshape(waveforms.shape[0], end // block, block).sum(dim=2)
    return sums.unfold(1, window // block, hop // block).sum(dim=2) / window


def _fill_frames(waveforms: torch.Tensor, start: int, count: int, hop: int, window: torch.Tensor,
                 preemphasis: float, out: torch.Tensor) -> None:
    """`filterbank_cpu.fill_frames` as tensor operations (any device): frames [start, start + count) of every clip,
    windowed, into out[:, :window size] (rows clip-major). Each frame is (x - mean) pre-emphasised, then windowed:
    (x[i] - p x[i-1] - (1 - p) mean) w[i] for i >= 1, and (1 - p) (x[0] - mean) w[0] for its first sample (Kaldi
    weighs it against itself). The window product writes straight into `out`, the mean term following as one rank-1
    update."""
    batch, window_size, dtype = waveforms.shape[0], window.shape[0], out.dtype
    # Only this chunk's samples are widened to the compute dtype (a whole float64 copy was a pass more).
    piece = waveforms[:, start * hop: (start + count - 1) * hop + window_size]
    segment = kept_buffer("segment", tuple(piece.shape), dtype, out.device).copy_(piece)
    dc = (_frame_means(segment, count, window_size, hop) * (1.0 - preemphasis)).reshape(-1)
    emphasised = torch.sub(segment[:, 1:], segment[:, :-1], alpha=preemphasis,  # sample i of a frame: i - 1
                           out=kept_buffer("emphasised", (batch, piece.shape[1] - 1), dtype, out.device))
    torch.mul(emphasised.unfold(1, window_size - 1, hop), window[1:],
              out=out.view(batch, count, out.shape[1])[:, :, 1:window_size])
    out[:, 1:window_size].addr_(dc, window[1:], alpha=-1.0)
    out[:, 0] = (segment[:, : (count - 1) * hop + 1: hop].reshape(-1) * (1.0 - preemphasis) - dc) * window[0]


def log_mel_filterbank(
    waveforms: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    sampling_rate: int = 16000,
    num_mel_bins: int = 128,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    preemphasis: float = 0.97,
    frames_per_chunk: int = FRAMES_PER_CHUNK,
    output_frames: int | None = None,
    compiled_kernels: bool | None = None,
    shift: float = 0.0,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-mel filterbank of a batch of mono waveforms (not differentiable).

    Args:
        waveforms: [batch, samples] float tensor (any device), clips right-padded to a common length.
        lengths: [batch] number of real samples per clip (default: all samples).
        sampling_rate: Hz. num_mel_bins: mel bins. low_freq / high_freq: mel range in Hz (`high_freq <= 0`
            is relative to Nyquist). preemphasis: pre-emphasis coefficient.
        output_frames: frames of the output (default: those of the longest clip); frames past it are not
            computed, frames past a clip's end are 0.
        compiled_kernels: frame and project onto the mel filters with the compiled CPU kernels
            (`ast_hf.filterbank_cpu`; the default on a CPU) instead of tensor operations and a dense mel matmul
            (the default elsewhere: one matmul suits a GPU).
        shift, scale: return (log-mel - shift) / scale, computed in float64 before the one rounding and while the
            chunk is in cache (the AST's normalisation is shift = mean, scale = 2 std).

    Returns:
        (features [batch, frames, num_mel_bins] float32 on the input's device, with frames past a clip's end
        set to the value of a zero log-mel, (0 - shift) / scale; frames_per_clip [batch] int64, not capped by
        `output_frames`).
    """
    if waveforms.ndim != 2:
        raise ValueError(f"expected waveforms of shape [batch, samples], got {tuple(waveforms.shape)}")
    if waveforms.requires_grad:
        raise ValueError("log_mel_filterbank is not differentiable: pass waveforms.detach()")
    device, dtype = waveforms.device, compute_dtype(waveforms.device)
    if waveforms.dtype not in (torch.float32, torch.float64):
        waveforms = waveforms.to(torch.float32)
    batch, total = waveforms.shape
    window_size, hop, n_fft = frame_geometry(sampling_rate)
    if lengths is None:
        lengths = torch.full((batch,), total, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device, dtype=torch.long)
    frames_per_clip = num_frames(lengths, window_size, hop)
    max_frames = num_frames(total, window_size, hop)
    output_frames = max_frames if output_frames is None else output_frames
    # Frames [0, computed) are written chunk by chunk; every frame past a clip's end is zeroed at the end.
    features = torch.empty(batch, output_frames, num_mel_bins, dtype=torch.float32, device=device)
    computed = min(max_frames, output_frames)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    padding = (0.0 - shift) / scale
    if computed == 0:
        return features.fill_(padding), frames_per_clip

    if compiled_kernels is None:
        compiled_kernels = device.type == "cpu"
    mel_key = (num_mel_bins, n_fft, sampling_rate, float(low_freq), float(high_freq))
    if compiled_kernels:
        if device.type != "cpu":
            raise ValueError(f"compiled_kernels run on the CPU; the waveforms are on {device}")
        from . import filterbank_cpu  # numba: imported (and its kernels loaded) on the first CPU call only
        mel_rows = _mel_rows_cpu(*mel_key)
    else:
        mel = _cached_on(_paired(_mel_matrix_cpu(*mel_key)), ("paired mel",) + mel_key, device)
    # The shift rides on the window: frames windowed by w exp(-shift / 2) have energies E exp(-shift), whose log
    # is log(E) - shift (the floor scaled alike), so the subtraction costs no pass of its own. Log-mel means lie
    # within a few units of 0; a shift far outside (whose exp(-shift) could leave float32's range on MPS) is
    # subtracted after the log instead.
    windowed_shift = shift if abs(shift) <= MAX_WINDOWED_SHIFT else 0.0
    window = _cached_on(_window_cpu(window_size) * math.exp(-0.5 * windowed_shift),
                        ("window", window_size, windowed_shift), device)
    floor = FLOAT32_EPS * math.exp(-windowed_shift)
    step = max(1, frames_per_chunk // batch)  # frames of every clip per chunk
    rows = batch * min(step, computed)
    buffer = kept_buffer("frames", (rows, n_fft), dtype, device)
    buffer[:, window_size:] = 0.0  # the FFT's zero padding, written once; every chunk overwrites the rest
    energies_buffer = kept_buffer("energies", (rows, num_mel_bins), dtype, device)
    for start in range(0, computed, step):
        stop = min(start + step, computed)
        count = stop - start
        padded = buffer[: batch * count]
        if compiled_kernels:
            filterbank_cpu.fill_frames(waveforms, start, count, hop, window, preemphasis, padded)
        else:
            _fill_frames(waveforms, start, count, hop, window, preemphasis, padded)
        # Not into a kept buffer: rfft(out=) computes into a temporary and copies (measured slower).
        spectrum = torch.fft.rfft(padded, dim=1)  # [frames, n_fft/2 + 1] complex
        energies = energies_buffer[: batch * count]
        if compiled_kernels:
            filterbank_cpu.mel_energies(spectrum, mel_rows, floor, energies)
        else:
            # |X|^2 = re^2 + im^2: the (re, im) pairs squared in place, the pair sum done by the mel product.
            torch.mm(torch.view_as_real(spectrum).view(batch * count, -1).square_(), mel, out=energies)
            energies.clamp_min_(floor)
        # In place on the contiguous energies, then one copy (log through out= into the strided slice was 3x slower).
        log_mel = energies.log_().view(batch, count, num_mel_bins)  # log-mel - shift
        if windowed_shift != shift:
            log_mel.sub_(shift)
        if scale != 1.0:  # in place while in cache (a float32 out= would compute into a temporary and copy)
            log_mel.mul_(1.0 / scale)
        features[:, start:stop] = log_mel  # rounded to float32 once
    # Frames past each clip's end were computed from padding (or not at all): they hold a zero log-mel.
    if device.type == "cpu":  # only the frames concerned (lengths are on the host: no device sync)
        features[:, computed:] = padding
        for clip in (frames_per_clip < computed).nonzero().flatten().tolist():
            features[clip, int(frames_per_clip[clip]):computed] = padding
    else:  # one kernel, no host round trip
        past_end = torch.arange(output_frames, device=device).unsqueeze(0) >= frames_per_clip.unsqueeze(1)
        features.masked_fill_(past_end.unsqueeze(-1), padding)
    return features, frames_per_clip
