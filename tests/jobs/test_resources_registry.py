"""Resources (parsing, fitting, the machine) and the job type registry."""

from __future__ import annotations

import pytest

from onebox.errors import InsufficientResourcesError, InvalidInputError, UnknownJobTypeError
from onebox.jobs.builtin import sleep_job
from onebox.jobs.registry import HANDLERS, handler_path, import_handler, register_handler, resolve_handler
from onebox.jobs.resources import Resources, check_fits_machine, machine_capacity


def test_parse_defaults_and_validation() -> None:
    assert Resources.parse(None) == Resources(1.0, 0, 0)
    assert Resources.parse({"cpus": 0.5, "gpus": 1, "memory_mb": 2048}) == Resources(0.5, 1, 2048)
    assert Resources.parse(Resources(2, 0, 0)) == Resources(2.0, 0, 0)
    with pytest.raises(InvalidInputError) as err:
        Resources.parse({"cpus": 0, "gpus": -1, "memory_mb": "4G", "tpus": 1})
    assert [p.field for p in err.value.problems] == [
        "resources.tpus",
        "resources.cpus",
        "resources.gpus",
        "resources.memory_mb",
    ]
    with pytest.raises(InvalidInputError, match="invalid resources"):
        Resources.parse([1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        Resources.parse({"cpus": True})


def test_arithmetic_and_fit() -> None:
    cap = Resources(2, 1, 1000)
    used = Resources(0.1, 0, 0) + Resources(0.2, 0, 0)
    assert Resources(0.3, 0, 0).fits(Resources(0.3, 0, 0) - Resources(0, 0, 0))
    assert (cap - used).cpus == pytest.approx(1.7)
    assert Resources(2, 1, 1000).fits(cap) and not Resources(2, 2, 0).fits(cap)
    assert not Resources(1, 0, 1001).fits(cap)
    assert str(Resources(1.5, 2, 512)) == "1.5 CPU, 2 GPU, 512 MiB"
    with pytest.raises(InsufficientResourcesError, match="could never start") as err:
        check_fits_machine(Resources(4, 0, 2000), cap)
    assert [p.field for p in err.value.problems] == ["resources.cpus", "resources.memory_mb"]


def test_machine_capacity_is_real() -> None:
    cap = machine_capacity()
    assert cap.cpus >= 1 and cap.memory_mb > 100 and cap.gpus >= 0
    assert machine_capacity(gpus=False).gpus == 0


def test_registry_resolves_lazily_and_reports_unknown_types() -> None:
    assert HANDLERS["train"] == "onebox.services.training:run_train_job"
    assert HANDLERS["eval"] == "onebox.services.evaluation:run_eval_job"
    assert resolve_handler("sleep") is sleep_job
    with pytest.raises(UnknownJobTypeError, match="unknown job type 'nope'") as err:
        handler_path("nope")
    assert "sleep" in err.value.problems[0].fix
    with pytest.raises(UnknownJobTypeError, match="has no function 'missing'"):
        import_handler("onebox.jobs.builtin:missing", "x")
    with pytest.raises(UnknownJobTypeError, match="is not installed"):
        import_handler("onebox.no_such_package.mod:run", "x")


def test_register_handler_validates() -> None:
    register_handler("custom-1", "onebox.jobs.builtin:sleep_job")
    try:
        assert resolve_handler("custom-1") is sleep_job
    finally:
        del HANDLERS["custom-1"]
    with pytest.raises(InvalidInputError) as err:
        register_handler("Bad Type", "not a path")
    assert [p.field for p in err.value.problems] == ["type", "handler"]
