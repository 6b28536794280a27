"""Experiment config loading: layering of defaults and overrides, names, --set parsing."""

from __future__ import annotations

import pytest

from splitmix.config import RunConfig
from splitmix.errors import ConfigError
from splitmix.experiment import apply_sets, iter_runs, load_experiment, parse_set, resolve_run
from splitmix.methods import algorithm_class

EXPERIMENT = """
data_root: /data/here
training:
  rounds: 50
  lr: 0.1
  batch_size: 32
  adv: {lam: 0.0, steps: 3}
datasets:
  digits:
    training: {rounds: 30, test_batch_size: 64}
    splits:
      feature: {kind: feature, clients_per_domain: 4, percent: 0.3}
      cls: {kind: class, classes_per_client: 2, val_ratio: 0.2}
  cifar10:
    splits:
      iid: {kind: iid, clients_per_domain: 20}
methods:
  fedavg:
    algorithm: fedavg
    params: {width: 0.5}
  splitmix:
    algorithm: splitmix
    params: {atom: 0.125}
    training: {lr: 0.01, adv: {lam: 0.5}, split_config: {val_ratio: 0.4}}
seeds: [1, 2]
runs:
  - {dataset: digits, split: feature, methods: [splitmix], training: {rounds: 7}}
  - {dataset: digits, split: cls, training: {eval_every: 5}}
  - {dataset: cifar10, split: iid, methods: [fedavg]}
"""


@pytest.fixture
def exp(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT)
    return load_experiment(path)


def test_layers_merge_in_order(exp):
    cfg = resolve_run(exp, "digits", "feature", "splitmix", 2)
    assert isinstance(cfg, RunConfig)
    assert (cfg.dataset, cfg.split, cfg.method, cfg.algorithm, cfg.seed) == (
        "digits", "feature", "splitmix", "splitmix", 2,
    )  # fmt: skip
    assert cfg.data_root == "/data/here"
    assert cfg.rounds == 7  # run entry beats dataset (30) beats training (50)
    assert cfg.lr == 0.01  # method beats training
    assert cfg.test_batch_size == 64  # dataset layer
    assert cfg.batch_size == 32  # training layer
    assert cfg.momentum == 0.9  # built-in default
    # nested sections merge key by key: steps from training, lam from the method
    assert (cfg.adv.lam, cfg.adv.steps) == (0.5, 3)
    # the split entry, with the method's split_config override on top
    sc = cfg.split_config
    assert (sc.kind, sc.clients_per_domain, sc.percent, sc.val_ratio) == ("feature", 4, 0.3, 0.4)
    # the given value over the method's declared defaults (every parameter the run uses)
    assert cfg.method_params == {**algorithm_class("splitmix").params, "atom": 0.125}
    assert cfg.method_params["rescale_init"] is True


def test_run_entry_applies_only_to_its_methods(exp):
    # the digits/feature run entry lists only splitmix: fedavg keeps the dataset's rounds
    assert resolve_run(exp, "digits", "feature", "fedavg", 1).rounds == 30
    # an entry without a methods list applies to every method
    assert resolve_run(exp, "digits", "cls", "fedavg", 1).eval_every == 5
    assert resolve_run(exp, "cifar10", "iid", "fedavg", 1).rounds == 50
    cls = resolve_run(exp, "digits", "cls", "fedavg", 1).split_config
    assert (cls.kind, cls.classes_per_client, cls.val_ratio) == ("class", 2, 0.2)


def test_config_hash_changes_with_seed_and_values(exp):
    a = resolve_run(exp, "digits", "feature", "fedavg", 1)
    assert a.config_hash() == resolve_run(exp, "digits", "feature", "fedavg", 1).config_hash()
    assert a.config_hash() != resolve_run(exp, "digits", "feature", "fedavg", 2).config_hash()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("mnist", "feature", "fedavg"), "unknown dataset 'mnist'; available: cifar10, digits"),
        (("digits", "iid", "fedavg"), "unknown split 'iid'; available: cls, feature"),
        (("digits", "cls", "heterofl"), "unknown method 'heterofl'; available: fedavg, splitmix"),
    ],
)
def test_unknown_names_list_the_available_ones(exp, args, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_run(exp, *args, 1)
    assert "\n" not in str(err.value)


def test_unknown_training_key_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(EXPERIMENT.replace("batch_size: 32", "batchsize: 32"))
    exp = load_experiment(path)
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        resolve_run(exp, "digits", "cls", "fedavg", 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("trainin: {}", "unknown key\\(s\\) 'trainin'"),
        ("training: {seed: 3}", "may not set 'seed'"),
        ("methods: {m: {params: {}}}", "methods.m needs 'algorithm"),
        ("seeds: one", "seeds must be a non-empty list of integers"),
        ("datasets: {d: {split: {}}}", "unknown key\\(s\\) 'split' in datasets.d"),
        ("training: [1", "not valid YAML"),
    ],
)
def test_structure_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")


def test_iter_runs(exp):
    assert iter_runs(exp) == [
        ("digits", "feature", "splitmix", 1),
        ("digits", "feature", "splitmix", 2),
        ("digits", "cls", "fedavg", 1),
        ("digits", "cls", "fedavg", 2),
        ("digits", "cls", "splitmix", 1),
        ("digits", "cls", "splitmix", 2),
        ("cifar10", "iid", "fedavg", 1),
        ("cifar10", "iid", "fedavg", 2),
    ]


def test_run_entry_seeds_replace_the_top_level_seeds(tmp_path):
    text = EXPERIMENT.replace(
        "  - {dataset: cifar10, split: iid, methods: [fedavg]}",
        "  - {dataset: cifar10, split: iid, methods: [fedavg], seeds: [3]}\n"
        "  - {dataset: cifar10, split: iid, methods: [splitmix], seeds: [4],"
        " training: {rounds: 9}}",
    )
    (tmp_path / "exp.yaml").write_text(text)
    exp = load_experiment(tmp_path / "exp.yaml")
    cifar = [key for key in iter_runs(exp) if key[0] == "cifar10"]
    assert cifar == [("cifar10", "iid", "fedavg", 3), ("cifar10", "iid", "splitmix", 4)]
    # an entry's training applies to the runs it builds, i.e. its own seeds only
    assert resolve_run(exp, "cifar10", "iid", "splitmix", 4).rounds == 9
    assert resolve_run(exp, "cifar10", "iid", "splitmix", 1).rounds == 50


@pytest.mark.parametrize("seeds", ["[]", "[one]", "3"])
def test_bad_run_entry_seeds_are_one_line(tmp_path, seeds):
    text = EXPERIMENT.replace("methods: [fedavg]}", f"methods: [fedavg], seeds: {seeds}}}")
    (tmp_path / "exp.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"runs\[2\]\.seeds must be a non-empty list of integers"):
        load_experiment(tmp_path / "exp.yaml")


def test_parse_set_values():
    assert parse_set("rounds=5") == (["rounds"], 5)
    assert parse_set("lr=1e-2") == (["lr"], 0.01)
    assert parse_set("masked_loss=true") == (["masked_loss"], True)
    assert parse_set("arch=null") == (["arch"], None)
    assert parse_set("milestones=[3, 4]") == (["milestones"], [3, 4])
    assert parse_set("adv.lam=0.5") == (["adv", "lam"], 0.5)
    assert parse_set("budgets=8-4-2-1") == (["budgets"], "8-4-2-1")
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("rounds")


def test_apply_sets(exp):
    cfg = resolve_run(exp, "digits", "feature", "splitmix", 1)
    new = apply_sets(
        cfg,
        [
            "rounds=3",
            "adv.lam=0.25",
            "split_config.val_ratio=0.3",
            "milestones=[1,2]",
            "split_config.domains=[mnist, usps]",
            "method_params.atom=0.25",
        ],
    )
    assert new.rounds == 3 and new.milestones == (1, 2)
    assert (new.adv.lam, new.adv.steps) == (0.25, 3)  # sibling keys kept
    assert new.split_config.val_ratio == 0.3 and new.split_config.kind == "feature"
    assert new.split_config.domains == ("mnist", "usps")
    assert new.method_params == {**algorithm_class("splitmix").params, "atom": 0.25}
    assert apply_sets(cfg, []) is cfg
    with pytest.raises(ConfigError, match="unknown key 'roundz'"):
        apply_sets(cfg, ["roundz=3"])
    with pytest.raises(ConfigError, match="'lr' is not a nested section"):
        apply_sets(cfg, ["lr.x=3"])


def test_exponent_floats_in_files(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT.replace("lr: 0.01", "lr: 1e-2").replace("lr: 0.1", "lr: 5E-1"))
    exp = load_experiment(path)
    assert resolve_run(exp, "digits", "feature", "splitmix", 1).lr == 0.01
    assert resolve_run(exp, "digits", "feature", "fedavg", 1).lr == 0.5


def test_resolved_runs_are_validated(exp):
    """resolve_run and apply_sets return only valid runs: the value rules hold for every layer."""
    cfg = resolve_run(exp, "digits", "feature", "splitmix", 1)
    with pytest.raises(
        ConfigError,
        match=r"^config error in --set at rounds: 0 is less than the minimum of 1; "
        r"allowed: integer >= 1$",
    ):
        apply_sets(cfg, ["rounds=0"])
    # digits has 5 domains: 4 clients per domain make 20, the most a round can sample
    assert apply_sets(cfg, ["participation=20"]).participation == 20
    with pytest.raises(ConfigError, match=r"at participation: 21 is more than the 20 clients"):
        apply_sets(cfg, ["participation=21"])
