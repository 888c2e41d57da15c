"""torch.multiprocessing stand-in: the standard library's multiprocessing, as the real one
re-exports it (``wbia/dev.py`` calls ``set_start_method('spawn')`` through it)."""
from multiprocessing import *  # noqa: F401,F403
from multiprocessing import get_start_method, set_start_method  # noqa: F401
