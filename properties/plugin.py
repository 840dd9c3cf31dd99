"""pytest plugin (entry point ``pytest11``): the ``--flashproof-target`` option.

Kept import-light: it is loaded by every pytest run in an environment that installs flashproof.
"""

__all__ = ["pytest_addoption"]


def pytest_addoption(parser):
    group = parser.getgroup("flashproof")
    group.addoption("--flashproof-target", default=None, metavar="MODULE:ATTR",
                    help="attention kernel under test (default: flashproof's own Triton kernel)")
