"""A tiny stand-in for PyTorch, for running wildbook-ia 4.0.4 without its detectors.

WBIA imports torch at start-up only to define classes (``torch.utils.data.Dataset``,
``torch.utils.data.sampler.Sampler``, ``torch.nn.Module``) and to pick multiprocessing's start
method (``wbia/dev.py``); it never runs a network unless a detector or a verifier is asked
for. The few functions defined here that would need tensors raise ``RuntimeError``. Installed by
scripts/real-wbia/install.sh; the real package is ~5 GB with its CUDA wheels.
"""

__version__ = "0.0.0+wbia.standin"
STANDIN = True

from . import backends, cuda, multiprocessing, nn, optim, utils  # noqa: E402,F401


class device:  # torch.device('cpu') works; nothing can be put on it
    def __init__(self, type="cpu", index=None):
        self.type = type

    def __str__(self):
        return self.type


def _unavailable(*args, **kwargs):
    raise RuntimeError("torch stand-in: no tensors here (install real PyTorch for this)")


load = save = tensor = set_grad_enabled = _unavailable
