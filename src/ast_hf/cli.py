"""The `ast-hf` command line: every subcommand is defined here and calls one library function.

Each `_add_<name>` function declares one subcommand's arguments and sets `func`, which receives the parsed
arguments and returns the process exit code. Heavy imports happen inside `func`, so `ast-hf --help` is fast.
"""

from __future__ import annotations

import argparse
import sys


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print the versions of ast-hf, transformers and torch, and whether CUDA is available")

    def run(args) -> int:
        import torch
        import transformers

        from . import __version__

        print(f"ast-hf {__version__}, transformers {transformers.__version__}, torch {torch.__version__}, "
              f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
        return 0

    p.set_defaults(func=run)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint of the authors' original code into a Hub-ready folder",
                       description="Convert an original AST checkpoint (YuanGongND/ast) into a folder with "
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
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the stored weights")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the verified folder to this Hub repo")

    def run(args) -> int:
        from .convert import convert_original_checkpoint

        result = convert_original_checkpoint(
            args.src, args.out_dir, fstride=args.fstride, tstride=args.tstride, input_tdim=args.input_tdim,
            num_mel_bins=args.num_mel_bins, max_length=args.max_length, labels=args.labels, dtype=args.dtype,
            force=args.force, push_to_hub=args.push_to_hub)
        for note in result.notes:
            print(f"note: {note}")
        cfg = result.config
        print(f"wrote {result.path}: D={cfg.hidden_size}, {cfg.num_hidden_layers} blocks, strides "
              f"{cfg.frequency_stride}/{cfg.time_stride}, {cfg.max_length} frames, {cfg.num_labels} labels; "
              f"max |logit difference| vs the source {result.max_abs_diff:.2e}")
        return 0

    p.set_defaults(func=run)


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
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available; batch mode: per rank)")
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
        try:
            model, fe = load_for_inference(args.model, dist.device())
            output = args.output or "predictions.jsonl"
            summary = predict_files(args.inputs, model, fe, output, window=args.window, hop=args.hop,
                                    aggregate=args.aggregate, top_k=args.top_k, threshold=args.threshold,
                                    activation=args.activation, batch_size=args.batch_size or 8,
                                    num_workers=args.num_workers, progress=not args.no_progress, distributed=dist)
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

    def run(args) -> int:
        from .batch_inference import collect_inputs
        from .embeddings import embed_files
        from .model_loading import load_for_inference

        paths = collect_inputs(args.inputs)
        model, fe = load_for_inference(args.model, args.device, backbone_only=True)
        failed = embed_files(paths, model, fe, args.output, window=args.window, hop=args.hop,
                             return_patches=args.patches, batch_size=args.batch_size)
        if len(failed) < len(paths):
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

        model, _ = load_for_inference(args.model_dir, "cpu")
        result = export_onnx(model, args.out, num_frames=args.frames, opset=args.opset, check=not args.no_check,
                             atol=args.atol)
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
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")

    def run(args) -> int:
        import time

        started = time.perf_counter()
        if args.task == "events":
            from .training.event_demo import run_event_demo as run_demo
        else:
            from .training.demo import run_demo

        run_demo(args.out, quick=args.quick, force=args.force, seed=args.seed, num_threads=args.threads,
                 started=started)
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


# Subcommands, in the order `ast-hf --help` lists them. Add one `_add_<name>` per subcommand above and list it.
_SUBCOMMANDS = [_add_info, _add_convert, _add_predict, _add_embed, _add_explain, _add_export_onnx, _add_demo,
                _add_norm_stats]


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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ast-hf: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, OSError) as error:
        print(f"ast-hf {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
