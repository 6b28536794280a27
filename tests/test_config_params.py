"""A run carries its method's fully resolved parameters: the declared defaults under the given
values, so the config hash (and run.json) change when a default changes. The config layer knows no
method: ``splitmix.methods`` resolves and checks the parameters and hands plain data down."""

from __future__ import annotations

import pytest

from splitmix.config import RunConfig, run_config_from_dict, validate_run
from splitmix.errors import ConfigError
from splitmix.methods import algorithm_class, check_params, resolve_params


def _cfg(**params) -> RunConfig:
    return resolve_params(
        RunConfig("digits", "feature", "splitmix", "splitmix", method_params=params)
    )


def test_defaults_fill_what_the_config_does_not_set():
    declared = algorithm_class("splitmix").params
    cfg = _cfg(atom=0.25)
    assert cfg.method_params == {**declared, "atom": 0.25}
    assert set(cfg.to_dict()["method_params"]) == set(declared)  # run.json records them all
    # writing the defaults out by hand is the same config
    assert _cfg(**{**declared, "atom": 0.25}).config_hash() == cfg.config_hash()


def test_a_plain_run_config_is_only_what_it_was_given():
    cfg = RunConfig("digits", "feature", "splitmix", "splitmix", method_params={"atom": 0.25})
    assert cfg.method_params == {"atom": 0.25}  # no registry lookup below the methods layer


def test_a_changed_default_changes_the_hash_of_a_config_that_does_not_set_it(monkeypatch):
    cls = algorithm_class("splitmix")
    unset, pinned = _cfg(), _cfg(atom=0.125)
    before = (unset.config_hash(), pinned.config_hash())
    assert before[0] == before[1]  # 0.125 is the default: setting it changes nothing
    monkeypatch.setattr(cls, "params", {**cls.params, "atom": 0.25})
    changed = _cfg()
    assert changed.method_params["atom"] == 0.25
    assert changed.config_hash() != before[0]
    assert _cfg(atom=0.125).config_hash() == before[1]  # a set value does not follow the default


def test_resolving_again_keeps_values_and_hash():
    # a job reads the workflow's per-run file (or run.json) back: it must get the same hash
    cfg = _cfg(atom=0.25, fused=True)
    again = resolve_params(run_config_from_dict(cfg.to_dict()))
    assert again.method_params == cfg.method_params
    assert again.config_hash() == cfg.config_hash()


def test_an_unknown_algorithm_is_left_for_the_check_to_name():
    cfg = resolve_params(RunConfig("digits", "feature", "m", "no-such-method", method_params={}))
    assert cfg.method_params == {}
    validate_run(cfg, check_device=False)  # the config layer has nothing against it
    with pytest.raises(ConfigError, match="unknown algorithm 'no-such-method'"):
        check_params(cfg)
