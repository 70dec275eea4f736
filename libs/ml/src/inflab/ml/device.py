"""The one device choice of every worker: the first CUDA GPU when one is present, else the
CPU. Training, generation and influence all load their models through it, so a GPU node
runs every stage on its GPU and a CPU node runs them all on the CPU; nothing assumes one."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def compute_device() -> "torch.device":
    """CUDA when present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def on_cpu() -> bool:
    """Whether the workers compute on the CPU (no GPU present)."""
    return compute_device().type == "cpu"
