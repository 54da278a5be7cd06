"""Empirical risk minimization: θ ← SGD step on ∇L(θ; S) [+ ∇ supcon]."""
from training.algorithms.base import Algorithm


class ERM(Algorithm):
    def gradient(self, batch, named) -> dict:
        return self.erm_gradient(batch, named)
