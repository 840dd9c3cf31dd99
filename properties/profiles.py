"""The suite's profiles: ``ci``, ``gpu``, ``deep``, each one :class:`Profile` object.

- ``ci``: CPU interpreter, small shapes, derandomized, few generated examples on top of each
  property's deterministic corner cases; the whole suite in a few minutes on 2 cores.
- ``gpu``: real shapes on a CUDA device.
- ``deep``: many examples (nightly, audits).

A profile holds its Hypothesis settings, how long shrinking one failure may take, the
per-example time limit and the shape :class:`Limits`. Each is registered with Hypothesis under
its plain name (unless the project already registered one of that name) and as
``flashproof-<name>``; :func:`profile_name` is the one place that reads either spelling.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

from .strategies import HEAD_DIMS

__all__ = ["Profile", "Limits", "PROFILES", "DERANDOMIZED_SEED", "profile_name", "get_profile", "parse_seconds",
           "parse_max_len", "register_profiles", "settings_for", "default_profile"]


@dataclass(frozen=True)
class Limits:
    """Shape limits of a profile (the interpreter is slow: ci keeps shapes small)."""

    max_len: int = 40
    max_batch: int = 2
    max_heads: int = 8
    head_dims: tuple = HEAD_DIMS
    max_tiles_per_prop: int = 3
    #: judge at most this many (b, h, i, j) row-key pairs per problem, on a sample of query rows
    #: (the target still runs the whole problem); None: every row
    judge_pairs: int | None = None
    #: seconds after which a property draws no new example (its corners and at least one drawn
    #: example always run); None: max_examples decides alone
    property_seconds: float | None = None
    #: at most this many distinct tile configs of the target per run (a fixed spread of them:
    #: each config is a compile on a GPU); None: all
    tile_configs: int | None = None
    #: the length budget (length_budget.py): longer max_len levels a run may take for a fast target,
    #: ascending, each above max_len; (): max_len is fixed
    length_levels: tuple = ()
    #: the length budget's limit on the predicted seconds of one call of the target at a level
    call_seconds: float | None = None

    def __post_init__(self):
        for name in ("max_len", "max_batch", "max_heads", "max_tiles_per_prop"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {x!r}")
        for name in ("judge_pairs", "tile_configs"):
            x = getattr(self, name)
            if x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 1):
                raise ValueError(f"Limits.{name} must be None or a positive int, got {x!r}")
        for name in ("property_seconds", "call_seconds"):
            x = getattr(self, name)
            if x is not None and (isinstance(x, bool) or not isinstance(x, numbers.Real) or not x > 0):
                raise ValueError(f"Limits.{name} must be None or > 0, got {x!r}")
        lv = self.length_levels
        if not isinstance(lv, tuple) or any(isinstance(x, bool) or not isinstance(x, int) for x in lv) \
                or list(lv) != sorted(set(lv)) or (lv and lv[0] <= self.max_len):
            raise ValueError(f"Limits.length_levels must be a tuple of increasing ints above max_len={self.max_len}, "
                             f"got {lv!r}")
        if lv and self.call_seconds is None:
            raise ValueError("Limits.length_levels needs call_seconds (the length budget's limit per call)")

    def replace(self, **kw) -> "Limits":
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class Profile:
    """One profile: ``settings`` (hypothesis.settings keyword arguments), ``shrink_seconds`` (how
    long Hypothesis may shrink one failure), ``example_timeout`` (seconds one example may take
    before it is a TIMEOUT, docs/robustness.md) and the shape ``limits``."""

    name: str
    settings: dict = field(default_factory=dict)
    shrink_seconds: float = 300
    example_timeout: float = 60
    limits: Limits = Limits()

    def replace(self, **kw) -> "Profile":
        return dataclasses.replace(self, **kw)


PROFILES = {
    "ci": Profile(
        "ci",
        settings=dict(max_examples=3, derandomize=True, deadline=None, database=None, print_blob=False,
                      report_multiple_bugs=False),
        shrink_seconds=30,
        # slowest example measured 4.4 s (split_counts_agree, the default kernel under the interpreter,
        # idle 2 cores; 18.4 s with the other core busy), so 60 s is 3x the contended figure
        example_timeout=60,
        # length budget: up to 512 keys for a target whose calls stay within 0.3 s there (predicted),
        # about twice flashproof's kernel's call under the interpreter at the base 40 (0.14 s at
        # 1 x 4 x 40 x 40 x 64, measured); that kernel stays at 40, the zoo's (~1 ms) goes to 512
        # judge_pairs: every row of a base-length problem is judged (B*H*Lq*Lk <= 8 * 40 * 41 < 2^14),
        # longer ones on a row sample, so the judge's cost per example (the running bound, O(pairs * E))
        # stays near that of the base lengths
        limits=Limits(max_len=40, max_batch=2, max_heads=8, head_dims=(8, 16, 24, 40, 64, 72, 80, 96),
                      length_levels=(128, 256, 512), call_seconds=0.3, judge_pairs=1 << 14),
    ),
    # gpu: 12 drawn examples per property at real lengths and grids; the judge evaluates <= 2^18 row-key
    # pairs of each problem (row sample) and each property stops drawing after 5 s, so the run fits
    # ~4 min (benchmarks/suite_timing.py); a failure must not take that run's time shrinking. Its
    # example time limit is not measured here (no GPU): it leaves room for Triton compiling new configs.
    "gpu": Profile(
        "gpu",
        settings=dict(max_examples=12, derandomize=False, deadline=None, print_blob=True, report_multiple_bugs=False),
        shrink_seconds=30,
        example_timeout=120,
        limits=Limits(max_len=1024, max_batch=4, max_heads=8, head_dims=HEAD_DIMS + (128, 192, 256),
                      max_tiles_per_prop=4, judge_pairs=1 << 18, property_seconds=5.0, tile_configs=6),
    ),
    "deep": Profile(
        "deep",
        settings=dict(max_examples=200, derandomize=False, deadline=None, print_blob=True, report_multiple_bugs=False),
        shrink_seconds=300,
        example_timeout=300,
        limits=Limits(max_len=96, max_batch=3, max_heads=12, head_dims=HEAD_DIMS + (128,),
                      length_levels=(256, 512), call_seconds=1.0),
    ),
}
#: Random seed of a derandomized profile (ci). Hypothesis derives it from the source of the test
#: function, which is suite.run_property's inner closure: every edit of it changed the examples ci
#: draws (one edit let a mutant survive). Pinned to that digest under the last 52/52 mutation score.
#: The mutation score no longer rests on it: 52/52 with every peer passing at seeds 12345, 777 and 2026
#: too (session 3; gradients' alignment corner and the per-batch math peer, docs/findings.md F4).
#: (Those were at max_len 40; the length budget now draws the zoo at 512, 55/55 at this seed.)
DERANDOMIZED_SEED = int("f2e26f543ca292d62f54f58af6551d139aec19acc81fa0ed9b67aaaad3bd9a4bc1ef022b8a4975930aaf"
                        "699536ce5708", 16)
_PREFIX = "flashproof-"
_registered = False


def profile_name(profile) -> str:
    """The plain name of ``profile``: "ci", "flashproof-ci" (as Hypothesis knows it) or a Profile.
    ValueError for anything else."""
    if isinstance(profile, Profile):
        return profile.name
    name = profile[len(_PREFIX):] if isinstance(profile, str) and profile.startswith(_PREFIX) else profile
    if not isinstance(name, str) or name not in PROFILES:
        raise ValueError(f"profile must be one of {tuple(PROFILES)}, got {profile!r}")
    return name


def get_profile(profile) -> Profile:
    """The :class:`Profile` named ``profile`` (any spelling :func:`profile_name` reads)."""
    return PROFILES[profile_name(profile)]


def register_profiles() -> None:
    """Register the profiles' settings with Hypothesis (idempotent)."""
    global _registered
    if _registered:
        return
    from hypothesis import HealthCheck, settings

    for name, prof in PROFILES.items():
        kw = dict(prof.settings, suppress_health_check=list(HealthCheck))
        settings.register_profile(f"{_PREFIX}{name}", **kw)
        try:
            settings.get_profile(name)
        except Exception:  # not registered by anyone else: take the plain name too
            settings.register_profile(name, **kw)
    _registered = True


def settings_for(profile):
    """The hypothesis.settings object of ``profile``."""
    from hypothesis import settings

    register_profiles()
    return settings.get_profile(f"{_PREFIX}{profile_name(profile)}")


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


def parse_max_len(text, *, option: str) -> int:
    """A pinned longest sequence length given as text: a positive number of keys; ValueError naming
    ``option`` otherwise. One parser for ``flashproof check`` and the pytest plugin."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{option} must be a positive number of keys, got {text!r}")
    return n
