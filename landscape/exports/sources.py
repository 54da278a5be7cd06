"""What an input file of `fasland export` is: a surface HDF5, or a result JSON that a registered view shows."""
import json
import os
from pathlib import Path

from training.errors import FaslandError


def classify(path) -> tuple[object, object]:
    """('surface', Surface) | (view, parsed JSON) with the view registered for its command
    (landscape.exports.views), or one clear FaslandError."""
    import h5py

    from landscape.exports import views
    from landscape.exports.surface_file import read_surface

    path = str(path)
    shown = ", ".join(f"'fasland {c}'" for c in views.commands())
    if not os.path.exists(path):
        raise FaslandError(f"input '{path}' not found; pass a SURF.h5 from 'fasland surface'"
                           + (f" or a JSON from {shown}" if shown else ""))
    if h5py.is_hdf5(path) or Path(path).suffix.lower() in (".h5", ".hdf5"):
        return "surface", read_surface(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FaslandError(f"'{path}' is neither an HDF5 surface nor readable JSON ({e.__class__.__name__}); pass a "
                           "SURF.h5 from 'fasland surface'" + (f" or a JSON from {shown}" if shown else "")) from None
    view = views.view_for(data)
    if view is None:
        raise FaslandError(f"'{path}' is neither a surface file nor a result this page can show"
                           + (f" (it shows the JSON of {shown})" if shown else "") + "; pass a file those commands wrote")
    return view, data


def parse_labels(spec: str | None, n: int) -> list[str] | None:
    """--labels 'ERM,SAM,GAC-FAS': one per input file."""
    if spec is None:
        return None
    labels = [s.strip() for s in spec.split(",")]
    if len(labels) != n:
        raise FaslandError(f"--labels gives {len(labels)} names for {n} input files; pass one comma-separated name per file")
    return labels
