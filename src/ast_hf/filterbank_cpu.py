"""The filterbank's two CPU passes around the FFT, compiled (numba), in float64.

Written as tensor operations (the filterbank's path on other devices), the steps before the FFT are a float64 copy
of the samples, the pre-emphasis, the window product and the frame-mean term, four passes over the frames; the steps
after it are the squares of the spectrum and a mel matmul of mostly zeros (each FFT bin has weight in at most two
triangular filters). Together they took more of a CPU call than the FFT itself (benchmarks/). Here:

* `fill_frames` reads each frame's samples once and writes its windowed values once;
* `mel_energies` squares each spectrum once and sums, per filter, only the bins where it has weight, eight frames at
  a time so that the sums are independent vector lanes; it applies the log floor on the way out.

All arithmetic is float64 in a fixed order, so the filterbank keeps its precision (every output cell the exact value
rounded to float32) and its results do not depend on the thread count.

Rows are spread over torch's intra-op thread count (so `ast_hf.threads`' choice under load holds here too); with one
thread the serial kernels run and numba's thread pool never starts. A child forked from a process that ran OpenMP
threads (a DataLoader worker, say) must run one thread, torch's own OpenMP included (DataLoader sees to it): such a
child runs the serial kernels.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .threads import numba_threads

LANES = 8  # frames per block of `mel_energies` (one AVX-512 register of float64; two AVX2 ones)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _frame(wave, clip, first, window, preemphasis, out):
    """out[:size] = (x[i] - p x[i-1] - (1 - p) mean(x)) w[i] for the frame x = wave[clip, first:first + size],
    with x[-1] = x[0] (Kaldi pre-emphasises the first sample against itself)."""
    size = window.shape[0]
    x = wave[clip, first:first + size]
    # Eight partial sums: independent additions the CPU can overlap, in a fixed order.
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    whole = size - size % 8
    for i in range(0, whole, 8):
        s0 += x[i]
        s1 += x[i + 1]
        s2 += x[i + 2]
        s3 += x[i + 3]
        s4 += x[i + 4]
        s5 += x[i + 5]
        s6 += x[i + 6]
        s7 += x[i + 7]
    for i in range(whole, size):
        s0 += x[i]
    mean = (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) / size
    dc = (1.0 - preemphasis) * mean
    out[0] = ((1.0 - preemphasis) * np.float64(x[0]) - dc) * window[0]
    for i in range(1, size):
        out[i] = (np.float64(x[i]) - preemphasis * np.float64(x[i - 1]) - dc) * window[i]


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _mel_block(spectra, first_row, first_bin, widths, weights, floor, out):
    """out[r, m] = max(sum_t weights[m, t] |X_r[first_bin[m] + t]|^2, floor) for the (up to) LANES rows from
    first_row; spectra rows hold interleaved (real, imaginary) parts."""
    rows = min(LANES, spectra.shape[0] - first_row)
    bins = spectra.shape[1] // 2
    power = np.empty((bins, LANES))  # power[k, j]: bin k of frame j, frames side by side
    if rows < LANES:  # the lanes past the last frame are summed but not stored: zeros, not stray (slow) denormals
        power[:, rows:] = 0.0
    for j in range(rows):
        spectrum = spectra[first_row + j]
        for k in range(bins):
            re = spectrum[2 * k]
            im = spectrum[2 * k + 1]
            power[k, j] = re * re + im * im
    for m in range(weights.shape[0]):
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
        for t in range(widths[m]):
            w = weights[m, t]
            p = power[first_bin[m] + t]
            a0 += w * p[0]
            a1 += w * p[1]
            a2 += w * p[2]
            a3 += w * p[3]
            a4 += w * p[4]
            a5 += w * p[5]
            a6 += w * p[6]
            a7 += w * p[7]
        sums = (a0, a1, a2, a3, a4, a5, a6, a7)
        for j in range(rows):
            out[first_row + j, m] = max(sums[j], floor)


# Parallel and serial twins, not one function compiled twice: numba's on-disk cache keys on the function, not on
# `parallel`.
@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _frames_parallel(wave, start, count, hop, window, preemphasis, out):
    for row in numba.prange(wave.shape[0] * count):
        _frame(wave, row // count, (start + row % count) * hop, window, preemphasis, out[row])


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _frames_serial(wave, start, count, hop, window, preemphasis, out):
    for row in range(wave.shape[0] * count):
        _frame(wave, row // count, (start + row % count) * hop, window, preemphasis, out[row])


@numba.njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _mel_parallel(spectra, first_bin, widths, weights, floor, out):
    for block in numba.prange((spectra.shape[0] + LANES - 1) // LANES):
        _mel_block(spectra, block * LANES, first_bin, widths, weights, floor, out)


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _mel_serial(spectra, first_bin, widths, weights, floor, out):
    for block in range((spectra.shape[0] + LANES - 1) // LANES):
        _mel_block(spectra, block * LANES, first_bin, widths, weights, floor, out)


def fill_frames(waveforms: torch.Tensor, start: int, count: int, hop: int, window: torch.Tensor,
                preemphasis: float, out: torch.Tensor) -> None:
    """Write frames [start, start + count) of every clip, windowed, into `out`.

    Args:
        waveforms: [batch, samples] float32 or float64 CPU tensor (any strides).
        start, count: first frame and number of frames per clip; hop: samples between frames.
        window: [size] float64 CPU tensor, the frame's window (size = samples per frame).
        out: [batch * count, >= size] float64 CPU tensor, rows clip-major (clip b's frame start + j is row
            b * count + j); columns past `size` are left as they are (the FFT's zero padding).
    """
    kernel = _frames_parallel if numba_threads() > 1 else _frames_serial
    kernel(waveforms.numpy(), start, count, hop, window.numpy(), float(preemphasis), out.numpy())


def mel_energies(spectra: torch.Tensor, mel_rows: tuple[np.ndarray, np.ndarray, np.ndarray], floor: float,
                 out: torch.Tensor) -> torch.Tensor:
    """max(|spectra|^2 @ mel matrix, floor) into `out`.

    Args:
        spectra: [frames, bins] complex128 CPU tensor (contiguous), an rFFT of each frame.
        mel_rows: the mel matrix as each filter's (first bin [filters] int64, number of bins [filters] int64,
            weights [filters, widest] float64), the bins from its first to its last non-zero weight.
        floor: the log floor, applied to each energy.
        out: [frames, filters] float64 CPU tensor (contiguous).
    """
    kernel = _mel_parallel if numba_threads() > 1 else _mel_serial
    kernel(torch.view_as_real(spectra).view(spectra.shape[0], -1).numpy(), *mel_rows, float(floor), out.numpy())
    return out
