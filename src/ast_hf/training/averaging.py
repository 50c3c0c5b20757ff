"""Weight averaging: checkpoint weights over chosen epochs averaged into one better model.

`average_checkpoints` / `WeightAveragingCallback`: the authors' "weight averaging": the parameters of the models
saved at the end of epochs `start..end` are averaged element-wise into one model (their AudioSet runs: epochs 1-5
of full AudioSet, 6-25 of the balanced set). Averaging predictions of several models is `ast_hf.ensemble`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..modeling_ast import ASTForAudioClassification

AVERAGE_FILE = "weight_average.safetensors"


# --------------------------------------------------------------------------------------------------------------
# Weight averaging
# --------------------------------------------------------------------------------------------------------------


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (accumulated in float64, returned in each tensor's dtype);
    integer tensors (counters) are taken from the first state dict. All must hold the same keys and shapes."""
    if not state_dicts:
        raise ValueError("nothing to average: give at least one state dict / checkpoint")
    first = state_dicts[0]
    for i, other in enumerate(state_dicts[1:], start=1):
        if other.keys() != first.keys():
            diff = sorted(set(other.keys()) ^ set(first.keys()))
            raise ValueError(f"checkpoint {i} has different parameters than checkpoint 0 (e.g. {diff[0]}); only "
                             f"checkpoints of the same architecture can be averaged")
        for key, value in other.items():
            if value.shape != first[key].shape:
                raise ValueError(f"parameter {key} has shape {tuple(value.shape)} in checkpoint {i} but "
                                 f"{tuple(first[key].shape)} in checkpoint 0")
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = sum(sd[key].detach().to("cpu", torch.float64) for sd in state_dicts)
            out[key] = (total / len(state_dicts)).to(value.dtype)
        else:
            out[key] = value.detach().cpu().clone()
    return out


def load_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The parameters saved in a model or checkpoint folder (safetensors, sharded or not; else a .bin)."""
    folder = Path(folder)
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such checkpoint folder: {folder}")
    raise FileNotFoundError(f"{folder} holds no model.safetensors or pytorch_model.bin")


def checkpoints_for_epochs(output_dir: str | Path, start_epoch: int, end_epoch: int) -> list[Path]:
    """The `checkpoint-N` folders of a `Trainer` run saved at the end of epochs start..end (1-based, inclusive),
    read from each folder's `trainer_state.json`. Train with `save_strategy="epoch"` and no `save_total_limit`."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"no such training output folder: {output_dir}")
    found: dict[int, Path] = {}
    for folder in output_dir.iterdir():
        state = folder / "trainer_state.json"
        if not re.fullmatch(r"checkpoint-\d+", folder.name) or not state.is_file():
            continue
        epoch = json.loads(state.read_text()).get("epoch") or 0.0
        if abs(epoch - round(epoch)) < 1e-6 and start_epoch <= round(epoch) <= end_epoch:
            found[round(epoch)] = folder
    missing = [e for e in range(start_epoch, end_epoch + 1) if e not in found]
    if missing:
        raise ValueError(f"{output_dir} has no checkpoint saved at the end of epoch(s) {missing}; train with "
                         f"save_strategy='epoch' and save_total_limit=None to keep one per epoch")
    return [found[e] for e in range(start_epoch, end_epoch + 1)]


def average_checkpoints(checkpoints: Sequence[str | Path], out_dir: str | Path | None = None,
                        force: bool = False) -> ASTForAudioClassification:
    """One model whose weights are the mean of the given checkpoint folders' weights.

    The configuration (and `preprocessor_config.json`, copied when `out_dir` is given) come from the first.
    `out_dir` is written atomically; an existing `out_dir` is refused unless `force` (then it is replaced), and an
    `out_dir` that is, or holds, one of the `checkpoints` is always refused (replacing it would delete them).
    Use `checkpoints_for_epochs(run_dir, start, end)` to pick folders by epoch.
    """
    if not checkpoints:
        raise ValueError("nothing to average: give at least one checkpoint folder")
    if out_dir is not None:
        out = Path(out_dir).resolve()
        inside = [c for c in checkpoints if out == Path(c).resolve() or out in Path(c).resolve().parents]
        if inside:
            raise ValueError(f"out_dir {out_dir} is or holds the checkpoint {inside[0]} being averaged, and writing "
                             f"the average there would delete it; choose another folder")
        from ..atomic_io import check_destination

        check_destination(Path(out_dir), force)  # before the averaging, not after
    averaged = average_state_dicts([load_weights(c) for c in checkpoints])
    model = ASTForAudioClassification.from_pretrained(checkpoints[0])
    model.load_state_dict(averaged, strict=True)
    if out_dir is not None:
        import shutil

        from ..atomic_io import atomic_folder

        with atomic_folder(out_dir, force=force) as staging:
            model.save_pretrained(staging)
            extra = Path(checkpoints[0]) / "preprocessor_config.json"
            if extra.is_file():
                shutil.copy(extra, staging / extra.name)
    return model


class WeightAveragingCallback(TrainerCallback):
    """Average the model's weights over the ends of epochs `start_epoch..end_epoch` (1-based, inclusive) during a
    `Trainer` run, and load the average into the model when training ends.

    The running sum lives on the CPU in float64 (8 bytes per parameter). It is saved beside every checkpoint
    (`weight_average.safetensors`) and restored when training resumes, so an interrupted run averages the same
    epochs. Not for FSDP/DeepSpeed-sharded models (each process holds only a shard): average saved checkpoints
    with `average_checkpoints` instead.
    """

    def __init__(self, start_epoch: int, end_epoch: int | None = None):
        if start_epoch < 1 or (end_epoch is not None and end_epoch < start_epoch):
            raise ValueError(f"need 1 <= start_epoch <= end_epoch, got {start_epoch}..{end_epoch}")
        self.start_epoch, self.end_epoch = start_epoch, end_epoch
        self.total: dict[str, torch.Tensor] | None = None
        self.epochs: list[int] = []

    def _in_range(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch <= self.end_epoch)

    def on_train_begin(self, args, state, control, **kwargs):
        saved = Path(args.output_dir) / f"checkpoint-{state.global_step}" / AVERAGE_FILE
        if state.global_step > 0 and saved.is_file():
            from safetensors import safe_open
            from safetensors.torch import load_file

            self.total = load_file(saved)
            with safe_open(saved, "pt") as f:
                self.epochs = json.loads(f.metadata()["epochs"])
        else:
            self.total, self.epochs = None, []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or 0)
        # Trainer also ends an epoch cut short by max_steps (state.epoch 2.6, say): those weights are not the end
        # of epoch 3, and checkpoints_for_epochs would not pick them either
        if abs((state.epoch or 0) - epoch) > 1e-6 or not self._in_range(epoch) or epoch in self.epochs:
            return
        weights = {k: v.detach().to("cpu", torch.float64) for k, v in model.state_dict().items()
                   if v.is_floating_point()}
        if self.total is None:
            self.total = weights
        else:
            for key, value in weights.items():
                self.total[key] += value
        self.epochs.append(epoch)

    def on_save(self, args, state, control, **kwargs):
        if self.total is None or not state.is_world_process_zero:
            return
        from safetensors.torch import save_file

        from ..atomic_io import atomic_path

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            with atomic_path(folder / AVERAGE_FILE) as tmp:
                save_file(self.total, tmp, metadata={"epochs": json.dumps(self.epochs)})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.total is None:
            return
        current = model.state_dict()
        averaged = {k: (v / len(self.epochs)).to(current[k].dtype) for k, v in self.total.items()}
        model.load_state_dict(averaged, strict=False)
        state.log_history.append({"weight_averaging_epochs": list(self.epochs), "step": state.global_step})


__all__ = ["average_state_dicts", "average_checkpoints", "checkpoints_for_epochs", "load_weights",
           "WeightAveragingCallback"]
