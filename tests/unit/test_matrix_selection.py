"""Pair selection, stable sharding and CI job matrices (no guest)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labctl.artifacts import pair_dir
from labctl.campaigns.matrix import emit_github, emit_gitlab, parse_shard, run_id_arg, schedule, select_pairs, shard_of
from labctl.cli import main
from labctl.config.schema import load_lab
from labctl.errors import ConfigError
from labctl.kernel.providers import PACKAGE_PINS_ENV, resolve_package

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = "load: {method: kexec_file_load}\nexpect: capture-booted\n"


@pytest.fixture
def lab(tmp_path):
    """A catalogue of three kernels and five scenario files."""
    (tmp_path / "lab.yaml").write_text(
        "default_kernel: k1\nkernels:\n"
        + "".join(f"  k{i}: {{debian_package: linux-image-cloud-amd64}}\n" for i in (1, 2, 3)))
    (tmp_path / "scenarios").mkdir()
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / "scenarios" / f"{name}.yaml").write_text(SCENARIO)
    return load_lab(tmp_path / "lab.yaml")


def scenarios(lab):
    return lab.path.parent / "scenarios"


def test_shard_of_is_pinned():
    """The split must not change between releases: CI shards are planned on it."""
    assert [shard_of(k, 4) for k in ("debian-6.12/crash-corrupt", "debian-6.12/crash-intact",
                                     "debian-6.1/crash-corrupt", "debian-6.1/crash-intact")] == \
        PINNED_SHARDS


PINNED_SHARDS = [2, 3, 1, 2]  # sha256 of "kernel/scenario", first 8 bytes big-endian, mod 4


@given(st.lists(st.text(min_size=1), min_size=1, max_size=30, unique=True), st.integers(1, 9))
def test_shards_partition_the_pairs(keys, count):
    shards = [shard_of(k, count) for k in keys]
    assert all(1 <= s <= count for s in shards)
    assert shards == [shard_of(k, count) for k in keys]


def test_every_pair_lands_in_exactly_one_shard(lab):
    everything = select_pairs(lab, scenarios(lab))
    assert len(everything) == 15
    for count in (1, 2, 3, 7):
        shards = [select_pairs(lab, scenarios(lab), shard=(i, count)) for i in range(1, count + 1)]
        keys = [p.key for shard in shards for p in shard]
        assert sorted(keys) == sorted(p.key for p in everything)


def test_adding_a_scenario_moves_no_other_pair(lab):
    before = {p.key: i for i in (1, 2, 3) for p in select_pairs(lab, scenarios(lab), shard=(i, 3))}
    (scenarios(lab) / "f.yaml").write_text(SCENARIO)
    after = {p.key: i for i in (1, 2, 3) for p in select_pairs(lab, scenarios(lab), shard=(i, 3))}
    assert {k: v for k, v in after.items() if not k.endswith("/f")} == before


def test_selection_by_kernel_and_scenario(lab):
    pairs = select_pairs(lab, scenarios(lab), ["k2,k3"], ["b", "e"])
    assert [p.key for p in pairs] == ["k2/b", "k2/e", "k3/b", "k3/e"]
    assert all(p.path == scenarios(lab).resolve() / f"{p.scenario}.yaml" for p in pairs)


def test_a_selection_is_a_set_in_the_order_given(lab):
    """A name given twice (two globs, a name and its path, `a,a`) is one pair: two runs of
    one pair would share its directory and log."""
    a = str(scenarios(lab) / "a.yaml")
    pairs = select_pairs(lab, scenarios(lab), ["k2", "k1,k2"], ["b", "a", "b", a, "b,a"])
    assert [p.key for p in pairs] == ["k2/b", "k2/a", "k1/b", "k1/a"]


def test_an_option_naming_nothing_is_an_error_not_everything(lab):
    for kernels, names in ((None, [""]), (None, [",", " "]), ([""], None)):
        with pytest.raises(ConfigError, match="names nothing.*leave the option out for all"):
            select_pairs(lab, scenarios(lab), kernels, names)


def test_two_scenario_files_with_one_name_are_refused(lab, tmp_path):
    other = tmp_path / "elsewhere" / "a.yaml"
    other.parent.mkdir()
    other.write_text(SCENARIO)
    with pytest.raises(ConfigError, match=r"two scenarios named 'a': .*scenarios/a.yaml and .*elsewhere/a.yaml"):
        select_pairs(lab, scenarios(lab), ["k1"], ["a", str(other)])


def test_unknown_kernel_or_scenario_is_named(lab):
    with pytest.raises(ConfigError, match=r"lab.yaml: unknown kernel 'k9' \(catalogue: k1, k2, k3\)"):
        select_pairs(lab, scenarios(lab), ["k9"])
    with pytest.raises(ConfigError, match="unknown scenario 'zz'; known: a, b, c, d, e"):
        select_pairs(lab, scenarios(lab), None, ["zz"])


def test_a_broken_scenario_file_fails_before_any_guest(lab):
    (scenarios(lab) / "broken.yaml").write_text("expect: purgatory-refused\ntrigger: sysrqq\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:2: .*trigger"):
        select_pairs(lab, scenarios(lab))


def test_expect_fail_comes_from_the_catalogue_entry(lab):
    kernels = {**lab.kernels, "k2": SimpleNamespace(name="k2", expect_fail={"c": "known bug 123"})}
    pairs = select_pairs(replace(lab, kernels=kernels), scenarios(lab), ["k1", "k2"], ["c"])
    assert [(p.key, p.expect_fail) for p in pairs] == [("k1/c", None), ("k2/c", "known bug 123")]


@pytest.mark.parametrize("text,problem", [("2", "expected I/N"), ("0/3", "between 1 and N"),
                                          ("4/3", "between 1 and N"), ("a/b", "expected I/N")])
def test_bad_shard(text, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_shard(text)


def test_run_id_must_be_one_path_component():
    assert run_id_arg("nightly-42") == "nightly-42"
    for bad in ("../x", "a/b", ".hidden", "a b"):
        with pytest.raises(Exception, match="use letters"):
            run_id_arg(bad)


def test_emit_github_covers_every_pair_once(lab):
    everything = select_pairs(lab, scenarios(lab))
    jobs = emit_github(everything, 3)["include"]
    assert sum(j["pairs"] for j in jobs) == 15 and all(j["pairs"] > 0 for j in jobs)
    assert len({(j["kernel"], j["shard"]) for j in jobs}) == len(jobs)
    for job in jobs:
        shard = select_pairs(lab, scenarios(lab), [job["kernel"]], shard=(job["shard"], job["shards"]))
        assert len(shard) == job["pairs"]


def test_emit_gitlab_is_a_child_pipeline_with_a_parallel_matrix(lab):
    everything = select_pairs(lab, scenarios(lab))
    doc = emit_gitlab(everything, 2)
    assert doc["include"] == [{"local": ".gitlab/lab-jobs.yml"}]
    assert (ROOT / ".gitlab" / "lab-jobs.yml").is_file()
    matrix = doc["lab-shard"]["parallel"]["matrix"]
    assert [m["KERNEL"] for m in matrix] == ["k1", "k2", "k3"]
    assert all(set(m["SHARD"]) <= {"1/2", "2/2"} for m in matrix)
    assert doc["lab-merge"]["needs"] == ["lab-shard"]


def test_emit_prints_one_json_line(lab, capsys):
    assert main(["--lab", str(lab.path), "matrix", "--emit", "github", "--shards", "2",
                 "--kernels", "k1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert {j["kernel"] for j in json.loads(out)["include"]} == {"k1"}


def test_a_pinned_package_skips_the_archive(monkeypatch):
    """A matrix pins each metapackage's resolution for its children (same version everywhere)."""
    monkeypatch.setenv(PACKAGE_PINS_ENV, json.dumps(
        {"linux-image-cloud-amd64": ["linux-image-6.1.0-999-cloud-amd64", "6.1.999-1"]}))
    assert resolve_package("linux-image-cloud-amd64") == ("linux-image-6.1.0-999-cloud-amd64", "6.1.999-1")


def test_a_reused_run_id_never_overwrites_a_pair(tmp_path):
    pair_dir(tmp_path, "nightly-1", "debian-6.12", "crash-intact")
    with pytest.raises(ConfigError, match=r"nightly-1/debian-6.12/crash-intact already exists .* another --run-id"):
        pair_dir(tmp_path, "nightly-1", "debian-6.12", "crash-intact")


def test_the_heaviest_pairs_start_first_so_no_long_pair_runs_alone_at_the_end():
    lab = load_lab(ROOT / "lab.yaml")
    pairs = select_pairs(lab, ROOT / "scenarios", ["debian-6.12"])
    weight = {p.scenario: p.weight for p in pairs}
    assert weight["cpu-hotplug"] == 4 and weight["memory-hotplug"] == 4  # fresh boot, hotplug, crash
    assert weight["load-garbage"] == 3  # rejected, then a valid load and an intact crash
    assert weight["crash-intact"] == weight["crash-intact-nmi"] == 2  # a capture boot
    assert weight["crash-corrupt"] == weight["corrupt-initrd"] == 1  # refused by purgatory
    order = [p.scenario for p in schedule(pairs)]
    assert order.index("cpu-hotplug") < order.index("load-garbage") < order.index("crash-intact") \
        < order.index("crash-corrupt")
