"""pytest plugin (entry point ``pytest11``): ``--flashproof-target`` and the suite's profiles.

Kept import-light: it is loaded by every pytest run in an environment that installs flashproof,
so it imports nothing heavy at module level (no torch, triton or hypothesis). It

- adds ``--flashproof-target=MODULE:ATTR`` (default: flashproof's own kernel),
- registers the Hypothesis profiles ``ci``, ``gpu``, ``deep`` before Hypothesis loads the one
  named by ``--hypothesis-profile`` (the suite defaults to ``ci`` on CPU, ``gpu`` with CUDA),
- provides the session fixtures ``flashproof_target`` and ``flashproof_profile`` that the
  property tests in flashproof.properties use (``pytest --pyargs flashproof.properties``).
"""
import pytest

__all__ = ["pytest_addoption", "pytest_configure", "pytest_report_header", "flashproof_target",
           "flashproof_profile", "flashproof_context"]

_OURS = ("ci", "gpu", "deep", "flashproof-ci", "flashproof-gpu", "flashproof-deep")


def pytest_addoption(parser):
    group = parser.getgroup("flashproof")
    group.addoption("--flashproof-target", default=None, metavar="MODULE:ATTR",
                    help="attention kernel under test (default: flashproof's own Triton kernel)")


def _profile_option(config):
    try:
        return config.getoption("hypothesis_profile")
    except (ValueError, AttributeError):
        return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Hypothesis loads --hypothesis-profile in its own pytest_configure: ours must exist by then.
    if _profile_option(config) in _OURS:
        from flashproof.properties.profiles import register_profiles

        register_profiles()
    if _wants_us(config):  # a bad target is a usage error, said once, not an error in every test
        from flashproof.properties.targets import TargetLoadError, load_target

        try:
            load_target(config.getoption("flashproof_target"))
        except (TargetLoadError, TypeError, ValueError) as exc:
            raise pytest.UsageError(f"--flashproof-target: {exc}") from None


def _wants_us(config) -> bool:
    return config.getoption("flashproof_target", None) is not None


def pytest_report_header(config):
    if _wants_us(config):
        return f"flashproof target: {config.getoption('flashproof_target')}"
    return None


@pytest.fixture(scope="session")
def flashproof_target(request):
    """The Target under test (``--flashproof-target``, default flashproof's kernel)."""
    from flashproof.properties.targets import load_target

    return load_target(request.config.getoption("flashproof_target"))


@pytest.fixture(scope="session")
def flashproof_profile(request, flashproof_target):
    """The suite profile: --hypothesis-profile when it is one of ours, else ci (gpu with CUDA)."""
    from flashproof.properties.profiles import default_profile, register_profiles

    register_profiles()
    chosen = _profile_option(request.config)
    if chosen in _OURS:
        return chosen.replace("flashproof-", "")
    return default_profile(flashproof_target.device())


@pytest.fixture(scope="session")
def flashproof_context(flashproof_target, flashproof_profile):
    from flashproof.properties.suite import _context

    return _context(flashproof_target, flashproof_profile)
