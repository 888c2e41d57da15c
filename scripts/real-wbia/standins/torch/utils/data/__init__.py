"""torch.utils.data stand-in: base classes WBIA subclasses at import time."""
from . import sampler  # noqa: F401
from .sampler import Sampler  # noqa: F401


class Dataset:
    def __getitem__(self, index):
        raise NotImplementedError


class DataLoader:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torch stand-in: DataLoader is not available")
