"""The property suite as pytest tests: ``pytest --pyargs flashproof.properties``.

One test per property (``test_<property name>``), each running the property under the selected
profile against ``--flashproof-target`` (fixtures from flashproof.properties.plugin). A violation
fails with its minimal reproducer; an example past the time limit fails as a TIMEOUT; an
undeclared capability skips with the reason, and so do a property whose calls lie outside the
target's declared domain ("not applicable") and a property not run because the target hung
earlier in the session; a documented deviation of the target is an xfail that prints the
reproducer.
"""
import pytest

from flashproof.properties.outcomes import (ERROR, FAILED, NOT_APPLICABLE, NOT_DECLARED, NOT_RUN, PASSED, SKIPPED,
                                            TIMEOUT, XFAIL, XPASS)
from flashproof.properties.registry import PROPERTIES
from flashproof.properties.suite import load_properties, run_property

load_properties()


def _make(name):
    def test(flashproof_target, flashproof_profile, flashproof_context, flashproof_record):
        out = run_property(PROPERTIES[name], flashproof_target, profile=flashproof_profile, ctx=flashproof_context)
        flashproof_record(out)
        head = f"[{out.examples} examples, {out.seconds:.1f}s]"
        saved = f"\nreproducer file: {out.reproducer_file}" if out.reproducer_file else ""
        if out.status in (FAILED, TIMEOUT):
            pytest.fail(f"{out.message}\n\n{out.reproducer}{saved}", pytrace=False)
        if out.status == ERROR:
            pytest.fail(f"flashproof could not run {name!r}: {out.message}\n{out.reproducer}", pytrace=False)
        if out.status in (NOT_DECLARED, NOT_APPLICABLE, SKIPPED, NOT_RUN):
            pytest.skip(f"{out.status}: {out.message}")
        if out.status == XFAIL:
            pytest.xfail(f"{out.message}\n{out.reproducer}")
        if out.status == XPASS:
            print(f"{name}: {out.message} {head}")
        elif out.status != PASSED:
            pytest.fail(f"flashproof: unknown outcome {out.status!r} of {name!r}", pytrace=False)
    test.__name__ = f"test_{name}"
    test.__qualname__ = test.__name__
    test.__doc__ = PROPERTIES[name].asserts
    return test


for _name in PROPERTIES:
    globals()[f"test_{_name}"] = _make(_name)
del _name
