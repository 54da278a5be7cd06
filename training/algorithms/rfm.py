"""Regularized Fine-grained Meta-learning (RFM; Shao, Lan & Yuen, AAAI 2020).

Three parts: feature extractor F (the model's trunk, `model.features`), meta learner / classifier M (the
model's `head`, θ_M) and a depth estimator D (`RFM.depth_head`, kept here so `model` stays the plain
classifier). Each step one present source domain is the meta-test domain T̃, the others are the meta-train
domains T_i. With α = meta_lr, λ = depth_weight, w = meta_test_weight (1 and 1 in the paper's Algorithm 1):

  meta-train  θ'_M,i = θ_M − α ∇_θM L_cls(T_i)(θ_F, θ_M)            (one inner step per T_i: fine-grained)
  objective   Σ_i [L_cls(T_i)(θ_F, θ_M) + λ L_dep(T_i)(θ_F, θ_D)]
              + w [Σ_i L_cls(T̃)(θ_F, θ'_M,i) + λ L_dep(T̃)(θ_F, θ_D)]

and one step of the base optimizer (lr = β) on its gradient. θ_D appears only in the depth terms and θ_M
only in the classification terms, so this single gradient is exactly the paper's three meta-optimization
updates: θ_M by the classification terms, θ_D by the depth terms, θ_F by all of them. The gradient flows
through the inner step (second order) unless `first_order`, which detaches ∇_θM L_cls(T_i).
`aggregate` (the paper's "w/o fine-grained" ablation) treats the union of the meta-train domains as one
meta-train domain: one inner step on it and one meta-test term.

Conventions (the paper leaves them open): L_cls is base.bce (mean over the domain's samples), L_dep the
mean squared error per pixel, as in the authors' release (which also weights the meta-test depth loss by w,
and uses λ = 10, α = 1e-3). The whole multi-domain batch goes through the trunk in one train-mode forward
(BatchNorm statistics over all domains, as for the other methods; the release runs one forward per domain).
M is the model's head only (the released M also holds three conv blocks); D reads the output of the trunk
module `depth_layer`. The meta-test domain is drawn uniformly from a generator seeded with the step
counter `step`, so a run is reproducible and resumes exactly when `extra_state()` is saved and restored.

Trainer switches (base.Algorithm): warming → a multi-task ERM step on (1/n) Σ_j [L_cls(S_j) + λ L_dep(S_j)];
head_only → only `head.*` is stepped (D too is left alone); log_gradients → gnorm_<i>, cos_<i>_<j> of the
per-domain classification gradients at θ.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from training.algorithms.base import Algorithm, gradient_logs
from training.errors import FaslandError


class DepthHead(nn.Module):
    """D: trunk feature map h [B,C,h,w] → depth map in [0,1] [B,*size]:
    sigmoid(resize(conv1×1(ReLU(BN(conv(ReLU(BN(conv(h))))))))), 3×3 convs C → 128 → 64, then 64 → 1.
    (The release ends in a 3×3 conv, BN and ReLU; a 1×1 conv into a sigmoid keeps the last layer's
    curvature low enough for SGD at the presets' rates, where a 3×3 one saturated or diverged.)"""

    def __init__(self, in_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 1, 1))

    def forward(self, h: torch.Tensor, size) -> torch.Tensor:
        z = F.interpolate(self.body(h), size=tuple(size), mode="bilinear", align_corners=False)
        return torch.sigmoid(z).squeeze(1)


def out_channels(module: nn.Module) -> int | None:
    """Channels of a module's output: those of its last Conv2d."""
    convs = [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


class RFM(Algorithm):
    """update([(x_i, y_i, depth_i)]) → one RFM step; depth_i [B,H,W] in [0,1] (float) or 0..255 (uint8)."""

    needs_depth = True
    warms_as_erm = False             # its warming step is multi-task (classification + depth)

    HPARAMS = {
        "meta_lr": 1e-3,            # α, the inner step on θ_M
        "meta_test_weight": 1.0,    # w on the meta-test losses
        "depth_weight": 1.0,        # λ on every depth loss (the authors' release uses 10)
        "first_order": False,       # detach the inner gradient (the paper's first-order ablation)
        "aggregate": False,         # one inner step on the union of the meta-train domains
        "depth_layer": "layer2",    # the trunk module whose output D reads (32×32 at 256 px, as in the paper)
    }

    def __init__(self, model: nn.Module, num_domains: int, hparams: dict | None = None):
        super().__init__(model, num_domains, hparams)
        if self.hparams.get("supcon_weight"):
            raise FaslandError(f"RFM does not use the supervised-contrastive loss; set supcon_weight 0 (got {self.hparams['supcon_weight']})")
        if not (hasattr(model, "features") and isinstance(getattr(model, "head", None), nn.Module)):
            raise FaslandError(f"RFM needs a model with .features(x) and a .head module (FASNet), not {type(model).__name__}")
        name = self.hparams["depth_layer"]
        self.depth_module = dict(model.named_modules()).get(name) if isinstance(name, str) and name else None
        channels = out_channels(self.depth_module) if self.depth_module is not None else None
        if channels is None:
            raise FaslandError(f"depth_layer '{name}' is not a convolutional module of {type(model).__name__}; use one of its conv stages, e.g. layer2 or layer3")
        ref = next(model.parameters())
        self.depth_head = DepthHead(channels).to(device=ref.device, dtype=ref.dtype)
        self.optimizer.add_param_group({"params": list(self.depth_head.parameters()), "lr": self.hparams["lr"]})
        self.step = 0

    # ---- state the trainer keeps beside the model -------------------------------------------------------

    def extra_state(self) -> dict:
        """D's weights and the step counter (which picks the meta-test domains), for checkpoints."""
        return {"depth_head": self.depth_head.state_dict(), "step": torch.tensor(self.step)}

    def load_extra_state(self, state: dict) -> None:
        self.depth_head.load_state_dict(state["depth_head"])
        self.step = int(state["step"])

    # ---- one step ---------------------------------------------------------------------------------------

    def meta_test(self, n: int) -> int:
        """Position (among the n present domains) of this step's meta-test domain: uniform, seeded by `step`."""
        return int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(self.step)))

    def update(self, minibatches) -> dict:
        """One step; returns loss (mean L_cls over the present domains at θ), loss_<i>, loss_depth (mean L_dep),
        meta_test (its domain index), loss_meta_test (mean over the inner steps), loss_objective
        [and gnorm_<i>, cos_<i>_<j> of ∇L_cls(S_i) at θ when log_gradients]."""
        domains, xs, ys, depths = self.split_minibatches(minibatches)
        self.depth_head.train()
        model_params, depth_params = self.step_params()
        self.optimizer.zero_grad(set_to_none=True)
        f, depth_pred = self.forward(torch.cat(xs), depths[0].shape[-2:])
        sizes = [len(x) for x in xs]
        fs, preds = f.split(sizes), depth_pred.split(sizes)
        theta_m = dict(self.model.head.named_parameters())
        cls = [self.loss(self.classify(fj, theta_m), y) for fj, y in zip(fs, ys)]
        dep = [F.mse_loss(p, d) for p, d in zip(preds, depths)]
        logs = {"loss": torch.stack(cls).mean().item(), **{f"loss_{i}": l.item() for i, l in zip(domains, cls)},
                "loss_depth": torch.stack(dep).mean().item()}
        if self.log_gradients:
            gs = [torch.autograd.grad(l, model_params, retain_graph=True, allow_unused=True, materialize_grads=True) for l in cls]
            logs.update(gradient_logs(domains, gs, 1.0))
            del gs
        if self.warming:   # plain multi-task ERM: (1/n) Σ_j [L_cls(S_j) + λ L_dep(S_j)]
            objective = (sum(cls) + self.hparams["depth_weight"] * sum(dep)) / len(domains)
        else:
            t = self.meta_test(len(domains))
            objective, meta_test_losses = self.meta_objective(fs, ys, preds, depths, cls, dep, t, theta_m)
            logs.update(meta_test=domains[t], loss_meta_test=torch.stack(meta_test_losses).mean().item())
        logs["loss_objective"] = objective.item()
        objective.backward(inputs=model_params + depth_params)
        self.optimizer.step()
        self.step += 1
        return logs

    def meta_objective(self, fs, ys, preds, depths, cls, dep, t, theta_m):
        """Σ_i [L_cls(T_i) + λ L_dep(T_i)] + w [Σ_i L_cls(T̃)(θ'_M,i) + λ L_dep(T̃)] (module docstring)."""
        alpha, lam, w = self.hparams["meta_lr"], self.hparams["depth_weight"], self.hparams["meta_test_weight"]
        train = [j for j in range(len(fs)) if j != t]
        if self.hparams["aggregate"]:
            def union(parts):
                return torch.cat([parts[j] for j in train])
            pairs = [(self.loss(self.classify(union(fs), theta_m), union(ys)), F.mse_loss(union(preds), union(depths)))]
        else:
            pairs = [(cls[j], dep[j]) for j in train]
        objective, meta_test_losses = 0, []
        for l_cls, l_dep in pairs:
            grads = torch.autograd.grad(l_cls, list(theta_m.values()), retain_graph=True,
                                        create_graph=not self.hparams["first_order"])
            adapted = {name: p - alpha * g for (name, p), g in zip(theta_m.items(), grads)}
            meta_test_losses.append(self.loss(self.classify(fs[t], adapted), ys[t]))
            objective = objective + l_cls + lam * l_dep + w * meta_test_losses[-1]
        return objective + w * lam * dep[t], meta_test_losses

    # ---- pieces -----------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, depth_size):
        """One train-mode trunk pass: features f = F(x) and D's depth map from the `depth_layer` output."""
        mid = {}
        hook = self.depth_module.register_forward_hook(lambda m, i, out: mid.__setitem__("h", out))
        try:
            f = self.model.features(x)
        finally:
            hook.remove()
        return f, self.depth_head(mid["h"], depth_size)

    def classify(self, f: torch.Tensor, theta_m: dict) -> torch.Tensor:
        """M(f; θ_M): the model's head with parameters θ_M, one logit per feature row."""
        return functional_call(self.model.head, theta_m, (f,)).reshape(-1)

    def step_params(self) -> tuple[list, list]:
        """(model parameters this step trains, D's parameters): base trainable(), and D unless head_only."""
        return [p for _, p in self.trainable()], [] if self.head_only else list(self.depth_head.parameters())

    def split_minibatches(self, minibatches):
        """Check [(x_i, y_i, depth_i)] and keep the present domains → (indices, xs, ys, depths in [0,1])."""
        if not isinstance(minibatches, (list, tuple)) or len(minibatches) != self.num_domains:
            got = len(minibatches) if isinstance(minibatches, (list, tuple)) else type(minibatches).__name__
            raise FaslandError(f"RFM update got {got} domain minibatches for {self.num_domains} source domains; pass one (x, y, depth) per domain")
        domains, xs, ys, depths = [], [], [], []
        for i, b in enumerate(minibatches):
            if b is None or len(b[0]) == 0:
                continue
            if len(b) != 3 or b[2].dim() != 3 or len(b[2]) != len(b[0]) or len(b[1]) != len(b[0]):
                raise FaslandError(f"RFM needs a depth map per image: pass domain {i}'s minibatch as (x, y, depth) with x [B,3,H,W], y [B], depth [B,32,32] (SynthFAS DomainData.depth, or a depth-map folder for real data)")
            depth = b[2].to(dtype=b[0].dtype) / 255 if b[2].dtype == torch.uint8 else b[2].to(dtype=b[0].dtype)
            domains.append(i), xs.append(b[0]), ys.append(b[1].reshape(-1)), depths.append(depth)
        if len(domains) < 2:
            raise FaslandError(f"RFM needs at least two source domains with samples in a batch (meta-train and meta-test), got {len(domains)}; train with two or more sources")
        if len({d.shape[-2:] for d in depths}) > 1:
            raise FaslandError("RFM got depth maps of different sizes across domains; resize them all to 32×32")
        return domains, xs, ys, depths
