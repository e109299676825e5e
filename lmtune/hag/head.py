"""The predictors of the ``head`` and ``neighbours`` learners: a feature of each input from the frozen model, and
from it each candidate config's margin over the global config (its expected score minus the global config's).

The feature is the base model's final-layer hidden states of the input, averaged over its tokens (``mean``), at
its last token (``last``, what the model "knows" just before it would answer), or both side by side. Two maps:

* ``head``: a small network (one hidden layer, or linear) on the standardized feature, trained by squared error
  on the margins the label search measured.
* ``neighbours``: k-nearest-neighbour regression, the mean margins of the k training inputs whose standardized
  features are closest in cosine similarity. A margin measured on one input is one noisy draw; averaging it over
  similar inputs shrinks that noise before the best candidate is picked, where a network fitted to each draw
  would pick the candidate whose noise was luckiest.

``lmtune.hag.learners`` fits them, ``lmtune.hag.guard`` decides where their choice is used, and
``lmtune.hag.generation`` loads them.
"""

from __future__ import annotations

from pathlib import Path

from lmtune.hag.space import Decoding

#: The predictor's tensors in a HAG model folder, by learner.
PREDICTOR_FILES = {"head": "head.safetensors", "neighbours": "neighbours.safetensors"}
HEAD_STEPS = 400


def hidden_features(model, tokenizer, prompts: list[str], pooling: str, device, batch_size: int = 64):
    """Each prompt's feature (see the module docstring) and its token count."""
    import torch

    features, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id or 0
        batch = torch.tensor([s + [pad] * (width - len(s)) for s in ids], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids], device=device)
        with torch.no_grad():
            hidden = model(input_ids=batch, attention_mask=mask, output_hidden_states=True).hidden_states[-1].float()
        last = hidden[torch.arange(len(ids), device=device), mask.sum(1) - 1]
        weights = mask.unsqueeze(-1).float()
        mean = (hidden * weights).sum(1) / weights.sum(1)
        features.append({"last": last, "mean": mean, "last+mean": torch.cat([last, mean], 1)}[pooling])
        lengths += [len(s) for s in ids]
    return torch.cat(features), lengths


class Standardize:
    """Features centred and scaled by the training inputs' mean and standard deviation."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, features) -> Standardize:
        return cls(features.mean(0), features.std(0).clamp(min=1e-6))

    def __call__(self, features):
        return (features - self.mean) / self.std


class Head:
    """Standardized feature -> (hidden layer) -> one margin per candidate config."""

    def __init__(self, net, scale: Standardize):
        self.net, self.scale = net, scale

    def __call__(self, features):
        import torch

        with torch.no_grad():
            return self.net(self.scale(features))

    def tensors(self) -> dict:
        return {**{f"net.{k}": v for k, v in self.net.state_dict().items()}, "mean": self.scale.mean,
                "std": self.scale.std}


class Neighbours:
    """The mean margins of the ``k`` training inputs closest to each input (cosine of standardized features)."""

    def __init__(self, features, margins, scale: Standardize, k: int):
        import torch

        self.scale, self.margins, self.k = scale, margins, min(k, len(margins))
        self.points = torch.nn.functional.normalize(scale(features), dim=1)
        self.features = features

    def __call__(self, features):
        import torch

        query = torch.nn.functional.normalize(self.scale(features), dim=1)
        nearest = (query @ self.points.T).topk(self.k, dim=1).indices
        return self.margins[nearest].mean(1)

    def tensors(self) -> dict:
        return {"features": self.features, "margins": self.margins, "mean": self.scale.mean, "std": self.scale.std}


def network(width: int, hidden: int, outputs: int):
    import torch

    if hidden == 0:
        return torch.nn.Linear(width, outputs)
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, outputs))


def fit_head(features, margins, *, hidden: int, learning_rate: float, seed: int) -> tuple[Head, float]:
    """A head fitted by full-batch AdamW, and its final mean squared error on the training margins."""
    import torch

    torch.manual_seed(seed)
    scale = Standardize.fit(features)
    net = network(features.shape[1], hidden, margins.shape[1]).to(features.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-2)
    x = scale(features)
    for _ in range(HEAD_STEPS):
        loss = ((net(x) - margins) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    return Head(net, scale), loss.item()


def fit_neighbours(features, margins, *, k: int) -> Neighbours:
    return Neighbours(features, margins, Standardize.fit(features), k)


def save_predictor(predictor: Head | Neighbours, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in predictor.tensors().items()}, str(path))


def load_predictor(directory: Path, meta: dict, device: str = "cpu") -> tuple[Head | Neighbours, list[Decoding]]:
    """The predictor of a head or neighbours HAG model folder and its candidate configs, on ``device``."""
    from safetensors.torch import load_file

    kind = meta["learner"]
    tensors = load_file(str(Path(directory) / PREDICTOR_FILES[kind]), device=device)
    spec = meta["predictor"]
    candidates = [Decoding.from_dict(c) for c in spec["candidates"]]
    scale = Standardize(tensors["mean"], tensors["std"])
    if kind == "neighbours":
        return Neighbours(tensors["features"], tensors["margins"], scale, spec["neighbours"]), candidates
    net = network(spec["width"], spec["hidden"], len(candidates))
    net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
    net.to(device).eval()
    return Head(net, scale), candidates
