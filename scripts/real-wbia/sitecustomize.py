"""Python 3.11 shims for wildbook-ia 4.0.4 (installed by scripts/real-wbia/install.sh).

WBIA and utool still call ``inspect.getargspec``/``inspect.formatargspec`` (removed in 3.11)
and use ``distutils.version`` without importing it. This file restores both; it lives in the
venv's site-packages, so every interpreter of that venv (and WBIA's worker processes) loads it.
"""
import collections
import inspect

if not hasattr(inspect, "ArgSpec"):
    inspect.ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")

if not hasattr(inspect, "getargspec"):

    def getargspec(func):
        spec = inspect.getfullargspec(func)
        return inspect.ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)

    inspect.getargspec = getargspec

if not hasattr(inspect, "formatargspec"):

    def formatargspec(
        args,
        varargs=None,
        varkw=None,
        defaults=None,
        kwonlyargs=(),
        kwonlydefaults={},
        annotations={},
        formatarg=str,
        formatvarargs=lambda name: "*" + name,
        formatvarkw=lambda name: "**" + name,
        formatvalue=lambda value: "=" + repr(value),
        formatreturns=lambda text: " -> " + text,
        formatannotation=inspect.formatannotation,
    ):
        # The implementation of Python 3.10's inspect.formatargspec.
        def formatargandannotation(arg):
            result = formatarg(arg)
            if arg in annotations:
                result += ": " + formatannotation(annotations[arg])
            return result

        specs = []
        if defaults:
            firstdefault = len(args) - len(defaults)
        for i, arg in enumerate(args):
            spec = formatargandannotation(arg)
            if defaults and i >= firstdefault:
                spec = spec + formatvalue(defaults[i - firstdefault])
            specs.append(spec)
        if varargs is not None:
            specs.append(formatvarargs(formatargandannotation(varargs)))
        else:
            if kwonlyargs:
                specs.append("*")
        if kwonlyargs:
            for kwonlyarg in kwonlyargs:
                spec = formatargandannotation(kwonlyarg)
                if kwonlydefaults and kwonlyarg in kwonlydefaults:
                    spec += formatvalue(kwonlydefaults[kwonlyarg])
                specs.append(spec)
        if varkw is not None:
            specs.append(formatvarkw(formatargandannotation(varkw)))
        result = "(" + ", ".join(specs) + ")"
        if "return" in annotations:
            result += formatreturns(formatannotation(annotations["return"]))
        return result

    inspect.formatargspec = formatargspec

try:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeprecationWarning, setuptools' UserWarning
        import distutils.version  # noqa: F401  (makes `distutils.version` reachable)
except ImportError:  # Python >= 3.12 without setuptools' distutils
    pass
