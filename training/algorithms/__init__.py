"""One small class per method; `make_algorithm` picks it by name, `hparams` resolves its hyper-parameters."""
from training.algorithms.base import Algorithm
from training.algorithms.erm import ERM
from training.algorithms.gacfas import GACFAS
from training.algorithms.rfm import RFM
from training.algorithms.sam import SAM
from training.errors import FaslandError

ALGORITHMS = {"erm": ERM, "sam": SAM, "gacfas": GACFAS, "rfm": RFM}


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise FaslandError(f"unknown method '{name}'; use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def make_algorithm(name: str, model, num_domains: int, hparams: dict | None = None) -> Algorithm:
    return algorithm_class(name)(model, num_domains, hparams)


def hparams(method: str, config: dict | None = None) -> dict:
    """Every hyper-parameter `method` accepts: its class's defaults (`Algorithm.defaults()`, the only ones),
    overridden by the keys of `config["hparams"]` (a run config, e.g. a checkpoint's) that `method` knows.
    A config of another method lends only the shared keys: hparams("gacfas", sam_config)["rho"] is SAM's ρ."""
    defaults = algorithm_class(method).defaults()
    given = config.get("hparams") if isinstance(config, dict) else None
    given = given if isinstance(given, dict) else {}
    return {**defaults, **{k: v for k, v in given.items() if k in defaults}}
