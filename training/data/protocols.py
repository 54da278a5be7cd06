"""Cross-domain protocols: source domains -> held-out target (I = Replay-Attack, O = OULU-NPU,
C = CASIA-MFSD, M = MSU-MFSD)."""

from training.errors import FaslandError

PROTOCOLS = {
    "ICM2O": (("I", "C", "M"), "O"),
    "OCM2I": (("O", "C", "M"), "I"),
    "OCI2M": (("O", "C", "I"), "M"),
    "OMI2C": (("O", "M", "I"), "C"),
    "MI2C": (("M", "I"), "C"),
    "MI2O": (("M", "I"), "O"),
}


def parse_protocol(name: str) -> tuple[tuple[str, ...], str]:
    """'ICM2O' -> (('I', 'C', 'M'), 'O')."""
    if name not in PROTOCOLS:
        raise FaslandError(f"unknown protocol '{name}'; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
