"""The names the command line offers as choices, importable without torch (the parsers must answer in
under a second); tests/test_commands.py checks that each equals the registry it mirrors."""
METHODS = ("erm", "sam", "gacfas", "rfm")      # training.algorithms.ALGORITHMS
PRESETS = ("demo", "paper")                    # training.presets.PRESETS
