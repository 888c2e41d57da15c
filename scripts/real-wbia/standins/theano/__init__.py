"""A stand-in for Theano, for running wildbook-ia 4.0.4 on Python 3.11.

WBIA's `query_chips_graph` (`wbia/web/apis_query.py`, the function behind every
identification job) starts with an unused `import theano  # NOQA`. Theano 1.0.5 is
sdist-only and does not build on Python 3.11; without a module of that name every job ends
at that line instead of in the pipeline. Nothing in WBIA's identification code calls into it.
Installed by scripts/real-wbia/install.sh.
"""

__version__ = "0.0.0+wbia.standin"
STANDIN = True
