"""Every GPU model's data file says, field by field, what was measured on real hardware (and in which capture),
what is documented only, what is an estimate and what is not modelled."""
from __future__ import annotations

import re

import pytest
from conftest import shared_dir

from gpusim import models

KINDS = ("measured", "documented", "estimated", "not_modelled")


def _covered(model, names):
    """Top-level fields named whole, or through every one of their sub-fields ("power.usage_mw")."""
    covered = set()
    for field in {n.split(".", 1)[0] for n in names}:
        subs = {n.split(".", 1)[1] for n in names if n.startswith(field + ".")}
        if field in names or (isinstance(model.get(field), dict) and subs == set(model[field])):
            covered.add(field)
    return covered


@pytest.mark.parametrize("key", models.keys())
def test_every_field_is_classified_exactly_once(key):
    model = models.get(key)
    fields = model["fields"]
    names = [n for kind in KINDS for n in fields[kind]]
    assert len(names) == len(set(names)), "a field is classified twice"
    for name in names:
        top, _unused, sub = name.partition(".")
        assert top in model and (not sub or sub in model[top]), "%s names no field of the model" % name
    assert _covered(model, set(names)) == set(model) - {"key", "source", "fields"}


@pytest.mark.parametrize("key", models.keys())
def test_measured_fields_name_an_existing_capture(key):
    fields = models.get(key)["fields"]
    if not fields["measured"]:
        assert fields["capture"] is None  # documented only: nothing claims a measurement
        return
    match = re.match(r"(fixtures/real/[\w.-]+) of the shared directory \(driver [\d.]+", fields["capture"])
    assert match, fields["capture"]
    assert (shared_dir() / match.group(1) / "nvml-snapshot.json").is_file()


def test_the_captured_models_are_the_h100_and_the_h200():
    assert [k for k in models.keys() if models.get(k)["fields"]["measured"]] == ["h100-80gb-hbm3", "h200-141gb"]
    for key in ("h100-80gb-hbm3", "h200-141gb"):
        measured = set(models.get(key)["fields"]["measured"])
        assert {"pci_subsystem_id", "memory_total_bytes", "memory_reserved_bytes", "vbios_version",
                "mig.gpu_instance_profiles"} <= measured
