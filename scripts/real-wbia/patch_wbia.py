"""Source patches install.sh applies to the installed WBIA packages (idempotent).

Usage: VENV/bin/python patch_wbia.py SITE_PACKAGES

Each patch replaces an exact piece of text (or one match of a regular expression). A file already patched is left alone; a file that
has neither the original nor the patched text makes this script fail (the upstream release
changed: read the file and adjust the patch).
"""
import pathlib
import re
import sys

PATCHES = [
    (
        # libhesaff.so crashes the interpreter when loaded on these machines: keep pyhesaff
        # importable without it (HotSpotter's feature extraction cannot run; WBIA's API,
        # database and chips do not need it).
        "pyhesaff/_pyhesaff.py",
        """try:
    HESAFF_CLIB, __LIB_FPATH__ = _load_hesaff_clib()
except AttributeError:
    print('Need to rebuild hesaff')
    raise

KPTS_DIM = HESAFF_CLIB.get_kpts_dim()
DESC_DIM = HESAFF_CLIB.get_desc_dim()
""",
        """# real-wbia patch (scripts/real-wbia): libhesaff.so is not loaded.
HESAFF_CLIB, __LIB_FPATH__ = None, None

KPTS_DIM = 6
DESC_DIM = 128
""",
    ),
    (
        # WBIA's web server listens on every address: keep it on loopback.
        "wbia/web/app.py",
        """            http_server.listen(app.server_port)
""",
        """            http_server.listen(app.server_port, address='127.0.0.1')  # real-wbia patch
""",
    ),
    (
        # WBIA reports errors and request traces to Wild Me's Sentry server from every
        # process (the DSN is hard-coded, `wbia/constants.py`): nothing leaves this machine.
        "wbia/constants.py",
        re.compile(r"^( +)sentry_dsn = 'https://[^']+'\n", re.M),
        r"\1sentry_dsn = None  # real-wbia patch: no error reports sent out\n",
    ),
    (
        # WBIA 4.0.4 loads a plugin only when its module is in AUTOLOAD_PLUGIN_MODNAMES, most
        # behind a command-line flag; wbia-plugin-lightglue came later and is not listed. Add
        # it the way the others are, behind `--lightglue` (install_plugin.sh, then
        # `python -m wbia ... --lightglue`); without the flag nothing changes.
        "wbia/control/IBEISControl.py",
        """if ut.get_argflag('--lca'):
    AUTOLOAD_PLUGIN_MODNAMES += [
        (('--no-lca', '--nolca'), 'wbia_lca._plugin'),
    ]
""",
        """if ut.get_argflag('--lca'):
    AUTOLOAD_PLUGIN_MODNAMES += [
        (('--no-lca', '--nolca'), 'wbia_lca._plugin'),
    ]

if ut.get_argflag('--lightglue'):  # real-wbia patch
    AUTOLOAD_PLUGIN_MODNAMES += [
        (('--no-lightglue', '--nolightglue'), 'wbia_lightglue._plugin'),
    ]
""",
    ),
]


def main():
    site = pathlib.Path(sys.argv[1])
    for rel, old, new in PATCHES:
        path = site / rel
        text = path.read_text()
        if isinstance(old, re.Pattern):
            marker = new.split("# ", 1)[1].split("\\n")[0]
            count = len(old.findall(text))
            if count == 0 and marker in text:
                print(f"patch: {rel}: already applied")
                continue
            if count != 1:
                sys.exit(f"patch: {rel}: {old.pattern!r} matches {count} times, not once; not patched")
            patched = old.sub(new, text)
        else:
            if new in text and old not in text:
                print(f"patch: {rel}: already applied")
                continue
            if text.count(old) != 1:
                sys.exit(f"patch: {rel}: expected text found {text.count(old)} times, not once; not patched")
            patched = text.replace(old, new)
        path.write_text(patched)
        # Drop stale bytecode so the patched source is what runs.
        for pyc in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
            pyc.unlink()
        print(f"patch: {rel}: applied")


if __name__ == "__main__":
    main()
