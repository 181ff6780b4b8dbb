"""Rebuild stdlib_docstrings.txt: the docstrings of a fixed list of pure-Python standard-library
modules (PSF-licensed text that ships with every Python), ASCII only, in a fixed order.

The shipped file is the corpus; this script only documents where it came from (other Python
versions give slightly different text). Usage: python -m quantlib.models.data.make_corpus
"""
import importlib
import inspect
from pathlib import Path

MODULES = ["abc", "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy",
           "csv", "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions",
           "functools", "gettext", "glob", "heapq", "hmac", "inspect", "ipaddress", "json",
           "logging", "optparse", "pathlib", "pickle", "pprint", "queue", "random", "shutil",
           "statistics", "string", "tarfile", "tempfile", "textwrap", "threading", "typing",
           "unittest.case", "urllib.parse", "uuid", "zipfile"]
MAX_BYTES = 250_000


def docstrings(module):
    """The module's docstring, then its public classes/functions (and their methods), by name."""
    yield inspect.getdoc(module)
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield inspect.getdoc(obj)
        if inspect.isclass(obj):
            for mname, meth in sorted(vars(obj).items()):
                if not mname.startswith("_") and inspect.isfunction(meth):
                    yield inspect.getdoc(meth)


def build() -> str:
    seen, parts, size = set(), [], 0
    for name in MODULES:
        for doc in docstrings(importlib.import_module(name)):
            if not doc or doc in seen or len(doc) < 80:
                continue
            seen.add(doc)
            doc = doc.encode("ascii", "ignore").decode() + "\n\n"
            if size + len(doc) > MAX_BYTES:
                return "".join(parts)
            parts.append(doc)
            size += len(doc)
    return "".join(parts)


if __name__ == "__main__":
    out = Path(__file__).with_name("stdlib_docstrings.txt")
    out.write_text(build())
    print(out.name, out.stat().st_size, "bytes")
