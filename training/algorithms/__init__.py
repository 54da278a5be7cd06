"""One small class per method; `make_algorithm` picks it by name."""
from training.algorithms.base import Algorithm
from training.algorithms.erm import ERM
from training.errors import FaslandError

ALGORITHMS = {"erm": ERM}


def make_algorithm(name: str, model, num_domains: int, hparams: dict | None = None) -> Algorithm:
    if name not in ALGORITHMS:
        raise FaslandError(f"unknown method '{name}'; use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](model, num_domains, hparams)
