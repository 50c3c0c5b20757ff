#!/usr/bin/env python
"""Fine-tune an Audio Spectrogram Transformer with one of the authors' recipes on `transformers.Trainer`.

One CPU, one GPU, several GPUs or several machines, with the same script:

    python examples/finetune.py --recipe esc50 --model ast-audioset --output-dir runs/esc50
    torchrun --nproc_per_node 4 examples/finetune.py --recipe audioset --model ast-audioset --output-dir runs/as
    accelerate launch --config_file examples/accelerate/multi_gpu.yaml examples/finetune.py --recipe ...

Data: `--data DIR` reads a local audiofolder (offline: DIR/train/<label>/*.wav and DIR/test/<label>/*.wav, or
a metadata.csv with file_name, label (and fold) columns); without it the recipe's Hub data set is used (online).
Model: `--model DIR` starts from an AST folder (the AudioSet model: a fresh head for the new labels and the
position embeddings adapted to the recipe's length; for the `ssast-*` recipes a converted SSAST self-supervised
backbone, loaded at the recipe's strides and pooling); `--imagenet DEIT` starts from ImageNet DeiT weights (a timm
.pth/.safetensors file or a transformers DeiT folder, the authors' rule); `--config JSON` builds a fresh model from
ASTConfig fields.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True,
                   choices=["esc50", "speechcommands", "audioset", "ssast-speechcommands", "ssast-esc50"])
    p.add_argument("--output-dir", required=True)
    p.add_argument("--data", help="local audiofolder (offline); default: the recipe's Hub data set")
    start = p.add_mutually_exclusive_group()  # one starting point: a second one would be silently ignored
    start.add_argument("--model", help="AST folder or Hub id to fine-tune (e.g. the converted AudioSet model)")
    start.add_argument("--imagenet", metavar="DEIT",
                       help="start from ImageNet DeiT weights (timm .pth/.safetensors or a transformers DeiT folder)")
    start.add_argument("--config", help="JSON file of ASTConfig fields: train a fresh model instead of --model")
    p.add_argument("--label-column", help="default: 'label' for a local folder, the recipe's for the Hub")
    p.add_argument("--audio-column", default="audio")
    p.add_argument("--train-split", help="default: the recipe's")
    p.add_argument("--eval-split", help="default: the recipe's (a local folder: 'test' when present)")
    p.add_argument("--fold", type=int, action="append",
                   help="cross-validation fold(s) to hold out (recipes with folds; default: all of them)")
    for name, kind in (("epochs", float), ("batch-size", int), ("lr", float), ("max-length", int), ("freqm", int),
                       ("timem", int), ("mixup", float), ("max-steps", int)):
        p.add_argument(f"--{name}", type=kind, help="override the recipe")
    p.add_argument("--compute-norm-stats", action="store_true",
                   help="compute mean/std on the training split instead of the recipe's values")
    p.add_argument("--skip-corrupt", action="store_true", help="leave unreadable audio files out (listed)")
    p.add_argument("--allow-upsampling", action="store_true", help="accept clips sampled below 16 kHz")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    p.add_argument("--save-strategy", default="epoch", choices=["epoch", "steps", "no"])
    p.add_argument("--num-workers", type=int, default=0, help="data-loading processes per training process")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    p.add_argument("--fp16", action="store_true", help="float16 mixed precision (GPU)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument("--cpu", action="store_true",
                   help="train on the CPU even when a GPU is present (always, when none is: DDP then uses gloo)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "lr", "max_length", "max_steps"):  # 0 would read as 'the recipe's'
        value = getattr(args, name)
        if value is not None and not value > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def build_labels(recipe, splits, label_column, collator_multi_label):
    """Label names: the ClassLabel names, else the recipe's label table when it covers the data, else the sorted
    labels found in the data."""
    from ast_hf import load_label_table
    from ast_hf.training import label_names

    names = label_names(splits[0], label_column)
    if names:
        return names
    found = set()
    for part in splits:
        for value in part[label_column]:
            values = value if isinstance(value, list) else (value.split(",") if collator_multi_label else [value])
            found.update(str(v).strip() for v in values)
    table = list(load_label_table(recipe.dataset_name).values())
    return table if found <= set(table) else sorted(found)


def run_one(args, recipe, train, evaluation, labels, output_dir: Path, label_column: str) -> dict:
    import torch

    from ast_hf import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification
    from ast_hf.training import ASTAudioCollator, ASTTrainer, ASTTrainingArguments, compute_normalization_stats

    max_length = args.max_length or recipe.max_length
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    common = dict(id2label=id2label, label2id=label2id, problem_type=recipe.problem_type)
    if args.config:
        fields = json.loads(Path(args.config).read_text())
        config = ASTConfig(**{**fields, "max_length": max_length, "num_labels": len(labels), **common})
        torch.manual_seed(args.seed)
        model = ASTForAudioClassification(config)
    elif args.model:
        pooling = {"pooling": recipe.pooling} if recipe.pooling else {}
        model = ASTForAudioClassification.from_pretrained(
            args.model, num_labels=len(labels), max_length=max_length, frequency_stride=recipe.frequency_stride,
            time_stride=recipe.time_stride, **pooling, **common)
    elif args.imagenet:
        model = ASTForAudioClassification.from_imagenet(
            args.imagenet, num_labels=len(labels), frequency_stride=recipe.frequency_stride or 10,
            time_stride=recipe.time_stride or 10, max_length=max_length, **common)
    else:
        raise ValueError("give --model (an AST folder or Hub id to fine-tune), --imagenet (DeiT weights) or --config "
                         "(a fresh model)")
    # The model's mel bins (a locally built model may have other than 128), the recipe's normalisation
    fe = ASTFeatureExtractor(num_mel_bins=model.config.num_mel_bins, max_length=max_length, mean=recipe.mean,
                             std=recipe.std)
    if args.compute_norm_stats:
        compute_normalization_stats(train, fe, audio_column=args.audio_column)
    collator = ASTAudioCollator(
        fe, num_labels=len(labels), label2id=label2id, multi_label=recipe.multi_label,
        audio_column=args.audio_column, label_column=label_column,
        freqm=recipe.freqm if args.freqm is None else args.freqm,
        timem=recipe.timem if args.timem is None else args.timem,
        mixup=recipe.mixup if args.mixup is None else args.mixup, noise=recipe.noise,
        one_hot=recipe.loss == "bce" or recipe.multi_label or None, skip_corrupt=args.skip_corrupt,
        allow_upsampling=args.allow_upsampling)
    start, end = recipe.weight_averaging or (None, None)
    epochs = args.epochs or recipe.epochs
    training_args = ASTTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, max_steps=args.max_steps or -1,
        per_device_train_batch_size=args.batch_size or recipe.batch_size,
        per_device_eval_batch_size=2 * (args.batch_size or recipe.batch_size),
        learning_rate=args.lr or recipe.learning_rate, weight_decay=5e-7, adam_beta1=0.95, adam_beta2=0.999,
        lr_decay_start=recipe.lr_decay_start, lr_decay_every=recipe.lr_decay_every,
        lr_decay_factor=recipe.lr_decay_factor, warmup_steps=recipe.warmup_steps,
        balanced_sampling=recipe.balanced_sampling,
        weight_averaging_start=start, weight_averaging_end=min(end, int(epochs)) if end else None,
        eval_strategy="epoch" if evaluation is not None else "no", save_strategy=args.save_strategy,
        save_total_limit=2, logging_steps=10, dataloader_num_workers=args.num_workers,
        bf16=args.bf16, fp16=args.fp16, activation_checkpointing=args.gradient_checkpointing,
        seed=args.seed, report_to="none", ddp_find_unused_parameters=False,
        use_cpu=args.cpu or not torch.cuda.is_available())  # accelerate needs it to run DDP over gloo on CPUs
    trainer = ASTTrainer(model=model, args=training_args, data_collator=collator, train_dataset=train,
                         eval_dataset=evaluation)
    trainer.train(resume_from_checkpoint=True if args.resume and _has_checkpoint(output_dir) else None)
    metrics = trainer.evaluate() if evaluation is not None else {}
    metrics["world_size"] = training_args.world_size
    metrics["global_step"] = trainer.state.global_step
    final = output_dir / "final"
    staging = output_dir / ".final.partial"
    trainer.save_model(str(staging))  # every process takes part (FSDP gathers); the main one writes
    if trainer.is_world_process_zero():
        import shutil

        from ast_hf.atomic_io import write_text_atomic

        write_text_atomic(staging / "metrics.json", json.dumps(metrics, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        print(json.dumps(metrics, indent=2))
    trainer.accelerator.wait_for_everyone()  # no process leaves while another still talks to it
    return metrics


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def main(argv=None) -> int:
    args = parse_args(argv)
    from ast_hf.training import get_recipe, load_audio_dataset

    recipe = get_recipe(args.recipe)
    local = args.data is not None
    label_column = args.label_column or ("label" if local else recipe.hub_label_column)
    source = args.data or recipe.hub_dataset
    kwargs = {} if local or recipe.hub_config is None else {"name": recipe.hub_config}
    data = load_audio_dataset(source, audio_column=args.audio_column, label_column=label_column,
                              skip_corrupt=args.skip_corrupt, allow_upsampling=args.allow_upsampling, **kwargs)
    train_split = args.train_split or ("train" if local else recipe.hub_train_split)
    eval_split = args.eval_split or ("test" if local and "test" in data else recipe.hub_eval_split if not local
                                     else "")
    if train_split not in data:
        raise ValueError(f"no split {train_split!r} in {source}; it has {', '.join(data)}")
    output_dir = Path(args.output_dir)
    fold_column = recipe.fold_column if recipe.fold_column in data[train_split].column_names else None
    if args.fold and not (fold_column and not eval_split):
        why = (f"the {recipe.name} recipe has no folds" if not recipe.fold_column else
               f"split {train_split!r} of {source} has no {recipe.fold_column!r} column" if not fold_column else
               f"{source} has an evaluation split, {eval_split!r}")
        raise ValueError(f"--fold applies to cross-validation over the folds of one split, and {why}")
    if fold_column and not eval_split:
        everything = data[train_split]
        present = sorted(set(everything[fold_column]))
        by_name = {str(fold): fold for fold in present}  # --fold 1 is the fold "1" of a column read as text
        unknown = [str(fold) for fold in args.fold or [] if str(fold) not in by_name]
        if unknown:
            raise ValueError(f"no fold {', '.join(unknown)} in {source}: its folds are {', '.join(by_name)}")
        folds = [by_name[str(fold)] for fold in args.fold] if args.fold else present
        labels = build_labels(recipe, [everything], label_column, recipe.multi_label)
        results = {}
        for fold in folds:
            held_out = [i for i, f in enumerate(everything[fold_column]) if f == fold]
            held = set(held_out)
            train = everything.select([i for i in range(len(everything)) if i not in held])
            metrics = run_one(args, recipe, train, everything.select(held_out), labels,
                              output_dir / f"fold{fold}", label_column)
            results[f"fold{fold}"] = metrics.get(f"eval_{recipe.metric}")
        scores = [v for v in results.values() if v is not None]
        summary = {"recipe": recipe.name, "folds": results, f"mean_{recipe.metric}": sum(scores) / len(scores)}
        if int(os.environ.get("RANK", "0")) == 0:
            from ast_hf.atomic_io import write_text_atomic

            write_text_atomic(output_dir / "cross_validation.json", json.dumps(summary, indent=2))
            print(json.dumps(summary, indent=2))
        return 0
    if eval_split and eval_split not in data:
        raise ValueError(f"no split {eval_split!r} in {source}; it has {', '.join(data)}")
    evaluation = data[eval_split] if eval_split else None
    splits = [data[train_split]] + ([evaluation] if evaluation is not None else [])
    labels = build_labels(recipe, splits, label_column, recipe.multi_label)
    run_one(args, recipe, data[train_split], evaluation, labels, output_dir, label_column)
    return 0


def _close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        code = main()
    finally:
        _close_process_group()
    sys.exit(code)
