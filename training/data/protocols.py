"""Protocols: source domains -> held-out target (I = Replay-Attack, O = OULU-NPU, C = CASIA-MFSD,
M = MSU-MFSD).

The leave-one-domain-out protocols (ICM2O … MI2O) train on every image of the sources and test on the
target. The unseen-attack protocols also hold attack kinds out of training: the sources keep their live
images and the spoofs of the training kinds, the target its live images and the spoofs of the held-out
kinds, so the target's AUC is live against attacks never seen (reported per held-out kind too):

    PR2CW  I, O, M (print, replay)  ->  C (cut, warped)    paper held and bent vs. flat media
    P2R    I, M (print)             ->  O (replay)         2-D paper vs. screens
"""

from training.errors import FaslandError

PROTOCOLS = {
    "ICM2O": (("I", "C", "M"), "O"),
    "OCM2I": (("O", "C", "M"), "I"),
    "OCI2M": (("O", "C", "I"), "M"),
    "OMI2C": (("O", "M", "I"), "C"),
    "MI2C": (("M", "I"), "C"),
    "MI2O": (("M", "I"), "O"),
    "PR2CW": (("I", "O", "M"), "C"),
    "P2R": (("I", "M"), "O"),
}
# protocol -> (attack kinds trained on, attack kinds tested on); kinds are training.data.synth.KINDS
UNSEEN_ATTACKS = {
    "PR2CW": (("print", "replay"), ("cut", "warped")),
    "P2R": (("print",), ("replay",)),
}


def parse_protocol(name: str) -> tuple[tuple[str, ...], str]:
    """'ICM2O' -> (('I', 'C', 'M'), 'O')."""
    if name not in PROTOCOLS:
        raise FaslandError(f"unknown protocol '{name}'; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def attack_kinds(protocol: str, domain: str) -> tuple[str, ...] | None:
    """The attack kinds `domain` keeps under `protocol` (its training kinds if it is a source, the
    held-out kinds if it is the target), or None: every image."""
    sources, _ = parse_protocol(protocol)
    if protocol not in UNSEEN_ATTACKS:
        return None
    train, test = UNSEEN_ATTACKS[protocol]
    return train if domain in sources else test


def check_protocol_data(protocol: str, root) -> None:
    """An unseen-attack protocol needs attack labels per image, which only SynthFAS has."""
    parse_protocol(protocol)
    if protocol in UNSEEN_ATTACKS and str(root or "synth") != "synth":
        raise FaslandError(f"protocol {protocol} holds attack kinds out of training, but the real data in '{root}' has no "
                           f"attack labels; use --data synth, or a leave-one-domain-out protocol such as ICM2O")


def load_protocol_domain(protocol: str, root: str, domain: str, split: str, image_size: int = 64, seed: int = 0,
                         cache_dir: str | None = None):
    """One domain's split as `protocol` sees it: (DomainData, Annotations) with SynthFAS's attack kind and
    region masks of each image (None on real data, which has no attack labels). Under an unseen-attack
    protocol only live images and spoofs of the domain's kinds are kept, in both."""
    from training.data import load_domain

    check_protocol_data(protocol, root)
    keep = attack_kinds(protocol, domain)
    data = load_domain(root, domain, split, image_size=image_size, seed=seed, cache_dir=cache_dir)
    if str(root) != "synth":
        return data, None
    import torch

    from training.data import synth

    notes = synth.load_annotations(domain, split, image_size, None, seed, cache=cache_dir)
    if keep is None:
        return data, notes
    wanted = torch.tensor([-1] + [synth.KINDS.index(k) for k in keep])
    idx = torch.isin(notes.kinds, wanted).nonzero().flatten()
    return type(data)(*(t[idx] for t in data)), type(notes)(*(t[idx] for t in notes))
