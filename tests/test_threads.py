"""Thread choice under load: a busy neighbour process takes its core out of the count."""

import multiprocessing
import time

import pytest

from ast_hf.threads import busy_cores, choose_threads, usable_cores


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def test_an_explicit_count_wins_and_is_checked():
    assert choose_threads(3) == 3
    assert choose_threads(__import__("numpy").int64(2)) == 2  # a numpy integer: the int it is
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive whole number"):
            choose_threads(bad)


def test_a_busy_neighbour_is_counted_and_its_core_left_to_it():
    idle_busy = busy_cores(0.5)
    if idle_busy > usable_cores() - 1:
        pytest.skip(f"other processes already keep {idle_busy:.1f} of {usable_cores()} cores busy: no free core for "
                    f"the neighbour to take")
    neighbour = multiprocessing.get_context("spawn").Process(target=_spin, args=(time.time() + 6.0,))
    neighbour.start()
    try:
        time.sleep(1.0)  # the spawned interpreter starts, then spins
        loaded = busy_cores(0.5)
        chosen = choose_threads()
    finally:
        neighbour.terminate()
        neighbour.join()
    assert loaded >= idle_busy + 0.6, (idle_busy, loaded)  # one core's worth more
    assert 1 <= chosen <= usable_cores() - round(loaded - idle_busy) or chosen == 1


def test_long_commands_take_the_thread_count_before_they_start(tmp_path):
    import torch

    from ast_hf.cli import main

    before = torch.get_num_threads()
    try:
        # the command fails (no such file), but only after its threads were set
        assert main(["predict", str(tmp_path / "missing.wav"), "--model", str(tmp_path), "--threads", "1"]) == 1
        assert torch.get_num_threads() == 1
        assert main(["predict", str(tmp_path / "missing.wav"), "--model", str(tmp_path), "--threads", "0"]) == 1
    finally:
        torch.set_num_threads(before)


def test_the_watch_during_torchs_import_does_not_count_the_import(tmp_path):
    """`use_threads` watches the machine while torch imports in the same process: on an idle machine a fresh
    process must still take every core (the import's CPU time is its own, not a neighbour's)."""
    import subprocess
    import sys

    if busy_cores(0.5) > 0.3:
        pytest.skip("other processes keep the machine busy: an idle reading is not possible now")
    code = "import sys; from ast_hf.threads import use_threads; assert 'torch' not in sys.modules; print(use_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == usable_cores()
