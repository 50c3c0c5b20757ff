"""`python -m benchmarks [--quick] [--out DIR] [--sections ...]`: ast-hf against transformers' AST, side by side
in one process, interleaved, after warm-up; writes DIR/results.md (table) and DIR/results.png (chart)."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch

from .harness import Timing, load, paired_ratio
from .sections import SECTIONS, gemm_efficiency


def _cell(value, row, per_item: bool) -> str:
    if isinstance(value, Timing):
        per = row.get("per", 1)
        unit = "s" if value.median / (per if per_item else 1) > 1 else "ms"
        return value.summary(scale=per if per_item else 1, unit=unit)
    return f"{value:.1f} {row.get('unit', '')}".strip()


def ratio(row) -> float:
    ours, theirs = row["ours"], row["theirs"]
    if theirs is None:  # no counterpart in transformers
        return float("nan")
    if isinstance(ours, Timing) and isinstance(theirs, Timing):  # interleaved timings: per-pair ratios
        return paired_ratio(theirs, ours)
    ours = ours.median if isinstance(ours, Timing) else ours
    theirs = theirs.median if isinstance(theirs, Timing) else theirs
    if row.get("ratio_name") == "of GEMM":
        return ours / theirs
    if ours <= 0:  # e.g. a memory rise below what the sampler resolves
        return float("inf") if theirs > 0 else 1.0
    return theirs / ours  # time or memory: above 1 means ast-hf is better


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| section | case | ast-hf | transformers | ratio | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        per_item = row.get("per", 1) > 1
        label = " (per clip)" if per_item else ""
        theirs = "—" if row["theirs"] is None else _cell(row["theirs"], row, per_item)
        r = ratio(row)
        lines.append(f"| {row['section']} | {row['case']}{label} | {_cell(row['ours'], row, per_item)} | "
                     f"{theirs} | {'—' if r != r else f'{r:.2f}x'} | {row.get('note', '')} |")
    lines.append("")
    lines.append("Times are medians (min-max) over interleaved repeats after warm-up (the order flips every repeat). "
                 "ratio = transformers / ast-hf (time, memory; above 1 is better for ast-hf), or ast-hf / GEMM for "
                 "efficiency rows; for timings it is the median of the per-repeat ratios (each pair ran back to "
                 "back), so it can differ from the ratio of the medians shown.")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["theirs"] is not None]
    labels = [f"{r['section']}: {r['case']}" for r in rows]
    values = [ratio(r) for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.5))
    colours = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.barh(range(len(rows)), values, color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (transformers / ast-hf; efficiency rows: ast-hf / GEMM)")
    ax.set_title(title, fontsize=9)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small model and few repeats (CI-size run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5, quick 3)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    # The kernel choices are part of what is measured: probe them in this run, neither reading nor keeping answers
    # of other runs (ast_hf.probe_cache), unless the caller pointed the cache somewhere.
    os.environ.setdefault("AST_HF_PROBE_CACHE", "0")
    from ast_hf.allocator import keep_freed_memory
    from ast_hf.atomic_io import json_text, write_text_atomic

    # As ast-hf's command line does; one process, so transformers' side runs under the same allocator setting.
    kept = keep_freed_memory()
    torch.manual_seed(0)
    load_before = load()
    rows: list[dict] = []
    from tqdm.auto import tqdm

    for name in tqdm(args.sections, desc="benchmark sections"):
        fn = SECTIONS[name]
        if name == "memory":
            rows += fn(args.quick)
        elif name == "forward":
            forward_rows = fn(args.quick, repeats)
            rows += forward_rows
            rows += gemm_efficiency(args.quick, repeats, forward_rows)
            if torch.cuda.is_available():
                rows += fn(args.quick, repeats, device="cuda")
        else:
            rows += fn(args.quick, repeats)
    import transformers

    from .host import describe

    header = (f"Measured {datetime.date.today()} on {describe()}; "
              f"torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
              f"{'quick' if args.quick else 'full'} mode, {repeats} repeats; malloc keeps freed memory "
              f"(ast_hf.allocator, both sides): {'yes' if kept else 'no'}; {load_before} at the start, "
              f"{load()} at the end.")
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, header)
    tmp = args.out / "results.md.tmp"
    tmp.write_text(table)
    os.replace(tmp, args.out / "results.md")
    chart(rows, args.out / "results.png", header[:150])
    raw = [{k: (v.seconds if isinstance(v, Timing) else v) for k, v in r.items()} | {"ratio": ratio(r)}
           | ({"ratio_of_medians": r["theirs"].median / r["ours"].median} if isinstance(r["ours"], Timing)
              and isinstance(r["theirs"], Timing) else {}) for r in rows]
    # Atomically, as results.md; strict JSON: a row without a transformers side has no ratio (null, not NaN).
    write_text_atomic(args.out / "results.json", json_text(raw, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
