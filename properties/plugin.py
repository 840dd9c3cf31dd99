"""pytest plugin (entry point ``pytest11``): ``--flashproof-target`` and the suite's profiles.

Kept import-light: it is loaded by every pytest run in an environment that installs flashproof,
so it imports nothing heavy at module level (no torch, triton or hypothesis). It

- adds ``--flashproof-target=MODULE:ATTR`` (default: flashproof's own kernel) and
  ``--flashproof-adapter=NAME`` (flashproof.properties.adapters; default: by signature),
- registers the Hypothesis profiles ``ci``, ``gpu``, ``deep`` before Hypothesis loads the one
  named by ``--hypothesis-profile`` (the suite defaults to ``ci`` on CPU, ``gpu`` with CUDA),
- provides the session fixtures ``flashproof_target`` and ``flashproof_profile`` that the
  property tests in flashproof.properties use (``pytest --pyargs flashproof.properties``),
- the run's robustness options (docs/robustness.md): ``--flashproof-example-timeout=S``
  (a per-example time limit; past it the test fails as a TIMEOUT), ``--flashproof-state-dir``
  (default ``.flashproof`` in the directory pytest was started from: reproducer files, written
  as soon as a failure is known) and ``--flashproof-db`` (the Hypothesis database, default
  ``<state dir>/hypothesis``). An interrupted session resumes with pytest's own ``--lf``; the
  database replays saved failures first;
- ``--flashproof-max-len=N`` (pin the longest length; default: the length budget,
  length_budget.py), ``--flashproof-report=PATH`` (the run as JSON: header, devices, one record
  per property with its device memory) and ``--flashproof-memory`` (a per-property device memory
  table in the terminal summary);
- and pytest-xdist (``-n N``): with several CUDA devices visible each worker gets its own
  (CUDA_VISIBLE_DEVICES, assigned by the controller in worker order; with one, they share it),
  one worker decides the length budget for all (state.decide_once), each property runs in one
  worker (its Hypothesis database key and reproducer file are its own), and each worker's device
  is reported in the terminal summary and the JSON report.
"""
import pytest

__all__ = ["pytest_addoption", "pytest_configure", "pytest_configure_node", "pytest_report_header",
           "pytest_runtest_logreport", "pytest_testnodedown", "pytest_sessionfinish", "pytest_terminal_summary",
           "flashproof_target", "flashproof_profile", "flashproof_context", "flashproof_record"]

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
    group.addoption("--flashproof-max-len", default=None, metavar="N",
                    help="the longest Lq/Lk the suite draws (default: the profile's, raised at ci and deep for a fast "
                         "target by the length budget; pin it for the same examples every run)")
    group.addoption("--flashproof-report", default=None, metavar="PATH",
                    help="write the run as JSON: target, profile, max_len, each worker's device, and per property its "
                         "outcome, time and device memory (peak, retained)")
    group.addoption("--flashproof-memory", action="store_true", default=False,
                    help="print each property's device memory (peak and retained after it) in the summary")


def _parsed(config, dest: str, parser: str):
    """Option ``dest`` read by profiles' ``parser`` (the one ``flashproof check`` uses), None when not
    given; a bad value is a usage error."""
    text = config.getoption(dest, None)
    if text is None:
        return None
    from . import profiles

    try:
        return getattr(profiles, parser)(text, option="--" + dest.replace("_", "-"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _max_len(config):
    """--flashproof-max-len as an int (None: the length budget); a bad value is a usage error."""
    return _parsed(config, "flashproof_max_len", "parse_max_len")


def _report_path(config):
    path = config.getoption("flashproof_report", None)
    if path is None:
        return None
    from .state import writable_file_path

    if not writable_file_path(path):
        raise pytest.UsageError(f"--flashproof-report {path}: not a writable file path")
    return path


def _example_timeout(config):
    """The --flashproof-example-timeout value as seconds (None: the profile's default)."""
    return _parsed(config, "flashproof_example_timeout", "parse_seconds")


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
    # a pytest-xdist worker takes its CUDA device before anything initialises CUDA (loading the target may)
    global _CONFIG
    _take_worker_device(config)
    config._flashproof = {"records": [], "workers": {}, "run": None}
    _CONFIG = config
    _max_len(config)
    _report_path(config)
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
            t = load_target_within(_target_spec(config), limit)
            config._flashproof_nan_policy, config._flashproof_empty_rows = t.nan_policy, t.empty_rows
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


# ----------------------------------------------------------------------------- pytest-xdist
def _visible_cuda():
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES entries (an empty list: none,
    or one: nothing to spread)."""
    import os

    try:
        import torch

        n = torch.cuda.device_count()  # initialises the driver, creates no context
    except Exception:  # noqa: BLE001 - no torch or no driver: no GPU to spread
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in env.split(",") if x.strip()] if env else [str(i) for i in range(n)]
    return ids[:n]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """(pytest-xdist, controller) Worker gwK gets CUDA device K mod the visible count, when several are
    visible: ``flashproof_cuda`` = (CUDA_VISIBLE_DEVICES entry, its index among the visible)."""
    config = node.config
    if not hasattr(config, "_flashproof_cuda"):
        config._flashproof_cuda = _visible_cuda()
    ids = config._flashproof_cuda
    if len(ids) > 1:
        k = int("".join(ch for ch in node.gateway.id if ch.isdigit()) or 0)
        node.workerinput["flashproof_cuda"] = (ids[k % len(ids)], k % len(ids))


def _take_worker_device(config):
    import os
    import sys

    pick = getattr(config, "workerinput", {}).get("flashproof_cuda")
    if not pick:
        return
    entry, index = pick
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # too late for the environment: select it
        torch.cuda.set_device(index)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = entry


def _worker_id(config) -> str:
    return getattr(config, "workerinput", {}).get("workerid", "")


# ----------------------------------------------------------------------------- the run's records
@pytest.fixture
def flashproof_record(request):
    """record(outcome): the property's outcome for the terminal summary and --flashproof-report; it
    travels with the test's report (user_properties), so it reaches the pytest-xdist controller."""
    def record(out):
        first = (out.message or "").strip().splitlines()
        request.node.user_properties.append(("flashproof", {
            "property": out.name, "status": out.status, "examples": out.examples, "seconds": round(out.seconds, 3),
            "slowest_example": round(out.slowest, 3), "peak_bytes": out.peak_bytes,
            "retained_bytes": out.retained_bytes, "worker": _worker_id(request.config) or "main",
            "message": first[0] if first else "", "reproducer_file": out.reproducer_file}))
    return record


#: the session's config (pytest_runtest_logreport is given none), set by pytest_configure
_CONFIG = None


def pytest_runtest_logreport(report):
    if report.when != "call" or _CONFIG is None:
        return
    for name, value in getattr(report, "user_properties", ()):
        if name == "flashproof":
            _CONFIG._flashproof["records"].append(value)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """(pytest-xdist, controller) Keep what each worker said about its run (device, length)."""
    run = getattr(node, "workeroutput", {}).get("flashproof_run")
    if run:
        node.config._flashproof["workers"][run.get("worker") or node.gateway.id] = run


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    fp = getattr(config, "_flashproof", None)
    if fp is None:
        return
    if hasattr(config, "workeroutput"):  # a worker: hand its run header to the controller
        if fp["run"] is not None:
            config.workeroutput["flashproof_run"] = fp["run"]
        return
    if fp["run"] is not None:
        fp["workers"].setdefault(fp["run"].get("worker") or "main", fp["run"])
    path = _report_path(config)
    if path and (fp["records"] or fp["workers"]):
        import json

        from flashproof.properties.state import fsync_write

        runs = fp["workers"]
        doc = {"target": _target_spec(config), "profiles": sorted({r.get("profile", "") for r in runs.values()}),
               "max_len": sorted({r.get("max_len") for r in runs.values() if r.get("max_len")}),
               "workers": runs, "exit_status": int(exitstatus),
               "properties": sorted(fp["records"], key=lambda r: r["property"])}
        fsync_write(path, json.dumps(doc, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    fp = getattr(config, "_flashproof", None)
    if fp is None or hasattr(config, "workeroutput"):
        return
    runs = dict(fp["workers"])
    if fp["run"] is not None:
        runs.setdefault(fp["run"].get("worker") or "main", fp["run"])
    if not runs and not fp["records"]:
        return
    from flashproof.properties.memory import fmt_bytes

    tr = terminalreporter
    tr.section("flashproof")
    for wid, r in sorted(runs.items()):
        who = f"worker {wid}: " if wid != "main" else ""
        tr.write_line(f"{who}target {r.get('target')}, profile {r.get('profile')}, device {r.get('device')}; "
                      f"{r.get('length', {}).get('note', '')}")
    recs = [r for r in fp["records"] if r.get("peak_bytes") is not None]
    if recs:
        top = max(recs, key=lambda r: r["peak_bytes"])
        kept = max(recs, key=lambda r: r["retained_bytes"])
        tr.write_line(f"device memory: peak {fmt_bytes(top['peak_bytes'])} ({top['property']}); most retained after a "
                      f"property {fmt_bytes(kept['retained_bytes'])} ({kept['property']}); retained over the run "
                      f"{fmt_bytes(sum(r['retained_bytes'] for r in recs))}")
    if config.getoption("flashproof_memory", False):
        if not recs:
            tr.write_line("device memory: not measured (no CUDA device: nothing to count)")
        else:
            w = max(len(r["property"]) for r in recs)
            tr.write_line(f"{'property':<{w}}  {'peak':>10}  {'retained':>10}  worker")
            for r in sorted(recs, key=lambda r: -r["peak_bytes"]):
                tr.write_line(f"{r['property']:<{w}}  {fmt_bytes(r['peak_bytes']):>10}  "
                              f"{fmt_bytes(r['retained_bytes']):>10}  {r['worker']}")


def pytest_report_header(config):
    if _wants_us(config):
        policy = getattr(config, "_flashproof_nan_policy", None)
        rows = getattr(config, "_flashproof_empty_rows", None)
        return f"flashproof target: {_target_spec(config)}" + (
            f" (judged by nan_policy {policy!r}, empty_rows {rows!r})" if policy else "")
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
    ctx = make_context(flashproof_target, flashproof_profile,
                       example_timeout=resolve_example_timeout(_example_timeout(config), flashproof_profile),
                       database=db, reproducer_dir=os.path.join(state, "reproducers"))
    choice = _length(config, ctx, state)
    config._flashproof["run"] = {
        "worker": _worker_id(config) or "main", "target": flashproof_target.name, "profile": flashproof_profile,
        "device": ctx.memory.describe() if ctx.memory is not None else str(ctx.device),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "max_len": ctx.limits.max_len,
        "length": choice.as_dict()}
    return ctx


def _length(config, ctx, state):
    """The length budget's choice for this session: pinned by --flashproof-max-len, else measured
    here, or (pytest-xdist) by the first worker and read by the others (state.decide_once)."""
    import os

    from flashproof.properties.length_budget import LengthChoice, apply_length_budget, choose_max_len
    from flashproof.properties.state import decide_once

    pinned = _max_len(config)
    run = getattr(config, "workerinput", {}).get("testrunuid")
    if pinned is not None or run is None:
        return apply_length_budget(ctx, max_len=pinned)
    key = {"target": ctx.target.spec or ctx.target.name, "profile": ctx.profile}
    decision, _ = decide_once(os.path.join(state, "length-budget.json"), run=run, key=key,
                              decide=lambda: choose_max_len(ctx).as_dict())
    return apply_length_budget(ctx, LengthChoice.from_dict(decision))
