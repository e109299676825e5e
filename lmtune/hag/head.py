"""The predictor head of a HAG model folder: features from the frozen model, a small network that scores
candidate configs.

The feature of an input is the final-layer hidden state at its last token, what the model "knows" about the
input just before it would answer; ``lmtune.hag.learners`` trains the network, ``lmtune.hag.generation``
uses it.
"""

from __future__ import annotations

from pathlib import Path

from lmtune.hag.space import Decoding

HEAD_FILE = "head.safetensors"


def last_hidden(model, tokenizer, prompts: list[str], device, batch_size: int = 64):
    """The final-layer hidden state at each prompt's last token, and each prompt's token count."""
    import torch

    features, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id or 0
        batch = torch.tensor([s + [pad] * (width - len(s)) for s in ids], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids], device=device)
        with torch.no_grad():
            hidden = model(input_ids=batch, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        last = torch.tensor([len(s) - 1 for s in ids], device=device)
        features.append(hidden[torch.arange(len(ids), device=device), last].float())
        lengths += [len(s) for s in ids]
    return torch.cat(features), lengths


class Head:
    """Standardized features -> (hidden layer) -> one output per candidate config."""

    def __init__(self, net, mean, std):
        self.net, self.mean, self.std = net, mean, std

    def __call__(self, features):
        import torch

        with torch.no_grad():
            return self.net((features - self.mean) / self.std)


def network(width: int, hidden: int, classes: int):
    import torch

    if hidden == 0:
        return torch.nn.Linear(width, classes)
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, classes))


def load_head(directory: Path, meta: dict, device: str = "cpu") -> tuple[Head, list[Decoding]]:
    """The network of a head HAG model folder and its candidate configs, on ``device``."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(directory) / HEAD_FILE), device=device)
    spec = meta["head"]
    classes = [Decoding.from_dict(c) for c in spec["classes"]]
    net = network(spec["width"], spec["hidden"], len(classes))
    net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
    net.to(device).eval()
    return Head(net, tensors["mean"], tensors["std"]), classes
