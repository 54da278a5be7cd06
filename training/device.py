"""Device choice: `auto` is CUDA where present; under MPI rank r takes GPU r mod (GPUs on its node)."""
import os

import torch

from training.errors import FaslandError


def pick_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    if local_rank is None:
        local_rank = int(os.environ.get("MPI_LOCALRANKID", os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise FaslandError("--device cuda was asked for but no CUDA GPU is visible; pass --device cpu or --device auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        return torch.device(name)
    except RuntimeError:
        raise FaslandError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
