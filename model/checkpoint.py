"""A trained run on disk: ``model.safetensors`` plus ``run.json`` (config, backbone, split)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.iiae import IIAE, IIAEConfig


def save_model(model: IIAE, run_dir: Path, info: dict) -> None:
    """Write ``model.safetensors`` and ``run.json`` (config, backbone, split...) atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "model.safetensors.tmp"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    tmp.replace(run_dir / "model.safetensors")
    info = {**info, "iiae": model.cfg.model_dump()}
    tmp_json = run_dir / "run.json.tmp"
    tmp_json.write_text(json.dumps(info, indent=2))
    tmp_json.replace(run_dir / "run.json")


def load_model(run_dir: Path, device: torch.device | None = None) -> tuple[IIAE, dict]:
    """The trained model (eval mode) and its run info."""
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{run_dir}: no run.json; is this a training run directory?")
    info = json.loads(info_path.read_text())
    model = IIAE(IIAEConfig(**info["iiae"]))
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    return model.to(device or torch.device("cpu")).eval(), info
