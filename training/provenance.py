"""What made a result: the versions of fasland and the numerical packages, for every file's provenance."""
import importlib
import platform
from importlib import metadata


def versions() -> dict:
    """{package: version} of fasland, torch, numpy, scipy and h5py (those installed) and python."""
    try:
        out = {"fasland": metadata.version("fasland")}
    except metadata.PackageNotFoundError:
        out = {"fasland": "unknown"}
    for name in ("torch", "numpy", "scipy", "h5py"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    out["python"] = platform.python_version()
    return out
