"""Kernel choices kept on disk per host (`ast_hf.probe_cache`): a kept answer is used instead of measuring, only
for the host key it was measured under, and anything stale, invalid or unreadable is measured again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from ast_hf import onednn, probe_cache

OTHER = {"blas": "onednn", "onednn": "blas"}


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    """A cache file of the test's own (conftest turns the cache off for every other test); the process's choices
    forgotten before and after."""
    path = tmp_path / "probes.json"
    monkeypatch.setenv(probe_cache.CACHE_ENV, str(path))
    for name in ("AST_HF_FP32_LINEAR", "AST_HF_BF16_MATMUL", "AST_HF_BF16_ROW_SPLIT", "AST_HF_FP32_ATTENTION",
                 "AST_HF_FP32_TRAINING"):
        monkeypatch.delenv(name, raising=False)
    clear = (onednn.float32_linear.cache_clear, onednn.bf16_policy.cache_clear, onednn.bf16_row_split.cache_clear,
             onednn.float32_attention.cache_clear, onednn._measured_training_kernels.cache_clear)
    for forget in clear:
        forget()
    yield path
    for forget in clear:
        forget()


def write_cache(path, entries: dict, key: str | None = None, when: float | None = None) -> None:
    """A cache file holding {probe: value} for `key` (this host's by default), measured at `when` (now)."""
    when = time.time() if when is None else when
    hosts = {key or probe_cache.host_key(): {probe: {"value": value, "when": when} for probe, value in entries.items()}}
    path.write_text(json.dumps({"format": 1, "hosts": hosts}))


def kept(path, key: str | None = None) -> dict:
    return json.loads(path.read_text())["hosts"][key or probe_cache.host_key()]


def test_a_measured_choice_is_kept_for_this_host(cache_file):
    choice = onednn.float32_linear()
    assert choice in ("blas", "onednn")
    entry = kept(cache_file)["float32_linear"]
    assert entry["value"] == choice and time.time() - entry["when"] < 600


@pytest.mark.parametrize("choice", ["blas", "onednn"])
def test_a_kept_choice_is_used_instead_of_measuring(cache_file, choice):
    """Either answer read back as written: what is returned comes from the file, whatever this host would measure."""
    write_cache(cache_file, {"float32_linear": choice})
    assert onednn.float32_linear() == choice


def test_a_new_process_reads_the_kept_choice(cache_file):
    measured = onednn.float32_linear()
    write_cache(cache_file, {"float32_linear": OTHER[measured]})
    # the same thread count, hence the same host key, as this process
    code = (f"import torch; torch.set_num_threads({torch.get_num_threads()}); "
            "from ast_hf import onednn; print(onednn.float32_linear())")
    env = dict(os.environ, **{probe_cache.CACHE_ENV: str(cache_file)})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == OTHER[measured]


def test_the_key_names_the_isa_caps_the_threads_and_the_cpu(monkeypatch):
    key = probe_cache.host_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = probe_cache.host_key()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        more_threads = probe_cache.host_key()
    finally:
        torch.set_num_threads(threads)
    assert len({key, capped, more_threads}) == 3
    assert probe_cache.host_key() == key
    model, flags = probe_cache.cpu_identity()
    assert model  # the CPU is named (from /proc/cpuinfo or the platform)


def test_another_hosts_answer_is_not_used_and_is_kept(cache_file):
    other_key = "0" * 32
    write_cache(cache_file, {"float32_linear": "onednn"}, key=other_key, when=12345.0)
    choice = onednn.float32_linear()
    assert kept(cache_file)["float32_linear"]["value"] == choice  # measured here and added
    assert kept(cache_file, other_key) == {"float32_linear": {"value": "onednn", "when": 12345.0}}


@pytest.mark.parametrize("stored", [
    {"value": "blas", "when": time.time() - (probe_cache.MAX_AGE_DAYS + 1) * 86400},  # stale
    {"value": "gpu", "when": time.time()},  # not an answer
    {"value": "blas", "when": time.time() + 86400},  # from the future (a clock set back)
    {"value": "blas"},  # no time
    "blas",  # not an entry
])
def test_stale_or_invalid_answers_are_measured_again(cache_file, stored):
    cache_file.write_text(json.dumps({"format": 1, "hosts": {probe_cache.host_key(): {"float32_linear": stored}}}))
    before = time.time()
    choice = onednn.float32_linear()
    entry = kept(cache_file)["float32_linear"]
    assert entry["value"] == choice in ("blas", "onednn") and before <= entry["when"] <= time.time()


@pytest.mark.parametrize("entries", [["edited"], "blas", None, 3])
def test_a_malformed_host_entry_is_ignored_and_measured_again(cache_file, entries):
    other = "0" * 32
    cache_file.write_text(json.dumps({"format": 1, "hosts": {probe_cache.host_key(): entries, other: [1]}}))
    assert probe_cache.kept_answers() == {}
    assert probe_cache.remembered("p", lambda: 1, lambda value: value == 1) == 1
    assert kept(cache_file)["p"]["value"] == 1
    assert probe_cache.remembered("p", lambda: 2, lambda value: value == 1) == 1  # now read back
    assert probe_cache.kept_answers() == {"p": 1}


@pytest.mark.parametrize("text", ["not json {", "[]", json.dumps({"format": 99, "hosts": {}}), ""])
def test_an_unreadable_file_is_replaced(cache_file, text):
    cache_file.write_text(text)
    choice = onednn.float32_linear()
    assert kept(cache_file)["float32_linear"]["value"] == choice
    assert not list(cache_file.parent.glob(".probes.json.*"))  # no temporary file left behind


def test_an_unwritable_place_still_answers(tmp_path, monkeypatch, cache_file):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(probe_cache.CACHE_ENV, str(blocker / "probes.json"))  # its folder cannot be made
    assert onednn.float32_linear() in ("blas", "onednn")
    assert blocker.read_text() == ""


def test_the_cache_can_be_turned_off(tmp_path, monkeypatch, cache_file):
    monkeypatch.setenv(probe_cache.CACHE_ENV, "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert probe_cache.cache_path() is None
    onednn.float32_linear()
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists() and not cache_file.exists()


def test_the_default_place_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv(probe_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert probe_cache.cache_path() == tmp_path / "ast_hf" / "probes.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert probe_cache.cache_path() == tmp_path / "home" / ".cache" / "ast_hf" / "probes.json"


def test_a_forced_choice_neither_reads_nor_writes(cache_file, monkeypatch):
    write_cache(cache_file, {"float32_linear": "onednn"})
    monkeypatch.setenv("AST_HF_FP32_LINEAR", "blas")
    assert onednn.float32_linear() == "blas"
    assert kept(cache_file)["float32_linear"]["value"] == "onednn"


def test_the_bf16_policy_and_row_splits_are_kept(cache_file):
    """Read back as written (no bf16 units needed: nothing is measured), and a written policy is a whole one."""
    policy = {"matmul": "fp32", "attention": "fp32", "seconds": {"gemm fp32": 0.01, "gemm bf16": 0.02}}
    write_cache(cache_file, {"bf16_policy": policy, "bf16_row_split 1214x768x768": True,
                             "bf16_row_split 2428x768x768": False})
    assert onednn.bf16_policy() == onednn.BF16Policy(**policy)
    assert onednn.bf16_row_split(1214, 768, 768) is True
    assert onednn.bf16_row_split(2428, 768, 768) is False


@pytest.mark.skipif(not onednn.BF16_UNITS, reason="measuring the bf16 policy needs oneDNN bf16 matmuls here")
def test_a_measured_bf16_policy_is_kept_whole(cache_file):
    write_cache(cache_file, {"bf16_policy": {"matmul": "bf16", "attention": "sideways", "seconds": {}}})
    policy = onednn.bf16_policy()  # the invalid answer is measured again
    entry = kept(cache_file)["bf16_policy"]["value"]
    assert onednn.BF16Policy(**entry) == policy and policy.attention in ("fused", "per_head", "fp32")


def test_info_lists_the_kept_choices(cache_file, capsys):
    from ast_hf.cli import main

    assert main(["info"]) == 0
    assert f"none kept for this host in {cache_file}" in capsys.readouterr().out
    write_cache(cache_file, {"float32_linear": "onednn", "bf16_row_split 1214x768x768": True})
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"kernel choices kept for this host in {cache_file}:" in out
    assert '  float32_linear: "onednn"' in out and "  bf16_row_split 1214x768x768: true" in out
    assert "CPU: " + probe_cache.cpu_identity()[0] in out


def test_the_float32_attention_choice_is_kept_per_shape(cache_file):
    shape = (2, onednn.FP32_ATTENTION_MIN_TOKENS, onednn.FP32_ATTENTION_MIN_TOKENS, 32)
    choice = onednn.float32_attention(*shape)
    name = "float32_attention " + "x".join(map(str, shape))
    assert kept(cache_file)[name]["value"] == choice
    write_cache(cache_file, {name: "fused" if choice == "per_head" else "per_head"})
    onednn.float32_attention.cache_clear()
    assert onednn.float32_attention(*shape) != choice  # read back, not measured again


def test_the_float32_training_kernels_are_kept_per_shape(cache_file):
    choice = onednn.float32_training_kernels(60, 8, 16)  # 60 rows are measured as 64
    assert kept(cache_file)["float32_training 64x8x16"]["value"] == list(choice)
    other = ["torch" if kernel == "onednn" else "onednn" for kernel in choice]
    write_cache(cache_file, {"float32_training 64x8x16": other})
    onednn._measured_training_kernels.cache_clear()
    assert onednn.float32_training_kernels(70, 8, 16) == tuple(other)  # read back, not measured again
    write_cache(cache_file, {"float32_training 64x8x16": ["onednn", "mkl", "torch"]})  # not an answer
    onednn._measured_training_kernels.cache_clear()
    assert set(onednn.float32_training_kernels(64, 8, 16)) <= {"onednn", "torch"}
    assert set(kept(cache_file)["float32_training 64x8x16"]["value"]) <= {"onednn", "torch"}  # measured again
