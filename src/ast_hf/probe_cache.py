"""Kernel choices measured on this host, kept on disk so that later processes skip the measuring.

`onednn` decides a few things by timing them at first use (which float32 GEMM is faster here, whether a bf16
model computes in bf16, how a bf16 linear splits its rows). The float32 probe alone costs about 0.6 s, a tenth of
a one-file `ast-hf predict`. Each answer is kept in a JSON file under a key naming everything it depends on: the
CPU (model name and flags), the vector ISA torch and oneDNN are allowed (`ATEN_CPU_CAPABILITY`,
`ONEDNN_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`, ...), torch's build, the thread count and ast-hf's version.
A file on a home folder shared by several machines therefore serves each host class its own answers, and a
capped run never reads an uncapped one's.

Where: `$AST_HF_PROBE_CACHE` (a file path; `0` neither reads nor writes), else
`$XDG_CACHE_HOME/ast_hf/probes.json` (`~/.cache/...`). Answers older than `MAX_AGE_DAYS` are measured again
(a host's libraries and load change), and so is anything unreadable, of another format or not a valid answer. The
file is replaced atomically; two processes writing at once may drop one answer, which is then measured again.
Where the file cannot be written (a read-only home), every process measures, as without the cache.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic_io import write_text_atomic

logger = logging.getLogger(__name__)

CACHE_ENV = "AST_HF_PROBE_CACHE"
FORMAT = 1
MAX_AGE_DAYS = 30
# Environment variables that change which kernels run, hence what a probe measures.
KERNEL_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE",
                      "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE", "AST_HF_ONEDNN")


def cache_path() -> Path | None:
    """The cache file, or None where `AST_HF_PROBE_CACHE=0` turns the cache off."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting == "0":
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ast_hf" / "probes.json"


@functools.cache
def cpu_identity() -> tuple[str, frozenset[str]]:
    """("Intel(R) Xeon(R) ...", {"avx512f", "amx_bf16", ...}) of this CPU from /proc/cpuinfo (flags, or Features on
    Arm); elsewhere the platform's processor string and no flags."""
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name == "model name" and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def host_key() -> str:
    """A digest of everything a probe's answer depends on (module docstring); computed per call, as the thread
    count and the environment may change within a process."""
    import torch

    from . import __version__

    model, flags = cpu_identity()
    parts = {"cpu": model, "flags": sorted(flags), "torch": torch.__version__,
             "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
             "ast_hf": __version__, "env": {name: os.environ.get(name) for name in KERNEL_ENVIRONMENT}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _read(path: Path) -> dict:
    """The file's {host key: {probe: {"value", "when"}}}; empty where it is missing, unreadable or of another
    format, and without the hosts whose entry is not a dict (an edited file: they are measured again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("hosts"), dict):
        return {}
    return {key: entries for key, entries in data["hosts"].items() if isinstance(entries, dict)}


def _fresh(entry, valid: Callable[[Any], bool] = lambda value: True) -> bool:
    """Whether a read entry is {"value", "when"} measured within `MAX_AGE_DAYS` (and not in the future), its value
    one that `valid` accepts."""
    return (isinstance(entry, dict) and isinstance(entry.get("when"), (int, float))
            and 0 <= time.time() - entry["when"] < MAX_AGE_DAYS * 86400 and valid(entry.get("value")))


def kept_answers() -> dict[str, Any]:
    """{probe: value} of the fresh answers kept for this host (nothing is measured); empty with the cache off."""
    path = cache_path()
    if path is None:
        return {}
    entries = _read(path).get(host_key(), {})
    return {probe: entry["value"] for probe, entry in sorted(entries.items()) if _fresh(entry)}


def remembered(probe: str, measure: Callable[[], Any], valid: Callable[[Any], bool]) -> Any:
    """This host's kept answer to `probe` if there is a fresh one that `valid` accepts, else `measure()`, kept.

    probe: a name for the question, with any shape it depends on (e.g. "bf16_row_split 1214x768x768").
    measure: returns the answer, a JSON value (str, bool, number, list, dict).
    valid: whether a value read back is a possible answer (the file is not trusted: edited, or older code's).
    """
    path = cache_path()
    if path is None:
        return measure()
    key = host_key()
    entry = _read(path).get(key, {}).get(probe)
    if _fresh(entry, valid):
        return entry["value"]
    value = measure()
    hosts = _read(path)  # read again: another process may have written meanwhile
    hosts.setdefault(key, {})[probe] = {"value": value, "when": time.time()}
    try:
        write_text_atomic(path, json.dumps({"format": FORMAT, "hosts": hosts}, indent=1, sort_keys=True))
    except OSError as error:
        logger.info("ast-hf could not keep its kernel choices in %s (%s); they are measured in every process",
                    path, error)
    return value


__all__ = ["cache_path", "cpu_identity", "host_key", "kept_answers", "remembered", "CACHE_ENV", "MAX_AGE_DAYS"]
