"""One small class per method; `make_algorithm` picks it by name."""
from training.algorithms.base import BASE_HPARAMS, Algorithm
from training.algorithms.erm import ERM
from training.algorithms.gacfas import GACFAS
from training.algorithms.rfm import RFM
from training.algorithms.sam import SAM
from training.errors import FaslandError

ALGORITHMS = {"erm": ERM, "sam": SAM, "gacfas": GACFAS, "rfm": RFM}


def make_algorithm(name: str, model, num_domains: int, hparams: dict | None = None) -> Algorithm:
    if name not in ALGORITHMS:
        raise FaslandError(f"unknown method '{name}'; use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](model, num_domains, hparams)


def default_hparams(name: str) -> dict:
    """Every hyper-parameter `name` accepts, with its default (unknown keys are an error)."""
    if name not in ALGORITHMS:
        raise FaslandError(f"unknown method '{name}'; use one of {', '.join(ALGORITHMS)}")
    return {**BASE_HPARAMS, **ALGORITHMS[name].HPARAMS}
