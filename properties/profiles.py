"""Hypothesis profiles of the property suite: ``ci``, ``gpu``, ``deep``.

- ``ci``: CPU interpreter, small shapes, derandomized, few generated examples on top of each
  property's deterministic corner cases; the whole suite in a few minutes on 2 cores.
- ``gpu``: real shapes on a CUDA device.
- ``deep``: many examples (nightly, audits).

Each is registered under its plain name (unless the project already registered one of that
name) and as ``flashproof-<name>``. The shape limits of each live in strategies.LIMITS.
"""
from __future__ import annotations

__all__ = ["PROFILES", "SHRINK_SECONDS", "EXAMPLE_TIMEOUT", "DERANDOMIZED_SEED", "parse_seconds", "register_profiles",
           "settings_for", "default_profile", "limits_for"]

#: hypothesis.settings keyword arguments of each profile.
PROFILES = {
    "ci": dict(max_examples=3, derandomize=True, deadline=None, database=None, print_blob=False,
               report_multiple_bugs=False),
    # gpu: 12 drawn examples per property at real shapes, within strategies.LIMITS["gpu"].property_seconds
    "gpu": dict(max_examples=12, derandomize=False, deadline=None, print_blob=True, report_multiple_bugs=False),
    "deep": dict(max_examples=200, derandomize=False, deadline=None, print_blob=True, report_multiple_bugs=False),
}
#: Seconds Hypothesis may spend shrinking one failure (its own default is 300 s).
SHRINK_SECONDS = {"ci": 30, "gpu": 30, "deep": 300}  # gpu: a failure must not take the ~4 min run's time
#: Seconds one example (one property check: its target calls, reference and bound) may take before
#: it is reported as a TIMEOUT (docs/robustness.md). ci: slowest example measured 4.4 s (split_counts_agree,
#: the default kernel under the interpreter, idle 2 cores; 18.4 s with the other core busy), so 60 s is 3x
#: the contended figure. gpu/deep: not measured here (no GPU); they leave room for Triton compiling new configs.
EXAMPLE_TIMEOUT = {"ci": 60, "gpu": 120, "deep": 300}
#: Random seed of a derandomized profile (ci). Hypothesis derives it from the source of the test
#: function, which is suite.run_property's inner closure: every edit of it changed the examples ci
#: draws (one edit let a mutant survive). Pinned to that digest under the last 52/52 mutation score.
#: The mutation score no longer rests on it: 52/52 with every peer passing at seeds 12345, 777 and 2026
#: too (session 3; gradients' alignment corner and the per-batch math peer, docs/findings.md F4).
DERANDOMIZED_SEED = int("f2e26f543ca292d62f54f58af6551d139aec19acc81fa0ed9b67aaaad3bd9a4bc1ef022b8a4975930aaf"
                        "699536ce5708", 16)

_registered = False


def register_profiles() -> None:
    """Register the profiles with Hypothesis (idempotent)."""
    global _registered
    if _registered:
        return
    from hypothesis import HealthCheck, settings

    for name, kw in PROFILES.items():
        kw = dict(kw, suppress_health_check=list(HealthCheck))
        settings.register_profile(f"flashproof-{name}", **kw)
        try:
            settings.get_profile(name)
        except Exception:  # not registered by anyone else: take the plain name too
            settings.register_profile(name, **kw)
    _registered = True


def _base(profile: str) -> str:
    name = profile[len("flashproof-"):] if profile.startswith("flashproof-") else profile
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    return name


def settings_for(profile: str):
    """The hypothesis.settings object of ``profile``."""
    from hypothesis import settings

    register_profiles()
    return settings.get_profile(f"flashproof-{_base(profile)}")


def limits_for(profile: str):
    from .strategies import LIMITS

    return LIMITS[_base(profile)]


def default_profile(device: str = "cpu") -> str:
    return "gpu" if str(device).startswith("cuda") else "ci"


def parse_seconds(text, *, option: str) -> float:
    """A per-example time limit given as text: seconds >= 0 (0: no limit); ValueError naming
    ``option`` otherwise. One parser for ``flashproof check`` and the pytest plugin."""
    import math

    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"{option}: not a number of seconds: {text!r}") from None
    if math.isnan(x) or x < 0:
        raise ValueError(f"{option} must be >= 0 seconds (0: no limit), got {text!r}")
    return x
