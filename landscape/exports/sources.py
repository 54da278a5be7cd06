"""What an input file of `fasland export` is: a surface HDF5, a Hessian JSON or a conflicts JSON."""
import os
from pathlib import Path

from training.errors import FaslandError


def classify(path) -> tuple[str, object]:
    """('surface', Surface) | ('hessian', dict) | ('conflicts', dict), or one clear FaslandError."""
    import h5py

    from landscape.exports.results_json import kind, read_json
    from landscape.exports.surface_file import read_surface

    path = str(path)
    if not os.path.exists(path):
        raise FaslandError(f"input '{path}' not found; pass a SURF.h5 from 'fasland surface' or a JSON from "
                           "'fasland hessian'/'fasland conflicts'")
    if h5py.is_hdf5(path) or Path(path).suffix.lower() in (".h5", ".hdf5"):
        return "surface", read_surface(path)
    data = read_json(path)
    return kind(data, path), data


def parse_labels(spec: str | None, n: int) -> list[str] | None:
    """--labels 'ERM,SAM,GAC-FAS': one per input file."""
    if spec is None:
        return None
    labels = [s.strip() for s in spec.split(",")]
    if len(labels) != n:
        raise FaslandError(f"--labels gives {len(labels)} names for {n} input files; pass one comma-separated name per file")
    return labels
