"""pytest plugin (entry point ``pytest11``): ``--flashproof-target`` and the suite's profiles.

Kept import-light: it is loaded by every pytest run in an environment that installs flashproof,
so it imports nothing heavy at module level (no torch, triton or hypothesis). It

- adds ``--flashproof-target=MODULE:ATTR`` (default: flashproof's own kernel) and
  ``--flashproof-adapter=NAME`` (flashproof.properties.adapters; default: by signature),
- registers the Hypothesis profiles ``ci``, ``gpu``, ``deep`` before Hypothesis loads the one
  named by ``--hypothesis-profile`` (the suite defaults to ``ci`` on CPU, ``gpu`` with CUDA),
- provides the session fixtures ``flashproof_target`` and ``flashproof_profile`` that the
  property tests in flashproof.properties use (``pytest --pyargs flashproof.properties``),
- and the run's robustness options (docs/robustness.md): ``--flashproof-example-timeout=S``
  (a per-example time limit; past it the test fails as a TIMEOUT), ``--flashproof-state-dir``
  (default ``.flashproof`` in the directory pytest was started from: reproducer files, written
  as soon as a failure is known) and ``--flashproof-db`` (the Hypothesis database, default
  ``<state dir>/hypothesis``). An interrupted session resumes with pytest's own ``--lf``; the
  database replays saved failures first.
"""
import pytest

__all__ = ["pytest_addoption", "pytest_configure", "pytest_report_header", "flashproof_target",
           "flashproof_profile", "flashproof_context"]

_OURS = ("ci", "gpu", "deep", "flashproof-ci", "flashproof-gpu", "flashproof-deep")


def pytest_addoption(parser):
    group = parser.getgroup("flashproof")
    group.addoption("--flashproof-target", default=None, metavar="MODULE:ATTR",
                    help="attention kernel under test (default: flashproof's own Triton kernel)")
    group.addoption("--flashproof-adapter", default=None, metavar="NAME",
                    help="apply this adapter of flashproof.properties.adapters to the target (flash_attn, fla, blhd, "
                         "sdpa; default: detected from the target's signature)")
    group.addoption("--flashproof-example-timeout", default=None, metavar="S",
                    help="seconds one example may take before the property fails as a TIMEOUT (0: no limit; "
                         "default per profile: ci 60, gpu 120, deep 300)")
    group.addoption("--flashproof-state-dir", default=None, metavar="DIR",
                    help="folder for reproducer files and the Hypothesis database (default: .flashproof in the "
                         "directory pytest was started from)")
    group.addoption("--flashproof-db", default=None, metavar="DIR",
                    help="Hypothesis database folder of the property suite (default: STATE_DIR/hypothesis)")


def _example_timeout(config):
    """The --flashproof-example-timeout value as seconds (None: the profile's default)."""
    text = config.getoption("flashproof_example_timeout", None)
    if text is None:
        return None
    from .profiles import parse_seconds

    try:
        return parse_seconds(text, option="--flashproof-example-timeout")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _state_dir(config):
    import os

    from flashproof.properties.state import STATE_DIR

    d = config.getoption("flashproof_state_dir", None)
    return d if d is not None else os.path.join(str(config.invocation_params.dir), STATE_DIR)


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
        from flashproof.properties.registry import TargetTimeout
        from flashproof.properties.targets import TargetLoadError
        from flashproof.properties.timeouts import load_target_within, resolve_example_timeout

        limit = resolve_example_timeout(_example_timeout(config), _profile_option(config) or "ci")
        try:
            config._flashproof_nan_policy = load_target_within(_target_spec(config), limit).nan_policy
        except TargetTimeout as exc:  # a hang is the target's fault: a failed session, not a usage error
            pytest.exit(f"--flashproof-target: {exc}", returncode=pytest.ExitCode.TESTS_FAILED)
        except (TargetLoadError, TypeError, ValueError) as exc:
            raise pytest.UsageError(f"--flashproof-target: {exc}") from None
    else:
        _example_timeout(config)  # a bad value is a usage error even with the default target


def _wants_us(config) -> bool:
    return (config.getoption("flashproof_target", None) is not None
            or config.getoption("flashproof_adapter", None) is not None)


def _target_spec(config):
    """--flashproof-target with --flashproof-adapter applied ("module:attr@adapter")."""
    adapter = config.getoption("flashproof_adapter", None)
    if adapter is None:
        return config.getoption("flashproof_target", None)
    from flashproof.properties.adapters import with_adapter

    return with_adapter(config.getoption("flashproof_target", None), adapter)


def pytest_report_header(config):
    if _wants_us(config):
        policy = getattr(config, "_flashproof_nan_policy", None)
        return f"flashproof target: {_target_spec(config)}" + (f" (judged by nan_policy {policy!r})" if policy else "")
    return None


@pytest.fixture(scope="session")
def flashproof_target(request):
    """The Target under test (``--flashproof-target``, default flashproof's kernel)."""
    from flashproof.properties.loading import load_target

    return load_target(_target_spec(request.config))


@pytest.fixture(scope="session")
def flashproof_profile(request, flashproof_target):
    """The suite profile: --hypothesis-profile when it is one of ours, else ci (gpu with CUDA)."""
    from flashproof.properties.profiles import default_profile, profile_name, register_profiles

    register_profiles()
    chosen = _profile_option(request.config)
    if chosen in _OURS:
        return profile_name(chosen)
    return default_profile(flashproof_target.device())


@pytest.fixture(scope="session")
def flashproof_context(request, flashproof_target, flashproof_profile):
    """The suite's Context: the profile's limits, the per-example time limit, the Hypothesis
    database and the reproducer folder (created on first use)."""
    import os

    from flashproof.properties.context import make_context
    from flashproof.properties.state import prepare_state_dir
    from flashproof.properties.timeouts import resolve_example_timeout

    config = request.config
    state = prepare_state_dir(_state_dir(config))
    db = config.getoption("flashproof_db", None) or os.path.join(state, "hypothesis")
    return make_context(flashproof_target, flashproof_profile,
                    example_timeout=resolve_example_timeout(_example_timeout(config), flashproof_profile),
                    database=db, reproducer_dir=os.path.join(state, "reproducers"))
