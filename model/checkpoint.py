"""A trained run on disk: ``model.safetensors`` plus ``run.json`` (config, backbone, split)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.iiae import IIAEConfig
from model.retrieval import ModelConfig, RetrievalConfig, RetrievalModel
from model.scaling import ScalingConfig

# What a run written before ``run.json`` split its model into "iiae", "scaling" and
# "retrieval" (one flat "iiae" record, like the committed demo's) meant by a missing field:
# the first model's decoder and initialisation, no scaling beyond the recorded one.
_FLAT_IIAE_DEFAULTS = {
    "decoder_hidden_dims": (128, 512),
    "decoder_activation": "leaky_relu",
    "init": "torch",
}
_FLAT_SCALING_NAMES = {
    "input_power": "power",
    "whiten_shrinkage": "shrinkage",
    "whiten_rank": "rank",
}


def save_model(model: RetrievalModel, run_dir: Path, info: dict) -> None:
    """Write ``model.safetensors`` and ``run.json`` (config, backbone, split...) atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "model.safetensors.tmp"
    state = {k: v.detach().cpu().contiguous() for k, v in model.file_state().items()}
    save_file(state, str(tmp))
    tmp.replace(run_dir / "model.safetensors")
    info = {**info, **model.config.model_dump()}
    tmp_json = run_dir / "run.json.tmp"
    tmp_json.write_text(json.dumps(info, indent=2))
    tmp_json.replace(run_dir / "run.json")


def model_config(info: dict) -> ModelConfig:
    """The model's configuration from a run's ``run.json`` record, of either layout."""
    if "scaling" in info:
        return ModelConfig(iiae=info["iiae"], scaling=info["scaling"], retrieval=info["retrieval"])
    flat = info["iiae"]
    iiae = {
        **_FLAT_IIAE_DEFAULTS,
        **{k: v for k, v in flat.items() if k in IIAEConfig.model_fields},
    }
    scaling = {k: v for k, v in flat.items() if k in ScalingConfig.model_fields}
    scaling |= {new: flat[old] for old, new in _FLAT_SCALING_NAMES.items() if old in flat}
    retrieval = {k: v for k, v in flat.items() if k in RetrievalConfig.model_fields}
    return ModelConfig(iiae=iiae, scaling=scaling, retrieval=retrieval)


def load_model(run_dir: Path, device: torch.device | None = None) -> tuple[RetrievalModel, dict]:
    """The trained model (eval mode) and its run info."""
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{run_dir}: no run.json; is this a training run directory?")
    info = json.loads(info_path.read_text())
    model = RetrievalModel.from_config(model_config(info))
    model.load_file_state(load_file(str(run_dir / "model.safetensors")))
    return model.to(device or torch.device("cpu")).eval(), info
