"""The `ast-hf` command line: every subcommand is defined here and calls one library function.

Each `_add_<name>` function declares one subcommand's arguments and sets `func`, which receives the parsed
arguments and returns the process exit code. Heavy imports happen inside `func`, so `ast-hf --help` is fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def _check_device(value: str) -> None:
    """Refuse a --device this machine cannot run on, by name and before a model is loaded (torch raised a
    RuntimeError traceback, for an unknown name or CUDA where there is none, and batch predict never tried it)."""
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"--device {value!r} is not a device: give cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(f"--device {value}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {value}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # another backend (mps, xpu, ...) that is not there
        first = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]  # torch's run long
        raise ValueError(f"--device {value} cannot be used on this machine ({first})") from None


def _check_output_files(*paths: str | None) -> None:
    """Refuse an output file option naming a folder before the work (it failed only when the result was moved
    into place, naming a temporary file)."""
    from .atomic_io import check_file_destination

    for path in paths:
        if path is not None:
            check_file_destination(path)


def _collect_inputs(items: list[str]) -> list[str]:
    """`collect_inputs(items)`, refusing none before a model is loaded, in the words of `predict` (an empty folder
    made detect say '0 of 0 files failed' after loading the model)."""
    from .batch_inference import NO_INPUTS, collect_inputs

    paths = collect_inputs(items)
    if not paths:
        raise ValueError(NO_INPUTS)
    return paths


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print the versions of ast-hf, transformers and torch, whether CUDA is "
                                    "available, this CPU and the kernel choices kept for it")

    def run(args) -> int:
        import torch
        import transformers

        from . import __version__, onednn, probe_cache

        print(f"ast-hf {__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
              f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
        print(f"CPU: {probe_cache.cpu_identity()[0]}; torch dispatches {torch.backends.cpu.get_cpu_capability()}, "
              f"{torch.get_num_threads()} threads; oneDNN fast paths {'on' if onednn.ENABLED else 'off'}, "
              f"bf16 matmuls {'yes' if onednn.BF16_UNITS else 'no'}")
        path = probe_cache.cache_path()
        kept = probe_cache.kept_answers()
        if path is None:
            print(f"kernel choices: measured in every process ({probe_cache.CACHE_ENV}=0)")
        elif not kept:
            print(f"kernel choices: none kept for this host in {path} yet (measured at first use)")
        else:
            print(f"kernel choices kept for this host in {path}:")
            for probe, value in kept.items():
                print(f"  {probe}: {json.dumps(value)}")
        return 0

    p.set_defaults(func=run)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint of the authors' original code into a Hub-ready folder",
                       description="Convert an original AST (YuanGongND/ast) or SSAST (YuanGongND/ssast, fine-tuned "
                       "or self-supervised) checkpoint into a folder with "
                       "model.safetensors, config.json, preprocessor_config.json and a model card; the result is "
                       "verified against a forward pass computed from the source before it is moved into place.")
    p.add_argument("src", help="the original .pth (e.g. audioset_10_10_0.4593.pth)")
    p.add_argument("out_dir", help="folder to create")
    p.add_argument("--fstride", type=int, help="frequency patch stride (default: from the file name, else solved)")
    p.add_argument("--tstride", type=int, help="time patch stride (default: from the file name, else solved)")
    p.add_argument("--input-tdim", type=int, help="frames the source was trained on (default: solved)")
    p.add_argument("--num-mel-bins", type=int, default=128, help="mel bins of the source's input (default 128)")
    p.add_argument("--max-length", type=int, help="adapt the position embeddings to this many frames")
    p.add_argument("--labels", default="auto", metavar="audioset|esc50|speechcommands|FILE.csv|none",
                   help="label names (default: from the label count)")
    p.add_argument("--pooling", choices=["mean", "cls"],
                   help="SSAST checkpoints: mean of the patch tokens (ft_avgtok) or of the prefix tokens (ft_cls); "
                        "AST checkpoints need none")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the stored weights")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the verified folder to this Hub repo")

    def run(args) -> int:
        from .convert import convert_original_checkpoint

        result = convert_original_checkpoint(
            args.src, args.out_dir, fstride=args.fstride, tstride=args.tstride, input_tdim=args.input_tdim,
            num_mel_bins=args.num_mel_bins, max_length=args.max_length, labels=args.labels, pooling=args.pooling,
            dtype=args.dtype,
            force=args.force, push_to_hub=args.push_to_hub)
        for note in result.notes:
            print(f"note: {note}")
        cfg = result.config
        backbone = cfg.architectures == ["ASTModel"]  # an SSAST self-supervised checkpoint: no head, tokens checked
        print(f"wrote {result.path}: D={cfg.hidden_size}, {cfg.num_hidden_layers} blocks, strides "
              f"{cfg.frequency_stride}/{cfg.time_stride}, {cfg.max_length} frames, "
              f"{'a backbone (no head)' if backbone else f'{cfg.num_labels} labels'}, pooling {cfg.pooling}; "
              f"max |{'token' if backbone else 'logit'} difference| vs the source {result.max_abs_diff:.2e}")
        return 0

    p.set_defaults(func=run)


def _add_threads_option(p) -> None:
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads (default: the cores other processes leave free when the command starts)")


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="tag audio files: one recording with sliding windows, or many files into one output",
        description="One FILE: sliding-window tags, printed, with --timeline CSV and --plot PNG. Several files, "
        "folders or .txt lists of paths (or --output): batch inference into one JSONL/CSV file, with DataLoader "
        "workers, sharded across processes under torchrun / accelerate launch, resumable.")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio files, folders, or .txt/.lst lists of paths")
    p.add_argument("--model", action="append", required=True, metavar="DIR_OR_HUB_ID",
                   help="model folder or Hub id; repeat for an ensemble (probabilities averaged)")
    p.add_argument("--output", help="batch mode: results file, .jsonl (default) or .csv")
    p.add_argument("--timeline", metavar="OUT.csv", help="one file: per-window labels (start,end,label,score)")
    p.add_argument("--plot", metavar="OUT.png", help="one file: top labels over time above the spectrogram")
    p.add_argument("--top-k", type=int, default=5, help="labels to keep per clip and per window (0: all)")
    p.add_argument("--threshold", type=float, help="keep only labels scoring at least this")
    p.add_argument("--window", type=float, help="window in seconds (default: the model's input, 10.24 s)")
    p.add_argument("--hop", type=float, help="step between windows in seconds (default: min(5, window / 2))")
    p.add_argument("--aggregate", choices=["mean", "max"], default="mean", help="clip score over windows")
    p.add_argument("--activation", choices=["auto", "sigmoid", "softmax", "none"], default="auto")
    p.add_argument("--batch-size", type=int,
                   help="windows per model call (default: one recording 2 on a CPU and 8 on a GPU; batch mode 8)")
    p.add_argument("--num-workers", type=int, default=2, help="batch mode: decoding worker processes")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available; batch mode under torchrun: "
                                    "cuda is each process's cuda:LOCAL_RANK)")
    _add_threads_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args) -> int:
        from pathlib import Path

        from .model_loading import load_for_inference

        single = (len(args.inputs) == 1 and args.output is None and not Path(args.inputs[0]).is_dir()
                  and Path(args.inputs[0]).suffix.lower() not in (".txt", ".lst", ".list"))
        if not single and (args.timeline or args.plot):
            raise ValueError("--timeline and --plot describe one recording; give one FILE (and no --output)")
        if single and not Path(args.inputs[0]).is_file():
            raise FileNotFoundError(f"no such audio file: {args.inputs[0]}")
        _check_output_files(args.timeline, args.plot)
        if single:
            from .long_audio import tag_long_audio

            model, fe = load_for_inference(args.model, args.device)
            tags = tag_long_audio(model, fe, args.inputs[0], window=args.window, hop=args.hop,
                                  aggregate=args.aggregate, batch_size=args.batch_size, activation=args.activation,
                                  progress=not args.no_progress)
            print(f"{args.inputs[0]}: {tags.duration:.2f} s, {len(tags.starts)} windows, {tags.aggregate} "
                  f"{tags.activation} scores")
            for label, score in tags.top(args.top_k, args.threshold):
                print(f"  {score:8.4f}  {label}")
            if args.timeline:
                print(f"wrote {tags.write_csv(args.timeline, args.top_k, args.threshold)}")
            if args.plot:
                print(f"wrote {tags.plot(args.plot, top_k=max(1, args.top_k or 5))}")
            return 0
        from .batch_inference import Distributed, predict_files

        dist = Distributed.from_env()
        output = args.output or "predictions.jsonl"
        try:
            model, fe = load_for_inference(args.model, "cpu")  # predict_files moves it to the device
            summary = predict_files(args.inputs, model, fe, output, window=args.window, hop=args.hop,
                                    aggregate=args.aggregate, top_k=args.top_k, threshold=args.threshold,
                                    activation=args.activation,
                                    batch_size=8 if args.batch_size is None else args.batch_size,
                                    num_workers=args.num_workers, progress=not args.no_progress, distributed=dist,
                                    device=args.device)
        except KeyboardInterrupt:
            from .batch_inference import part_paths

            parts = part_paths(Path(output))
            if not parts:
                raise
            # main() would say that no partial output was left: here it was, on purpose, to resume from
            print(f"ast-hf predict: interrupted; the files finished so far are kept in "
                  f"{', '.join(map(str, parts))}: run the same command again to continue", file=sys.stderr)
            return 130
        finally:
            dist.close()
        if dist.rank == 0:
            print(f"wrote {summary.output}: {summary.scored} scored now, {summary.skipped} already there (rank 0), "
                  f"{len(summary.failed)} failed", file=sys.stderr)
            for path, error in summary.failed.items():
                print(f"  failed: {path}: {error}", file=sys.stderr)
        return summary.exit_code

    p.set_defaults(func=run)


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="pooled AST embeddings (and patch tokens) of audio files into a .npz",
                       description="Writes OUT.npz with paths [N], embeddings [N, D] (mean over windows), "
                       "window_embeddings [W, D], window_file [W], window_start / window_end [W] (s) and, with "
                       "--patches, patches_<i> [windows, f, t, D] per file.")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio files, folders, or .txt/.lst lists of paths")
    p.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID")
    p.add_argument("--output", required=True, metavar="OUT.npz")
    p.add_argument("--patches", action="store_true", help="also store the patch tokens on the [f, t] grid")
    p.add_argument("--window", type=float, help="window in seconds (default: the model's input length)")
    p.add_argument("--hop", type=float, help="step between windows in seconds")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device")
    _add_threads_option(p)

    def run(args) -> int:
        from .embeddings import embed_files
        from .long_audio import window_samples
        from .model_loading import load_for_inference

        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        _check_output_files(args.output)
        paths = _collect_inputs(args.inputs)
        model, fe = load_for_inference(args.model, args.device, backbone_only=True)
        # bad options fail once, not as a failure per file
        window_samples(args.window, args.hop, fe.sampling_rate, model.config.max_length)
        failed = embed_files(paths, model, fe, args.output, window=args.window, hop=args.hop,
                             return_patches=args.patches, batch_size=args.batch_size)
        print(f"wrote {args.output}: {len(paths) - len(failed)} files")
        if failed:
            print(f"ast-hf embed: {len(failed)} of {len(paths)} files failed", file=sys.stderr)
        return 1 if failed else 0

    p.set_defaults(func=run)


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="attention rollout and per-layer attention maps over the spectrogram (PNG)")
    p.add_argument("input", metavar="FILE")
    p.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID")
    p.add_argument("--out", required=True, metavar="MAP.png")
    p.add_argument("--start", type=float, default=0.0, help="segment start in seconds (default 0)")
    p.add_argument("--duration", type=float, help="segment length in seconds (default: to the end, at most 30 s)")
    p.add_argument("--head-fusion", choices=["mean", "max"], default="mean")
    p.add_argument("--device")

    def run(args) -> int:
        from .audio_io import load_audio
        from .explanation import explain
        from .model_loading import load_for_inference

        _check_output_files(args.out)
        model, fe = load_for_inference(args.model, args.device)
        waveform = load_audio(args.input, fe.sampling_rate)
        total = len(waveform) / fe.sampling_rate
        duration = min(args.duration, total - args.start) if args.duration else total - args.start
        if 0 <= args.start < total and duration > 30:
            raise ValueError(f"the segment is {duration:.1f} s; attention maps are for one clip: pick at most 30 s "
                             f"with --start S --duration D")
        # explain() checks --start and --duration against the recording, cuts the segment, and keeps --start
        # so that the plot's time axis reads in seconds of the recording.
        result = explain(model, fe, waveform, sampling_rate=fe.sampling_rate, head_fusion=args.head_fusion,
                         start=args.start, duration=args.duration)
        result.plot(args.out, title=f"{args.input} [{args.start:.2f}-{args.start + duration:.2f} s]: attention "
                                    f"rollout; top: " + ", ".join(f"{name} {s:.2f}" for name, s in result.top[:3]))
        print(f"wrote {args.out}: patch grid {result.grid[0]}x{result.grid[1]}, {len(result.layer_maps)} layers")
        return 0

    p.set_defaults(func=run)


def _add_export_onnx(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a model to ONNX (dynamic batch), checked with onnxruntime")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("out", metavar="OUT.onnx")
    p.add_argument("--frames", type=int, help="input frames (default: the model's max_length)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=1e-4, help="largest |onnxruntime - PyTorch| accepted")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")

    def run(args) -> int:
        from .export import export_onnx
        from .model_loading import load_for_inference

        if not args.atol >= 0:  # also NaN
            raise ValueError(f"--atol must be a non-negative number, got {args.atol}")
        model, _ = load_for_inference(args.model_dir, "cpu")
        try:
            result = export_onnx(model, args.out, num_frames=args.frames, opset=args.opset, check=not args.no_check,
                                 atol=args.atol)
        except RuntimeError as error:  # the onnxruntime check failed: said as an error, not a traceback
            print(f"ast-hf export-onnx: error: {error}", file=sys.stderr)
            return 1
        checked = "" if result.max_abs_diff is None else f"; max |onnxruntime - PyTorch| {result.max_abs_diff:.2e}"
        print(f"wrote {result.path}: input_values [batch, {result.num_frames}, {model.config.num_mel_bins}] -> "
              f"{result.output_name}{checked}")
        return 0

    p.set_defaults(func=run)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="offline demo: make a spoken-word/sound data set, fine-tune an AST on the CPU",
                       description="Generate a labelled data set (espeak-ng words, sox sounds; test voices never "
                       "heard in training), train a small AST with Trainer on the CPU, evaluate it, save DIR/model, "
                       "reload it through pipeline('audio-classification') and write DIR/metrics.json. With --task "
                       "events: 10 s scenes with timed words and sounds, a frame head trained from strong labels, "
                       "sed_eval event/segment F1 in DIR/metrics.json and DIR/scene.png.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    p.add_argument("--task", choices=["classify", "events"], default="classify",
                   help="classify: one label per clip (default); events: onsets and offsets in 10 s scenes")
    p.add_argument("--quick", action="store_true", help="tiny data, tiny model, one epoch (a smoke test)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty DIR")
    p.add_argument("--seed", type=int, default=0)
    _add_threads_option(p)
    speed = p.add_argument_group("training speed options (--task classify; docs/training.md)")
    speed.add_argument("--patchout-time", type=int, default=0, metavar="N",
                       help="drop N of the 15 time columns of patches per training batch (structured patchout)")
    speed.add_argument("--patchout-freq", type=int, default=0, metavar="N",
                       help="drop N of the 4 frequency rows of patches per training batch")
    speed.add_argument("--patchout-random", type=float, default=0.0, metavar="P",
                       help="drop a fraction P of the remaining patches at random (unstructured patchout)")
    speed.add_argument("--bf16", action="store_true", help="bf16 autocast training (CPUs with bf16 units)")

    def run(args) -> int:
        import time

        started = time.perf_counter()
        options = {"patchout_time": args.patchout_time, "patchout_freq": args.patchout_freq,
                   "patchout_random": args.patchout_random, "bf16": args.bf16}
        if args.task == "events":
            if any(options.values()):
                raise ValueError("--patchout-* and --bf16 are options of --task classify (a frame head needs "
                                 "every patch)")
            from .training.event_demo import run_event_demo

            run_event_demo(args.out, quick=args.quick, force=args.force, seed=args.seed, num_threads=args.threads,
                           started=started)
        else:
            from .training.demo import run_demo

            run_demo(args.out, quick=args.quick, force=args.force, seed=args.seed, num_threads=args.threads,
                     started=started, **options)
        return 0

    p.set_defaults(func=run)


def _add_norm_stats(sub) -> None:
    p = sub.add_parser("norm-stats", help="mean/std of a data set's fbank, written into a preprocessor_config.json",
                       description="Compute the normalisation statistics of a data set's un-normalised fbank (as "
                       "the authors' get_norm_stats.py) and write a feature-extractor config holding them.")
    p.add_argument("data", metavar="DATA", help="local audiofolder or Hub data set id")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write preprocessor_config.json into")
    p.add_argument("--split", default="train")
    p.add_argument("--audio-column", default="audio")
    p.add_argument("--max-length", type=int, default=1024, help="frames each clip is padded/cut to (default 1024)")
    p.add_argument("--num-mel-bins", type=int, default=128)
    p.add_argument("--num-clips", type=int, help="use only the first N clips")
    p.add_argument("--skip-corrupt", action="store_true", help="leave unreadable files out (each one listed)")
    p.add_argument("--allow-upsampling", action="store_true", help="accept clips sampled below 16 kHz")

    def run(args) -> int:
        from pathlib import Path

        from .atomic_io import write_text_atomic
        from .feature_extraction_ast import ASTFeatureExtractor
        from .training import compute_normalization_stats, load_audio_dataset

        data = load_audio_dataset(args.data, split=args.split, audio_column=args.audio_column, label_column=None,
                                  skip_corrupt=args.skip_corrupt, allow_upsampling=args.allow_upsampling)
        fe = ASTFeatureExtractor(num_mel_bins=args.num_mel_bins, max_length=args.max_length)
        mean, std = compute_normalization_stats(data, fe, audio_column=args.audio_column, num_clips=args.num_clips,
                                                allow_upsampling=args.allow_upsampling)
        write_text_atomic(Path(args.out) / "preprocessor_config.json", fe.to_json_string())
        print(f"mean {mean:.7f}, std {std:.7f} over {min(len(data), args.num_clips or len(data))} clips; wrote "
              f"{Path(args.out) / 'preprocessor_config.json'}")
        return 0

    p.set_defaults(func=run)


# The options `_add_event_options` adds (argparse's names).
EVENT_OPTIONS = ("threshold", "off_threshold", "label_threshold", "median_filter", "min_duration", "merge_gap")


def _add_event_options(p) -> None:
    """Post-processing options shared by `detect` and `listen`."""
    p.add_argument("--threshold", type=float, default=0.5, help="on threshold of every label (default 0.5)")
    p.add_argument("--off-threshold", type=float, help="off threshold (hysteresis; default: the on threshold)")
    p.add_argument("--label-threshold", action="append", default=[], metavar="LABEL=ON[:OFF]",
                   help="per-label thresholds (repeat); labels not given use --threshold / --off-threshold")
    p.add_argument("--median-filter", type=int, default=1, metavar="STEPS",
                   help="median filter length in steps (odd; 1 = off)")
    p.add_argument("--min-duration", type=float, default=0.0, metavar="S", help="drop shorter events (seconds)")
    p.add_argument("--merge-gap", type=float, default=0.0, metavar="S", help="join events this close (seconds)")


def _event_postprocessing(args, labels: list[str]):
    """`EventPostprocessing` from the options of `_add_event_options`, checked against the model's labels."""
    from .sound_events import EventPostprocessing

    off_default = args.threshold if args.off_threshold is None else args.off_threshold
    on = dict.fromkeys(labels, args.threshold)
    off = dict.fromkeys(labels, off_default)
    for item in args.label_threshold:
        label, sep, values = item.rpartition("=")
        try:
            on_text, _, off_text = values.partition(":")
            on_value = float(on_text)
            off_value = float(off_text) if off_text else on_value
        except ValueError:
            sep = ""
        if not sep or not label:
            raise ValueError(f"--label-threshold {item!r}: expected LABEL=ON or LABEL=ON:OFF, e.g. Speech=0.4:0.3")
        if label not in on:
            raise ValueError(f"--label-threshold {item!r}: unknown label {label!r}")
        on[label], off[label] = on_value, off_value
    params = EventPostprocessing(on_threshold=on, off_threshold=off, median_steps=args.median_filter,
                                 min_duration=args.min_duration, merge_gap=args.merge_gap)
    params.check()
    params.thresholds(labels)
    return params


def _add_detect(sub) -> None:
    p = sub.add_parser("detect", help="sound events (onset, offset, label) from frame-level scores, as DCASE TSV",
                       description="Frame-level scores (the clip head on each time column, every time_stride x "
                       "10 ms), post-processed into events (median filter, hysteresis thresholds, merge gap, "
                       "minimum duration), written as a DCASE TSV: filename onset offset event_label (seconds). "
                       "With --reference, event-based (200 ms collar) and segment-based (1 s) F1 from sed_eval.")
    p.add_argument("inputs", nargs="+", metavar="FILE", help="audio files, folders, or .txt/.lst lists of paths")
    p.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID")
    p.add_argument("--events", required=True, metavar="OUT.tsv", help="events file to write (atomically)")
    p.add_argument("--plot", metavar="OUT.png", help="one file: frame scores and events over the spectrogram")
    p.add_argument("--reference", metavar="REF.tsv", help="ground-truth events: print sed_eval metrics as JSON")
    _add_event_options(p)
    p.add_argument("--window", type=float, help="window in seconds (default: the model's input length)")
    p.add_argument("--hop", type=float, help="step between windows in seconds (default: min(5, window / 2))")
    p.add_argument("--activation", choices=["auto", "sigmoid", "softmax", "none"], default="auto")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    _add_threads_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args) -> int:
        from pathlib import Path

        from .event_tsv import read_event_tsv, write_event_tsv
        from .frame_level import check_window, frame_scores
        from .inference import label_names
        from .model_loading import load_for_inference
        from .sound_events import detect_events

        _check_output_files(args.events, args.plot)
        paths = _collect_inputs(args.inputs)
        if args.plot and len(paths) != 1:
            raise ValueError(f"--plot describes one recording; {len(paths)} files were given")
        names = [Path(path).name for path in paths]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"the events file names recordings by file name, and these repeat: {repeated[:5]}")
        model, fe = load_for_inference(args.model, args.device)
        check_window(model.config, fe, args.window, args.hop)  # bad options fail once, not as a failure per file
        labels = label_names(model.config)
        params = _event_postprocessing(args, labels)
        reference = read_event_tsv(args.reference, labels) if args.reference else None
        events, failed = {}, {}  # {file name: events} of the files scored
        for path, name in zip(paths, names):
            try:
                frames = frame_scores(model, fe, path, window=args.window, hop=args.hop,
                                      activation=args.activation, progress=not args.no_progress)
            except (ValueError, OSError, RuntimeError) as error:
                failed[path] = str(error)
                print(f"ast-hf detect: skipped {path}: {error}", file=sys.stderr)
                continue
            found = detect_events(frames.scores, frames.labels, frames.hop, params, filename=name,
                                  duration=frames.duration)
            events[name] = found
            if args.plot:
                from .plotting import plot_events

                print(f"wrote {plot_events(frames, found, args.plot, reference=(reference or {}).get(name))}")
        if not events:  # every file failed: an existing events file is kept, not replaced by an empty one
            print(f"ast-hf detect: {len(failed)} of {len(paths)} files failed; nothing written to {args.events}",
                  file=sys.stderr)
            return 1
        write_event_tsv(args.events, events)
        print(f"wrote {args.events}: {sum(map(len, events.values()))} events in {len(events)} files")
        if reference is not None:
            from .atomic_io import json_text
            from .sed_metrics import event_metrics

            # only the files scored count: a failed file is reported as failed, not as one without detections
            metrics = event_metrics({name: reference.get(name, []) for name in events}, events, labels)
            print(json_text({k: round(v, 4) for k, v in metrics.items()}))
        if failed:
            print(f"ast-hf detect: {len(failed)} of {len(paths)} files failed", file=sys.stderr)
        return 1 if failed else 0

    p.set_defaults(func=run)


def _pcm_blocks(stream, sample_format: str, block_bytes: int):
    """Mono float32 blocks from a raw PCM byte stream (s16le or f32le). A stream ending mid-sample gets a warning
    on stderr naming the bytes dropped."""
    import numpy as np

    width, dtype, scale = {"s16le": (2, "<i2", 1 / 32768), "f32le": (4, "<f4", 1.0)}[sample_format]
    carry = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            break
        data = carry + data
        whole = len(data) // width * width
        carry = data[whole:]
        if whole:
            yield np.frombuffer(data[:whole], dtype=dtype).astype(np.float32) * np.float32(scale)
    if carry:
        print(f"ast-hf listen: warning: the stream stopped mid-sample: dropped the last {len(carry)} byte(s) "
              f"(a {sample_format} sample is {width} bytes)", file=sys.stderr)


def _paced_blocks(path, sampling_rate: int, block_seconds: float):
    """Blocks of `block_seconds` of a file, each released when that much real time has passed since the start."""
    import time

    from .audio_io import AudioStream

    started = time.perf_counter()
    released = 0
    block = max(1, round(block_seconds * sampling_rate))
    for data in AudioStream(path, sampling_rate):
        for first in range(0, len(data), block):
            piece = data[first:first + block]
            released += len(piece)
            time.sleep(max(0.0, started + released / sampling_rate - time.perf_counter()))
            yield piece


def _microphone_blocks(sampling_rate: int, block_seconds: float):
    """Mono float32 blocks from the default microphone (sounddevice), until Ctrl-C."""
    import queue

    try:
        import sounddevice
    except (ImportError, OSError) as error:  # OSError: the module is there but the PortAudio library is not
        raise ValueError(f"microphone input needs sounddevice and PortAudio ({error}): pip install 'ast-hf[live]' "
                         f"and apt-get install libportaudio2, or use --stdin or --realtime FILE") from None
    blocks: queue.Queue = queue.Queue()
    with sounddevice.InputStream(samplerate=sampling_rate, channels=1, dtype="float32",
                                 blocksize=max(1, round(block_seconds * sampling_rate)),
                                 callback=lambda data, frames, when, status: blocks.put(data[:, 0].copy())):
        while True:
            yield blocks.get()


def _add_listen(sub) -> None:
    p = sub.add_parser("listen", help="live tagging of a microphone, raw PCM on stdin, or a file paced in real time",
                       description="Sliding windows scored as soon as they are complete; prints one JSON line per "
                       "window ({type: window, index, start, end, latency, labels}) or, with --print events, per "
                       "event ({type: event, label, onset, offset, reported_at, delay}); times in seconds of the "
                       "stream. Stop with Ctrl-C (the last window is then scored).")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--stdin", action="store_true", help="raw mono PCM on stdin (see --format, --sampling-rate)")
    source.add_argument("--realtime", metavar="FILE", help="an audio file, fed at the pace of real time")
    p.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID")
    p.add_argument("--format", choices=["s16le", "f32le"], default="s16le", help="--stdin sample format")
    p.add_argument("--sampling-rate", type=int, default=16000, help="--stdin rate in Hz (resampled to the model's)")
    p.add_argument("--window", type=float, help="window in seconds (default: the model's input length)")
    p.add_argument("--hop", type=float, help="seconds between windows, a multiple of 0.01 (default min(5, window/2))")
    p.add_argument("--print", dest="show", choices=["windows", "events", "both"], default="windows")
    p.add_argument("--top-k", type=int, default=3, help="labels per window line (0: all)")
    p.add_argument("--block", type=float, default=0.1, metavar="S", help="seconds read per chunk (default 0.1)")
    _add_event_options(p)
    p.add_argument("--activation", choices=["auto", "sigmoid", "softmax", "none"], default="auto")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")

    def run(args) -> int:
        import json

        from .audio_io import check_sampling_rate, resample_stream
        from .inference import label_names, select_top
        from .model_loading import load_for_inference
        from .streaming import StreamingTagger

        rate = check_sampling_rate(args.sampling_rate, "--sampling-rate")
        if not (args.block > 0 and math.isfinite(args.block)):
            raise ValueError(f"--block must be a positive number of seconds, got {args.block}")
        # Options that would be accepted and then do nothing: said before the model is loaded.
        ignored = [("events", "--print events or --print both", EVENT_OPTIONS, args.show == "windows"),
                   ("raw PCM on stdin", "--stdin", ("format", "sampling_rate"), not args.stdin)]
        for what, needed, names, unused in ignored:
            given = [f"--{name.replace('_', '-')}" for name in names if getattr(args, name) != p.get_default(name)]
            if unused and given:
                raise ValueError(f"{', '.join(given)} only shape{'s' if len(given) == 1 else ''} the {what}: add "
                                 f"{needed}")
        model, fe = load_for_inference(args.model, args.device)
        labels = label_names(model.config)
        events = _event_postprocessing(args, labels) if args.show != "windows" else None
        tagger = StreamingTagger(model, fe, window=args.window, hop=args.hop, activation=args.activation,
                                 events=events)
        if args.stdin:
            width = 2 if args.format == "s16le" else 4
            blocks = resample_stream(_pcm_blocks(sys.stdin.buffer, args.format,
                                                  width * max(1, round(args.block * rate))), rate, fe.sampling_rate)
        elif args.realtime:
            blocks = _paced_blocks(args.realtime, fe.sampling_rate, args.block)
        else:
            blocks = _microphone_blocks(fe.sampling_rate, args.block)

        def emit(windows, now: float) -> None:
            if args.show != "events":
                for w in windows:
                    top = select_top(w.scores, tagger.labels, args.top_k)
                    print(json.dumps({"type": "window", "index": w.index, "start": round(w.start, 3),
                                      "end": round(w.end, 3), "latency": round(w.latency, 4),
                                      "labels": [{"label": label, "score": round(score, 4)} for label, score in top]}),
                          flush=True)
            if events is not None:
                for e in tagger.pop_events():
                    print(json.dumps({"type": "event", "label": e.label, "onset": e.onset, "offset": e.offset,
                                      "reported_at": round(now, 3), "delay": round(now - e.offset, 3)}), flush=True)

        try:
            for block in blocks:
                emit(tagger.feed(block), tagger.seconds_fed)
        except KeyboardInterrupt:  # the way to stop a microphone: score what was heard
            pass
        fed = tagger.seconds_fed
        emit(tagger.flush(), fed)  # raises if nothing was fed
        return 0

    p.set_defaults(func=run)


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="a local web app (Gradio): tag, plot and explain recordings in the browser",
                       description="Serve a Gradio page that tags uploaded or recorded audio of any length: top "
                       "labels, the timeline over the whole recording, the attention rollout over the spectrogram, "
                       "sound events with onsets and offsets, live tags from the microphone, CSV/JSON/TSV "
                       "downloads. Binds to 127.0.0.1 (this machine only) unless --host says otherwise. Needs the "
                       "app extra: pip install 'ast-hf[app]'.")
    p.add_argument("--model", required=True, metavar="DIR_OR_HUB_ID")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 serves every network the machine is on)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    p.add_argument("--max-seconds", type=float, default=3600.0,
                   help="longest recording accepted, checked from its header (default 3600)")
    p.add_argument("--top-k", type=int, default=5, help="labels shown and written (default 5; 0: all)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")

    def run(args) -> int:
        from .app import build_app, launch_app, require_gradio, stop_on_sigterm
        from .model_loading import load_for_inference

        if not args.max_seconds > 0:
            raise ValueError(f"--max-seconds must be positive, got {args.max_seconds}")
        if args.port is not None and not 0 < args.port < 65536:
            raise ValueError(f"--port must be 1-65535, got {args.port}")
        try:
            require_gradio()  # before the model loads: a missing extra is said at once
        except ImportError as error:
            print(f"ast-hf app: error: {error}", file=sys.stderr)
            return 1
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"ast-hf app: serving on {args.host}: anyone who can reach this machine can use the app",
                  file=sys.stderr)
        model, fe = load_for_inference(args.model, args.device)
        with stop_on_sigterm():
            launch_app(build_app(model, fe, max_seconds=args.max_seconds, top_k=args.top_k), host=args.host,
                       port=args.port, share=args.share)
        return 0

    p.set_defaults(func=run)


# Subcommands, in the order `ast-hf --help` lists them. Add one `_add_<name>` per subcommand above and list it.
_SUBCOMMANDS = [_add_info, _add_convert, _add_predict, _add_detect, _add_listen, _add_embed, _add_explain,
                _add_export_onnx, _add_demo, _add_norm_stats, _add_app]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ast-hf", description="Audio Spectrogram Transformer tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .allocator import keep_freed_memory

    keep_freed_memory()  # this process is ours: reuse freed tensors' pages (AST_HF_KEEP_FREED_MEMORY=0: don't)
    try:
        if getattr(args, "top_k", None) is not None and args.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0: all), got {args.top_k}")
        for option in ("threshold", "off_threshold"):  # NaN compares false with every score: no label, no error
            value = getattr(args, option, None)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"--{option.replace('_', '-')} must be a finite score, got {value}")
        if getattr(args, "device", None) is not None:
            _check_device(args.device)
        if hasattr(args, "threads"):  # long-running commands: the cores left free, unless --threads says
            from .threads import use_threads

            args.threads = use_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ast-hf: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, OSError) as error:
        print(f"ast-hf {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
