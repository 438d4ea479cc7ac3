"""labctl ci-plan: each kernel's arch, source and CI cache key (what a shard installs and
which cache it restores), and the selection written into the jobs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labctl.campaigns.ci_plan import kernel_facts, plan
from labctl.config.schema import load_lab

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab_copy(tmp_path):
    """lab.yaml and guests/kernels/ copied, so a test can edit a recipe's files."""
    shutil.copy(ROOT / "lab.yaml", tmp_path / "lab.yaml")
    shutil.copytree(ROOT / "guests" / "kernels", tmp_path / "guests" / "kernels")
    shutil.copytree(ROOT / "scenarios", tmp_path / "scenarios")
    return tmp_path


def test_shipped_catalogue_facts():
    lab = load_lab(ROOT / "lab.yaml")
    assert {k: kernel_facts(lab, k)["arch"] for k in ("debian-6.12", "debian-6.1-arm64", "tiny-6.12-arm64",
                                                     "tiny-6.12-riscv64", "tiny-6.12-serial")} == {
        "debian-6.12": "x86_64", "debian-6.1-arm64": "arm64", "tiny-6.12-arm64": "arm64",
        "tiny-6.12-riscv64": "riscv64", "tiny-6.12-serial": "x86_64"}
    assert kernel_facts(lab, "debian-6.12")["source"] == "debian"
    assert kernel_facts(lab, "tiny-6.12-sig")["source"] == "recipe"
    keys = {kernel_facts(lab, k)["cache_key"] for k in lab.kernels}
    assert len(keys) == len(lab.kernels)  # no two kernels share a cache


def test_cache_key_follows_recipe_files_and_the_entry_not_the_rest(lab_copy):
    def key(name="tiny-6.12-serial"):
        return kernel_facts(load_lab(lab_copy / "lab.yaml"), name)["cache_key"]

    before, other = key(), key("tiny-6.12-no-digest")
    lab_yaml = lab_copy / "lab.yaml"
    text = lab_yaml.read_text()
    lab_yaml.write_text(text.replace("tiny-6.12 + purgatory reports the digest result on COM1",
                                     "reworded").replace("smp: 1 ", "smp: 2 "))
    assert key() == before  # description and machine settings do not define the kernel
    patch = lab_copy / "guests/kernels/patches/0001-x86-purgatory-report-the-digest-result-on-COM1.patch"
    patch.write_text(patch.read_text() + "\n")
    assert key() != before and key("tiny-6.12-no-digest") != other  # both apply patch 0001
    unchanged = key("tiny-6.12-arm64")
    fragment = lab_copy / "guests/kernels/kexec-lab-arm64.config"
    fragment.write_text(fragment.read_text() + "# CONFIG_FOO is not set\n")
    assert key("tiny-6.12-arm64") != unchanged
    recipe_path = "guests/kernels/tiny-6.12-purgatory-serial.yaml"
    lab_yaml.write_text(lab_yaml.read_text().replace(recipe_path, "guests/kernels/tiny-6.12.yaml"))
    assert key() == key("tiny-6.12")  # the same recipe under two names: the same kernel


def test_plan_writes_the_selection_and_each_kernels_facts():
    lab = load_lab(ROOT / "lab.yaml")
    child = plan(lab, "gitlab", 1, ["tiny-6.12-sig", "debian-6.12"], ["crash-intact", "crash-corrupt"])
    entries = {e["KERNEL"]: e for e in child["lab-shard"]["parallel"]["matrix"]}
    assert set(entries) == {"tiny-6.12-sig", "debian-6.12"}
    assert entries["tiny-6.12-sig"]["KERNEL_SOURCE"] == "recipe" and entries["tiny-6.12-sig"]["SHARD"] == ["1/1"]
    assert entries["debian-6.12"]["KERNEL_CACHE_KEY"] == kernel_facts(lab, "debian-6.12")["cache_key"]
    assert child["lab-shard"]["variables"]["SCENARIOS"] == "crash-intact crash-corrupt"
    everything = plan(lab, "github", 2, None, None)
    assert {j["kernel"] for j in everything["include"]} == set(lab.kernels)
    assert all(j["scenarios"] == "" for j in everything["include"])  # empty: every scenario
