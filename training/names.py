"""The names the command line offers as choices, importable without torch (the parsers must answer in
under a second); tests/test_commands.py checks that each equals the registry it mirrors."""
import ast
from pathlib import Path

METHODS = ("erm", "sam", "gacfas", "rfm")      # training.algorithms.ALGORITHMS
PRESETS = ("demo", "demo64", "paper")          # training.presets.PRESETS


def declared_hparams(module: str, name: str) -> dict:
    """The `HPARAMS` literal of class `name` in training/algorithms/<module>.py, read from its source: the
    registry's own defaults (not a copy) for the parsers' help, without importing torch."""
    tree = ast.parse((Path(__file__).parent / "algorithms" / f"{module}.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    return ast.literal_eval(next(a.value for a in cls.body if isinstance(a, ast.Assign)
                                 and any(getattr(t, "id", None) == "HPARAMS" for t in a.targets)))
