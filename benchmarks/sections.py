"""The benchmark sections. Each returns a list of result rows:
{"section", "case", "ours", "theirs", "ratio", "unit", "note"} with times as `Timing` objects or plain numbers."""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .harness import interleaved, paired_ratio, peak_memory_mib

SR = 16000


def model_config(quick: bool, **overrides):
    """AST base (the released models' size) or, with --quick, a small one; random weights."""
    from ast_hf import ASTConfig

    fields = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  max_length=1024, num_labels=527, layer_norm_eps=1e-6)
    if quick:
        fields.update(hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=768,
                      max_length=256)
    fields.update(overrides)
    return ASTConfig(**fields)


def twin_models(config, attn_implementation: str, dtype: torch.dtype, device: str):
    """Ours and transformers' AST with identical (random) weights."""
    import transformers

    from ast_hf import ASTForAudioClassification

    torch.manual_seed(0)
    ours = ASTForAudioClassification(config)
    with tempfile.TemporaryDirectory() as folder:
        ours.save_pretrained(folder)
        ours = ASTForAudioClassification.from_pretrained(folder, attn_implementation=attn_implementation, dtype=dtype)
        theirs = transformers.ASTForAudioClassification.from_pretrained(
            folder, attn_implementation=attn_implementation, dtype=dtype)
    return ours.to(device).eval(), theirs.to(device).eval()


def clip_tokens(config, frames: int | None = None) -> int:
    """Tokens of one clip of `frames` frames (default `config.max_length`): its patches and the prefix tokens."""
    return math.prod(config.patch_grid(frames)) + config.num_prefix_tokens


def forward_gmacs(config, frames: int | None = None, prefix_only: bool = False) -> float:
    """Multiply-accumulates of one clip's forward, in GMAC (patch embedding + encoder + head).

    prefix_only: the last layer computes only the prefix tokens' outputs (keys and values still for every token),
    as ast-hf's classifier does; transformers' computes every token's."""
    f, t = config.patch_grid(frames)
    n, d, m = clip_tokens(config, frames), config.hidden_size, config.intermediate_size

    def layer(queries: int) -> int:
        return 2 * n * d * d + 2 * queries * d * d + 2 * queries * d * m + 2 * queries * n * d

    last = layer(config.num_prefix_tokens if prefix_only else n)
    return ((config.num_hidden_layers - 1) * layer(n) + last + f * t * d * config.patch_size ** 2) / 1e9


def feature_extraction(quick: bool, repeats: int) -> list[dict]:
    import transformers

    from ast_hf import ASTFeatureExtractor

    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(10 * SR)).astype(np.float32) for _ in range(16)]
    ours, theirs = ASTFeatureExtractor(), transformers.ASTFeatureExtractor()
    rows = []
    for batch in (1, 16):
        data = clips[:batch]
        a = ours(data, sampling_rate=SR, return_tensors="pt")["input_values"]
        b = theirs(data, sampling_rate=SR, return_tensors="pt")["input_values"]
        diff = (a - b).abs().max().item()
        t = interleaved({"ours": lambda: ours(data, sampling_rate=SR, return_tensors="pt"),
                         "theirs": lambda: theirs(data, sampling_rate=SR, return_tensors="pt")}, repeats)
        rows.append(dict(section="feature extraction", case=f"{batch} clip(s) x 10 s, CPU", ours=t["ours"],
                         theirs=t["theirs"], per=batch, note=f"max |diff| {diff:.1e}"))
        if torch.cuda.is_available():  # ours on CUDA tensors (no host round trip) against theirs, which is CPU-only
            gpu = [torch.from_numpy(c).cuda() for c in data]

            def on_gpu():
                out = ours(gpu, sampling_rate=SR, return_tensors="pt")["input_values"]
                torch.cuda.synchronize()
                return out

            t = interleaved({"ours": on_gpu, "theirs": lambda: theirs(data, sampling_rate=SR, return_tensors="pt")},
                            repeats)
            rows.append(dict(section="feature extraction", case=f"{batch} clip(s) x 10 s, ours on CUDA",
                             ours=t["ours"], theirs=t["theirs"], per=batch, note="theirs on CPU (it has no GPU path)"))
    return rows


def forward(quick: bool, repeats: int, device: str = "cpu") -> list[dict]:
    from ast_hf import onednn

    rows = []
    config = model_config(quick)
    # bf16 on a CPU without bf16 units (or with the ISA capped below them) is emulated on both sides, tens of
    # times slower than float32: not a case anyone should run, so not timed.
    bf16 = device != "cpu" or onednn.BF16_UNITS
    dtypes = [torch.float32] + [torch.bfloat16] * bf16 + ([torch.float16] if device == "cuda" else [])
    # Reduced precision: each side's error against transformers' float32 forward of the same weights.
    reference = twin_models(config, "sdpa", torch.float32, device)[1]
    ours_float32 = {}  # attn -> our float32 model: the reduced-precision goals are against it, timed side by side
    for attn in ("sdpa", "eager"):
        for dtype in dtypes:
            ours, theirs = twin_models(config, attn, dtype, device)
            if dtype == torch.float32:
                ours_float32[attn] = ours
            for batch in (1, 8):
                x = torch.randn(batch, config.max_length, config.num_mel_bins, device=device, dtype=dtype)
                def call(model, x=x):
                    out = model(x)
                    if device == "cuda":  # time the kernels, not their launch
                        torch.cuda.synchronize()
                    return out

                with torch.inference_mode():
                    logits = {"ours": ours(x).logits.float(), "theirs": theirs(x).logits.float()}
                    note = f"max |logit diff| {(logits['ours'] - logits['theirs']).abs().max().item():.1e}"
                    if dtype != torch.float32:
                        want = reference(x.float()).logits
                        errors = {k: (v - want).abs().max().item() for k, v in logits.items()}
                        note += f"; vs float32: ours {errors['ours']:.1e}, theirs {errors['theirs']:.1e}"
                    t = interleaved({"ours": lambda: call(ours), "theirs": lambda: call(theirs)}, repeats)
                rows.append(dict(section="forward", case=f"batch {batch}, {attn}, {str(dtype)[6:]}, {device}",
                                 ours=t["ours"], theirs=t["theirs"], per=batch, note=note))
                if dtype != torch.float32 and attn == "sdpa":
                    x32 = x.float()
                    with torch.inference_mode():
                        t = interleaved({"ours": lambda: call(ours),
                                         "theirs": lambda: call(ours_float32[attn], x32)}, repeats)
                    rows.append(dict(section="forward", per=batch, ours=t["ours"], theirs=t["theirs"],
                                     case=f"batch {batch}, {attn}, {device}: ast-hf {str(dtype)[6:]} vs ast-hf float32",
                                     note="the transformers column is ast-hf's float32 forward of the same input"))
    return rows


def kernel_choices(config) -> dict[str, str]:
    """The float32 CPU kernels our forward of `config` runs in this process (`ast_hf.onednn`, probed here at first
    use), as the environment variables that force them: a fresh process measuring memory gets them, so that it runs
    the kernels this process timed and does not probe (the probes' buffers are no part of a forward: with --quick
    they were ~95 of the ~123 MiB a first forward added, where transformers' side probes nothing)."""
    from ast_hf import onednn

    if not onednn.DTYPES:
        return {}
    tokens, heads = clip_tokens(config), config.num_attention_heads
    return {"AST_HF_FP32_LINEAR": onednn.float32_linear(),
            "AST_HF_FP32_ATTENTION": onednn.float32_attention(heads, tokens, tokens, config.hidden_size // heads)}


def _in_fresh_process(*args: str, env: dict[str, str] | None = None) -> dict:
    """Run `python -m benchmarks.sections ARGS` (see the bottom of this file), with `env` added to the environment;
    its last stdout line is JSON."""
    import json
    import os
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-m", "benchmarks.sections", *args], check=True, capture_output=True,
                           text=True, cwd=Path(__file__).parents[1], env=os.environ | (env or {}))
    return json.loads(child.stdout.strip().splitlines()[-1])


def _peak_rss_mib() -> float:
    """The process's peak resident set (VmHWM: unlike ru_maxrss, not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def forward_memory_child(side: str, quick: bool, batch: int = 8) -> dict:
    """In a fresh process: build one side's model (random weights), return the RSS rise of its first batch-8 fp32
    sdpa forward (no warm-up, so no earlier run's freed memory hides part of it)."""
    import transformers

    from ast_hf import ASTForAudioClassification

    config = model_config(quick, attn_implementation="sdpa")
    if side == "theirs":
        model = transformers.ASTForAudioClassification(transformers.ASTConfig(**{
            k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                            "intermediate_size", "max_length", "num_labels", "layer_norm_eps")}),
        ).eval()
        model.config._attn_implementation = "sdpa"
    else:
        model = ASTForAudioClassification(config).eval()
    x = torch.randn(batch, config.max_length, config.num_mel_bins)
    with torch.inference_mode():
        return dict(added=peak_memory_mib(lambda: model(x)))


def forward_memory(quick: bool, batch: int = 8) -> list[dict]:
    """Peak resident memory added by one batch-8 fp32 sdpa forward, each side in 3 fresh processes (median)."""
    peaks = {"ours": [], "theirs": []}
    env = kernel_choices(model_config(quick))
    for _ in range(3):
        for side in peaks:
            peaks[side].append(_in_fresh_process("forward-memory", side, *["--quick"] * quick, env=env)["added"])
    med = {k: statistics.median(v) for k, v in peaks.items()}
    return [dict(section="forward memory", case=f"batch {batch}, sdpa, float32: peak RSS added by the call (fresh "
                                               f"process)", ours=med["ours"], theirs=med["theirs"], unit="MiB")]


def training_kernels_note(config, rows: int) -> str:
    """Which kernel ran each float32 training GEMM (forward / grad input / grad weight) of the encoder's linears
    at `rows` rows (`onednn.float32_training_kernels`, answers measured at the run's first step)."""
    from ast_hf import onednn

    if not onednn.DTYPES:
        return "float32 training GEMMs: torch's (AST_HF_ONEDNN=0)"
    width, hidden = config.hidden_size, config.intermediate_size
    shapes = {"q/k/v": (width, 3 * width), "output": (width, width), "MLP up": (width, hidden),
              "MLP down": (hidden, width)}
    chosen = ", ".join(f"{name} {'/'.join(onednn.float32_training_kernels(rows, *shape))}"
                       for name, shape in shapes.items())
    return f"float32 training GEMMs (forward/grad input/grad weight): {chosen}"


def training_step(quick: bool, repeats: int) -> list[dict]:
    """One AdamW step (forward, backward, update) of ours and transformers' AST, same weights and batch, float32;
    then ours with the training speed options (PaSST's structured patchout as for its 10 s AudioSet models: 40 of
    the 101 time columns and 4 of the 12 frequency rows of the base grid dropped; bf16 autocast where the CPU has
    bf16 units, as `Trainer(bf16=True)` runs it) against transformers' float32 step and, for bf16, against
    transformers' own bf16 autocast step. All candidates interleaved in one run."""
    from ast_hf import onednn

    config = model_config(quick)
    freq_rows, time_columns = config.patch_grid()
    drop_time, drop_freq = (time_columns * 40 // 101, freq_rows // 3) if not quick else (time_columns // 3, 1)
    ours, theirs = twin_models(config, "sdpa", torch.float32, "cpu")
    batch = 2 if not quick else 8
    x = torch.randn(batch, config.max_length, config.num_mel_bins)
    y = torch.zeros(batch, config.num_labels)
    y[:, 0] = 1
    bf16 = onednn.BF16_UNITS
    optimisers = {}
    for model in (ours, theirs):
        model.train()
        model.config.problem_type = "multi_label_classification"
        optimisers[id(model)] = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(model, patchout=False, autocast=False):
        def run():
            if patchout:
                model.set_patchout(time=drop_time, freq=drop_freq)
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = model(x, labels=y).loss
                loss.backward()
                optimisers[id(model)].step()
                optimisers[id(model)].zero_grad(set_to_none=True)
            finally:
                if patchout:
                    model.set_patchout()
        return run

    steps = {"ours": step(ours), "theirs": step(theirs), "ours patchout": step(ours, patchout=True)}
    if bf16:
        steps |= {"ours bf16": step(ours, autocast=True), "theirs bf16": step(theirs, autocast=True),
                  "ours bf16 patchout": step(ours, patchout=True, autocast=True)}
    t = interleaved(steps, repeats)
    patches = f"{(freq_rows - drop_freq) * (time_columns - drop_time)} of {freq_rows * time_columns} patches"
    rows = [dict(section="training step", case=f"batch {batch}, sdpa, float32, AdamW", ours=t["ours"],
                 theirs=t["theirs"], per=batch, note=training_kernels_note(config, batch * clip_tokens(config))),
            dict(section="training step", case=f"ours with patchout ({patches}) vs theirs, float32",
                 ours=t["ours patchout"], theirs=t["theirs"], per=batch,
                 note=f"{drop_time} time columns and {drop_freq} frequency rows dropped per batch")]
    if bf16:
        rows += [dict(section="training step", case="bf16 autocast, both sides", ours=t["ours bf16"],
                      theirs=t["theirs bf16"], per=batch),
                 dict(section="training step", case="ours bf16 autocast vs theirs float32", ours=t["ours bf16"],
                      theirs=t["theirs"], per=batch),
                 dict(section="training step", case=f"ours bf16 autocast + patchout ({patches}) vs theirs float32",
                      ours=t["ours bf16 patchout"], theirs=t["theirs"], per=batch)]
    return rows


def token_reduction(quick: bool, repeats: int) -> list[dict]:
    """Opt-in token reduction at inference (`set_token_reduction`): ast-hf with patches dropped after 4 layers (1
    with --quick) against the same ast-hf model in full, fp32 sdpa, batch 2 on the CPU; the "transformers" column
    holds the full model, so the ratio is the speed-up. The note gives the logit cosine to the full model (random
    weights here: the accuracy cost on a trained model is the demo's to measure) and the tokens per later layer."""
    from ast_hf import ASTForAudioClassification

    config = model_config(quick, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = ASTForAudioClassification(config).eval()
    after_layer = 1 if quick else 4
    x = torch.randn(2, config.max_length, config.num_mel_bins)
    f, t = config.patch_grid()
    rows = []
    with torch.inference_mode():
        full = model(x).logits
        for keep in (0.75, 0.5, 0.25):
            model.set_token_reduction(keep=keep, after_layer=after_layer)
            reduced = model(x).logits
            cosine = torch.nn.functional.cosine_similarity(reduced, full, dim=-1).min().item()
            calls = {}
            for name, setting in (("ours", keep), ("theirs", None)):
                def call(setting=setting):
                    model.set_token_reduction(keep=setting, after_layer=after_layer)
                    return model(x)

                calls[name] = call
            timing = interleaved(calls, repeats)
            model.set_token_reduction(None)
            rows.append(dict(section="tokens", case=f"keep {keep:.0%} of patches after layer {after_layer} of "
                                                    f"{config.num_hidden_layers}, batch 2, fp32",
                             ours=timing["ours"], theirs=timing["theirs"], per=2,
                             note=f"transformers column: the full ast-hf model; logit cosine to it >= {cosine:.4f}; "
                                  f"{2 + round(keep * f * t)} of {2 + f * t} tokens in the later layers"))
    return rows


def gemm_efficiency(quick: bool, repeats: int, forward_rows: list[dict]) -> list[dict]:
    """Achieved GFLOP/s of the batch-8 fp32 sdpa forward against a same-shape GEMM (the MLP's first matmul),
    measured in the same run through torch's default BLAS (`a @ b`) and through oneDNN; the faster is the
    machine's figure. Then, at batch 8 and at batch 1 (each against the GEMMs of its own row count), the roofline
    of the comparison: transformers' measured time over the time of our forward's arithmetic (attention included)
    at a GEMM rate, i.e. the most any implementation of our arithmetic could lead by on this host; the measured
    lead is shown as a share of it. Two rates, two rows: that same-shape GEMM's (one weight, alone) and the rate
    the model's own linears sustain (`_model_linears_gflops`), nearer to what a forward runs."""
    from ast_hf import onednn

    config = model_config(quick)
    rows = []
    for batch in (8, 1):
        row = next((r for r in forward_rows if r["case"].startswith(f"batch {batch}, sdpa, float32")), None)
        if row is None:
            continue
        tokens = batch * clip_tokens(config)
        a = torch.randn(tokens, config.hidden_size)
        w = torch.randn(config.intermediate_size, config.hidden_size)
        gemms = {"torch BLAS": lambda: a @ w.t()}
        if torch.backends.mkldnn.is_available():
            gemms["oneDNN"] = lambda: onednn.linear(a, w)
        timings = interleaved(gemms, repeats * 5)
        flop = 2 * tokens * config.hidden_size * config.intermediate_size
        figures = {name: flop / timing.median / 1e9 for name, timing in timings.items()}
        gemm_gflops = max(figures.values())
        # Each side's own arithmetic: ours skips the patch tokens' outputs in the last layer (the head reads the
        # prefix).
        flops = {side: 2 * forward_gmacs(config, prefix_only=side == "ours") * batch for side in ("ours", "theirs")}
        note_gemm = ", ".join(f"{k} {v:.0f}" for k, v in figures.items())
        if batch == 8:
            for side in ("ours", "theirs"):
                achieved = flops[side] / row[side].median
                rows.append(dict(section="efficiency", case=f"{side}: forward GFLOP/s vs same-shape GEMM",
                                 ours=achieved, theirs=gemm_gflops, unit="GFLOP/s", ratio_name="of GEMM",
                                 note=f"{100 * achieved / gemm_gflops:.0f}% of the best GEMM ({note_gemm} GFLOP/s)"))
        measured = paired_ratio(row["theirs"], row["ours"])
        sustained = _model_linears_gflops(config, tokens, repeats)
        for rate, which, how in (
                (gemm_gflops, "the best GEMM rate", f"the best GEMM of {tokens} rows: {note_gemm}"),
                (max(sustained.values()), "the model's linears' rate",
                 "the rate the faster library sustains over the model's own linears, every layer's weights in "
                 f"turn, {tokens} rows: " + ", ".join(f"{k} {v:.0f}" for k, v in sustained.items()))):
            at_rate = flops["ours"] / rate  # seconds: GFLOP / (GFLOP/s)
            bound = row["theirs"].median / at_rate
            rows.append(dict(section="efficiency", per=batch,
                             case=f"roofline, batch {batch}: transformers vs our arithmetic at {which}",
                             ours=1e3 * at_rate / batch, theirs=1e3 * row["theirs"].median / batch, unit="ms",
                             note=f"the most any implementation of our forward's arithmetic could lead by here "
                                  f"(every FLOP, attention included, at {rate:.0f} GFLOP/s, {how}); measured "
                                  f"{measured:.2f}x = {100 * measured / bound:.0f}% of it"))
    return rows


def _model_linears_gflops(config, tokens: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of every linear of a forward (q, k, v, output, the two MLP matmuls of each layer, with biases and
    weights of their own, in the model's order) over `tokens` rows, through torch's default BLAS and through oneDNN,
    interleaved: the GEMM rate over a forward's own shapes (the 768-wide projections as well as the MLP's) with its
    weights read in turn as the model reads them. A second estimate of the rate beside `gemm_efficiency`'s single
    same-shape GEMM, nearer to what a forward runs; where the two disagree, a roofline is no firmer than their
    spread."""
    from ast_hf import onednn

    d, m = config.hidden_size, config.intermediate_size
    generator = torch.Generator().manual_seed(0)
    x, hidden = torch.randn(tokens, d, generator=generator), torch.randn(tokens, m, generator=generator)
    shapes = [(d, d)] * 4 + [(m, d), (d, m)]  # (out, in) of q, k, v, output, MLP up, MLP down
    layers = [[(torch.randn(o, i, generator=generator) / i ** 0.5, torch.zeros(o)) for o, i in shapes]
              for _ in range(config.num_hidden_layers)]

    def stack(linear):
        def run():
            for layer in layers:
                for weight, bias in layer:
                    linear(x if weight.shape[1] == d else hidden, weight, bias)
        return run

    candidates = {"torch BLAS": stack(torch.nn.functional.linear)}
    if torch.backends.mkldnn.is_available():
        candidates["oneDNN"] = stack(onednn.linear)
    with torch.inference_mode():
        timings = interleaved(candidates, repeats)
    flop = 2 * tokens * sum(o * i for o, i in shapes) * config.num_hidden_layers
    return {name: flop / timing.median / 1e9 for name, timing in timings.items()}


def _write_clips(folder, seconds: float, count: int) -> list[str]:
    import soundfile as sf

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        t = np.arange(int(seconds * SR)) / SR
        wave = 0.1 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * (200 + 100 * i) * t)
        path = f"{folder}/clip{i:02d}.wav"
        sf.write(path, wave.astype(np.float32), SR)
        paths.append(path)
    return paths


def end_to_end(quick: bool, repeats: int) -> list[dict]:
    """16 audio files of 10 s to top-5 labels: `ast-hf predict`'s engine against `transformers.pipeline`."""
    import transformers

    from ast_hf import ASTFeatureExtractor, predict_files

    config = model_config(quick)
    ours, theirs = twin_models(config, "sdpa", torch.float32, "cpu")
    fe_ours = ASTFeatureExtractor(max_length=config.max_length)
    fe_theirs = transformers.ASTFeatureExtractor(max_length=config.max_length)
    clip_seconds = config.max_length / 100
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_clips(folder, clip_seconds, 16)
        clf = transformers.pipeline("audio-classification", model=theirs, feature_extractor=fe_theirs, device="cpu")

        def run_ours():
            predict_files(paths, ours, fe_ours, f"{folder}/out.jsonl", top_k=5, batch_size=8, progress=False)
            import os

            os.remove(f"{folder}/out.jsonl")

        def run_theirs():
            clf(paths, top_k=5, batch_size=8)

        t = interleaved({"ours": run_ours, "theirs": run_theirs}, max(1, repeats // 2))
    return [dict(section="end to end", case=f"16 files x {clip_seconds:.2f} s -> top-5 labels, CPU", ours=t["ours"],
                 theirs=t["theirs"], per=16, note="ast-hf predict engine vs transformers.pipeline(batch_size=8)")]


def long_audio_memory(path: str, quick: bool) -> dict:
    """In a fresh process: tag one recording with the defaults, return the process's peak RSS and what the
    tagging added above the loaded model, in MiB."""
    from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, tag_long_audio

    config = model_config(quick)
    model = ASTForAudioClassification(config).eval()
    fe = ASTFeatureExtractor(max_length=config.max_length)
    added = peak_memory_mib(lambda: tag_long_audio(model, fe, path, progress=False))
    return dict(peak=_peak_rss_mib(), added=added)


def long_audio(quick: bool, repeats: int) -> list[dict]:
    """Cost of sliding-window tagging (10.24 s windows, 5 s hop, defaults) against recording length: time, and
    peak memory, each length in a fresh process (so that no earlier run's freed memory hides a rise): the whole
    process's peak RSS and the part the tagging added above the loaded model. transformers' AST has no
    long-audio path (it sees the first 10.24 s): no other side."""
    from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, tag_long_audio

    config = model_config(quick)
    model = ASTForAudioClassification(config).eval()
    fe = ASTFeatureExtractor(max_length=config.max_length)
    lengths = [1, 10, 30, 60] if quick else [1, 5, 10, 30, 60, 120]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seconds in lengths:
            (path,) = _write_clips(folder, seconds, 1)
            last = {}

            def run(path=path):
                last["tags"] = tag_long_audio(model, fe, path, progress=False)

            timing = interleaved({"ours": run}, max(1, repeats // 2))["ours"]
            windows = len(last["tags"].starts)
            memory = _in_fresh_process("long-audio", path, *["--quick"] * quick, env=kernel_choices(config))
            rows.append(dict(section="long audio", case=f"{seconds:>3d} s recording", ours=timing, theirs=None,
                             memory=memory["peak"], memory_added=memory["added"],
                             note=f"{windows} window(s); process peak RSS {memory['peak']:.0f} MiB, "
                                  f"+{memory['added']:.0f} MiB above the loaded model"))
    return rows


def events(quick: bool, repeats: int) -> list[dict]:
    """When, not just what. Live: real-time factor (compute seconds / audio seconds) of `StreamingTagger` fed
    0.1 s chunks, at a 0.5 s hop for a Speech-Commands-size model (128 frames) and a 5 s hop for a 10.24 s model
    (goal <= 0.5 both), with the median window latency. Frame scores of a 60 s recording against `tag_long_audio`
    on the same recording (ours = frame scores, theirs = tag_long_audio; goal: ratio >= 1 / 1.2)."""
    import time

    from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, StreamingTagger, frame_scores, tag_long_audio

    rng = np.random.default_rng(0)
    rows = []
    seconds = 20.0 if quick else 60.0
    wave = (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    for max_length, hop in ((128, 0.5), (1024, 5.0)):
        config = model_config(quick, max_length=max_length)
        model = ASTForAudioClassification(config).eval()
        fe = ASTFeatureExtractor(max_length=config.max_length)
        chunk = SR // 10
        latencies = []

        def stream(model=model, fe=fe, hop=hop):
            tagger = StreamingTagger(model, fe, hop=hop)
            for first in range(0, len(wave), chunk):
                latencies.extend(w.latency for w in tagger.feed(wave[first:first + chunk]))
            tagger.flush()

        timing = interleaved({"ours": stream}, max(1, repeats // 2))["ours"]
        rows.append(dict(section="events", case=f"live, {max_length} frames, hop {hop:g} s, 0.1 s chunks",
                         ours=timing, theirs=None,
                         note=f"{seconds:.0f} s of audio: real-time factor {timing.median / seconds:.3f} "
                              f"(goal <= 0.5); median window latency {statistics.median(latencies) * 1000:.0f} ms"))
    config = model_config(quick)
    model = ASTForAudioClassification(config).eval()
    fe = ASTFeatureExtractor(max_length=config.max_length)
    started = time.perf_counter()
    t = interleaved({"ours": lambda: frame_scores(model, fe, wave, sampling_rate=SR, progress=False),
                     "theirs": lambda: tag_long_audio(model, fe, wave, sampling_rate=SR, progress=False)},
                    max(1, repeats // 2))
    rows.append(dict(section="events", case=f"frame scores of a {seconds:.0f} s recording vs tag_long_audio",
                     ours=t["ours"], theirs=t["theirs"],
                     note=f"ratio = tag_long_audio / frame_scores (goal >= 0.83, i.e. <= 1.2x); "
                          f"{time.perf_counter() - started:.0f} s in all"))
    return rows


def threads_under_load(quick: bool, repeats: int) -> list[dict]:
    """The demo's training step (its model and batch: D = 128, 4 layers, 32 x 128 frames; AdamW) with every core
    against the thread count `ast_hf.threads.choose_threads` picks, on an idle machine and with one busy neighbour
    process (a Python busy loop) beside it. The "transformers" column holds every core (what torch takes by default), so
    the ratio is what the choice gains; the note names the chosen count."""
    import subprocess
    import sys
    from dataclasses import replace

    from ast_hf import ASTForAudioClassification
    from ast_hf.threads import choose_threads, usable_cores
    from ast_hf.training.demo import DemoSettings, demo_config

    settings = replace(DemoSettings(), num_hidden_layers=1) if quick else DemoSettings()
    classes = 10
    torch.manual_seed(0)
    model = ASTForAudioClassification(demo_config(settings, [f"class {i}" for i in range(classes)])).train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    x = torch.randn(settings.batch_size, settings.max_length, settings.num_mel_bins)
    y = torch.randint(0, classes, (settings.batch_size,))

    def step():
        model(x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    every = usable_cores()
    before = torch.get_num_threads()
    rows = []
    for neighbour in (False, True):
        busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None)
        try:
            if busy is not None:
                time.sleep(1.0)  # let the neighbour show up in the CPU counters
            chosen = choose_threads()
            calls = {}
            for name, threads in (("ours", chosen), ("theirs", every)):
                def call(threads=threads):
                    torch.set_num_threads(threads)
                    step()

                calls[name] = call
            timing = interleaved(calls, repeats * 4)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
            torch.set_num_threads(before)
        rows.append(dict(section="threads", case=f"training step, {'one busy neighbour' if neighbour else 'idle'}",
                         ours=timing["ours"], theirs=timing["theirs"],
                         note=f"ast-hf column: {chosen} thread(s) chosen; transformers column: all {every} cores"))
    return rows


# The training options timed per epoch on the demo (their accuracy on the demo: docs/training.md): patchout
# settings (`set_patchout`'s arguments) and bf16 autocast, on CPUs that have bf16 units.
DEMO_EPOCH_OPTIONS = {"patchout-time 2": dict(time=2), "patchout-time 3": dict(time=3),
                      "patchout-time 5": dict(time=5), "patchout-random 0.15": dict(random=0.15)}
DEMO_EPOCH_BF16_OPTIONS = {"bf16": {}, "bf16 + patchout-random 0.15": dict(random=0.15)}


def demo_epoch(quick: bool, repeats: int) -> list[dict]:
    """One training epoch of the demo (`ast-hf demo`: its data, collator with SpecAugment and noise, model size,
    batch and fused AdamW, as `ASTTrainer` runs it) with transformers' AST and with ours, plain and with each of
    `DEMO_EPOCH_OPTIONS`, all interleaved epoch by epoch. Every candidate gets the same collator, with the
    demo's feature cache (filled in the warm-up epoch, as in the demo's first epoch): the per-epoch time is that of
    the demo's later epochs, the model's steps and the augmentation."""
    import transformers
    from torch.utils.data import DataLoader

    from ast_hf import ASTFeatureExtractor, ASTForAudioClassification, onednn
    from ast_hf.training.collator import ASTAudioCollator
    from ast_hf.training.data import label_names, load_audio_dataset
    from ast_hf.training.demo import QUICK, DemoSettings, demo_config, make_demo_data

    settings = QUICK if quick else DemoSettings()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        make_demo_data(Path(folder) / "data", settings)
        train = load_audio_dataset(Path(folder) / "data")["train"]
        labels = label_names(train)
        fe = ASTFeatureExtractor(num_mel_bins=settings.num_mel_bins, max_length=settings.max_length)
        collator = ASTAudioCollator(fe, num_labels=len(labels), freqm=settings.freqm, timem=settings.timem,
                                    mixup=settings.mixup, noise=True, cache_mb=settings.feature_cache_mb)
        config = demo_config(settings, labels, problem_type="single_label_classification")
        torch.manual_seed(0)
        ours = ASTForAudioClassification(config)
        ours.save_pretrained(Path(folder) / "model")
        theirs = transformers.ASTForAudioClassification.from_pretrained(Path(folder) / "model")
        models = {"ours": ours.train(), "theirs": theirs.train()}
        optimisers = {name: torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                              weight_decay=settings.weight_decay, fused=True)
                      for name, model in models.items()}

        def epoch(name: str, patchout: dict | None = None, bf16: bool = False):
            model, optimiser = models[name], optimisers[name]
            loader = DataLoader(train, batch_size=settings.batch_size, shuffle=True, collate_fn=collator,
                                generator=torch.Generator().manual_seed(0))

            def run():
                if patchout:
                    model.set_patchout(**patchout)
                try:
                    for batch in loader:
                        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                            loss = model(batch["input_values"], labels=batch["labels"]).loss
                        loss.backward()
                        optimiser.step()
                        optimiser.zero_grad(set_to_none=True)
                finally:
                    if patchout:
                        model.set_patchout()
            return run

        bf16_options = DEMO_EPOCH_BF16_OPTIONS if onednn.BF16_UNITS else {}
        options = list(DEMO_EPOCH_OPTIONS) + list(bf16_options)
        candidates = {"theirs": epoch("theirs"), "ours": epoch("ours")}
        candidates |= {f"ours {option}": epoch("ours", patchout) for option, patchout in DEMO_EPOCH_OPTIONS.items()}
        candidates |= {f"ours {option}": epoch("ours", patchout, bf16=True)
                       for option, patchout in bf16_options.items()}
        t = interleaved(candidates, repeats)
    steps = -(-len(train) // settings.batch_size)
    note = (f"{len(train)} clips, {steps} steps of {settings.batch_size}; D = {settings.hidden_size}, "
            f"{settings.num_hidden_layers} layers; {time.perf_counter() - started:.0f} s in all with the data")
    note += "; " + training_kernels_note(config, settings.batch_size * clip_tokens(config))
    rows = [dict(section="demo epoch", case="ours vs theirs, float32", ours=t["ours"], theirs=t["theirs"], note=note)]
    rows += [dict(section="demo epoch", case=f"ours with {option} vs theirs", ours=t[f"ours {option}"],
                  theirs=t["theirs"], note="accuracy on the demo: docs/training.md") for option in options]
    return rows


SECTIONS = {
    "features": feature_extraction,
    "forward": forward,
    "memory": forward_memory,
    "end2end": end_to_end,
    "longaudio": long_audio,
    "train": training_step,
    "events": events,
    "tokens": token_reduction,
    "threads": threads_under_load,
    "demo": demo_epoch,
}


if __name__ == "__main__":  # the fresh processes of `long_audio` and `forward_memory`
    import json
    import sys

    job, quick = sys.argv[1], "--quick" in sys.argv
    if job == "long-audio":
        print(json.dumps(long_audio_memory(sys.argv[2], quick)))
    elif job == "forward-memory":
        print(json.dumps(forward_memory_child(sys.argv[2], quick)))
    else:
        raise SystemExit(f"unknown job {job!r}")
