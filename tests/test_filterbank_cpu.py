"""The compiled CPU kernels of the filterbank (ast_hf.filterbank_cpu) against float64 computations from the
definitions (tests/test_feature_extraction.py compares the whole filterbank, with them and with tensor operations,
to float64 Kaldi on every input class): here, what is their own: partial blocks of frames, threads, forked children,
strided inputs, and where they refuse to run."""

import multiprocessing

import numpy as np
import pytest
import torch
from torchaudio.compliance import kaldi

from ast_hf.filterbank import frame_geometry, log_mel_filterbank

pytestmark = pytest.mark.numeric

SR = 16000


def clips(batch=3, seconds=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(seconds * SR), generator=g) + torch.linspace(-0.3, 0.4, batch)[:, None]


def padded_frames(waveforms, compiled: bool, count: int, start: int = 0) -> torch.Tensor:
    """The FFT buffer the filterbank fills for frames [start, start + count) of every clip."""
    from ast_hf import filterbank_cpu
    from ast_hf.filterbank import _fill_frames, _window_cpu

    size, hop, n_fft = frame_geometry(SR)
    out = torch.zeros(waveforms.shape[0] * count, n_fft, dtype=torch.float64)
    fill = filterbank_cpu.fill_frames if compiled else _fill_frames
    fill(waveforms, start, count, hop, _window_cpu(size), 0.97, out)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_writes_kaldis_windowed_frames(dtype):
    """Each row is Kaldi's frame after mean removal, pre-emphasis and the window, computed here in float64 from
    the definition, to float64 rounding; the zero padding is left alone."""
    waves = clips().to(dtype)
    size, hop, n_fft = frame_geometry(SR)
    got = padded_frames(waves, compiled=True, count=7, start=5).view(3, 7, n_fft)
    window = torch.hann_window(size, periodic=False, dtype=torch.float64)
    for b in range(3):
        for j in range(7):
            x = waves[b, (5 + j) * hop:(5 + j) * hop + size].double()
            x = x - x.mean()
            emphasised = torch.cat([x[:1] * (1 - 0.97), x[1:] - 0.97 * x[:-1]])
            torch.testing.assert_close(got[b, j, :size], emphasised * window, atol=1e-15, rtol=1e-13)
    assert (got[:, :, size:] == 0).all()


def test_kernel_and_tensor_framing_agree_to_float64_rounding():
    waves = clips(batch=4, seconds=1.0)
    compiled, tensors = padded_frames(waves, True, count=90), padded_frames(waves, False, count=90)
    torch.testing.assert_close(compiled, tensors, atol=1e-15, rtol=1e-13)


@pytest.mark.parametrize("frames", [1, 7, 8, 13, 64])
@pytest.mark.parametrize("num_mel_bins, rate", [(128, 16000), (64, 16000), (128, 8000), (40, 48000)])
def test_mel_energies_are_the_dense_product_clamped(frames, num_mel_bins, rate):
    """Against |X|^2 @ mel matrix in float64, clamped at the floor: any number of frames (blocks of 8 and a
    partial one), empty filters (128 bins at 8 kHz has some) and other geometries."""
    from ast_hf import filterbank_cpu
    from ast_hf.filterbank import _mel_matrix_cpu, _mel_rows_cpu

    n_fft = frame_geometry(rate)[2]
    g = torch.Generator().manual_seed(frames)
    spectra = torch.complex(torch.randn(frames, n_fft // 2 + 1, generator=g, dtype=torch.float64),
                            torch.randn(frames, n_fft // 2 + 1, generator=g, dtype=torch.float64))
    spectra[0] *= 1e-9  # a quiet frame: most of its energies below the floor
    key = (num_mel_bins, n_fft, rate, 20.0, 0.0)
    expected = (spectra.abs() ** 2) @ _mel_matrix_cpu(*key)
    out = torch.full((frames, num_mel_bins), float("nan"), dtype=torch.float64)
    filterbank_cpu.mel_energies(spectra, _mel_rows_cpu(*key), 1e-12, out)
    torch.testing.assert_close(out, expected.clamp_min(1e-12), atol=0, rtol=1e-13)


def test_same_bits_on_any_thread_count():
    """The serial kernel (one thread, or a forked child) and the parallel one give the same bits: each frame's
    sums run in a fixed order whatever the threads."""
    waves = clips(batch=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = log_mel_filterbank(waves)[0]
        torch.set_num_threads(max(2, threads))
        many = log_mel_filterbank(waves)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def _featurise_in_child(waves, path):
    torch.set_num_threads(1)  # as a DataLoader worker does: OpenMP's threads are not the child's
    np.save(path, log_mel_filterbank(waves)[0].numpy())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_forked_child_after_the_parent_ran_the_threads(tmp_path):
    """A DataLoader worker is a child forked from a process that ran numba's OpenMP threads (which abort a child
    that starts them again): it runs the serial kernel, with the same result."""
    waves = clips()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # the parent surely starts numba's thread pool
    try:
        parent = log_mel_filterbank(waves)[0]
    finally:
        torch.set_num_threads(threads)
    child = multiprocessing.get_context("fork").Process(target=_featurise_in_child,
                                                        args=(waves, tmp_path / "child.npy"))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "child.npy")), parent)


def test_strided_and_offset_inputs():
    """A column slice of a longer batch (the extractor cuts tensor input so) and a row slice read right."""
    waves = clips(batch=4, seconds=3.0)
    cut = waves[1:3, 1000:1000 + SR]
    assert not cut.is_contiguous()
    got = log_mel_filterbank(cut)[0]
    assert torch.equal(got, log_mel_filterbank(cut.contiguous())[0])
    exact = kaldi.fbank(cut[0].double()[None], htk_compat=True, use_energy=False, window_type="hanning",
                        num_mel_bins=128, dither=0.0, frame_shift=10)
    assert (got[0].double() - exact).abs().max() < 1e-5


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_samples_propagate_as_with_tensor_operations(bad):
    """The extractor refuses NaN/inf before the filterbank; called directly, the kernels leave the frames they
    reach NaN (not the log floor), as the tensor operations and torchaudio do, and the other frames alone."""
    waves = clips(batch=2, seconds=0.5)
    waves[1, 1000] = bad
    compiled = log_mel_filterbank(waves)[0]
    tensors = log_mel_filterbank(waves, compiled_kernels=False)[0]
    # per frame (an empty filter sums no bin: 0 there, the floor, where the dense matmul's 0 x NaN is NaN)
    assert torch.equal(compiled.isnan().any(dim=-1), tensors.isnan().any(dim=-1))
    assert compiled[1].isnan().any(dim=1).nonzero().flatten().tolist() == [4, 5, 6]  # the frames holding sample 1000
    assert not compiled[0].isnan().any()


def test_compiled_kernels_are_cpu_only():
    with pytest.raises(ValueError, match="run on the CPU"):
        log_mel_filterbank(torch.zeros(1, SR, device="meta"), compiled_kernels=True)
