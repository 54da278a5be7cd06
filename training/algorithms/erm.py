"""Empirical risk minimization: θ ← SGD step on ∇L(θ; S)."""
from training.algorithms.base import Algorithm


class ERM(Algorithm):
    def update(self, minibatches) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        loss, losses, _ = self.source_loss(minibatches)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **{f"loss_{i}": l.item() for i, l in enumerate(losses)}}
