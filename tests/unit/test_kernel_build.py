"""Kernel recipes: validation, cache keys, patch application and failures, config checks.

Patches are applied with the real GNU patch on tiny trees; the config check
runs on the .config of a real tiny-6.12 build (tests/data/recipes/).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import pytest

from labctl.errors import ConfigError
from labctl.kernel import build as kernel_build
from labctl.kernel.build import (
    BuildError,
    PatchError,
    apply_patch,
    cache_key,
    check_fragments,
    load_recipe,
    private_copy,
    recipe_inputs,
    source_identity,
    tree_fingerprint,
)
from labctl.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "guests" / "kernels"
PATCHES = KERNELS / "patches"
RECORDED = Path(__file__).resolve().parents[1] / "data" / "recipes"
BUILT_CONFIG = RECORDED / "tiny-6.12" / "config"
PRISTINE_PURGATORY = RECORDED / "linux-source-6.12-purgatory.c"

PURGATORY_C = """\
void purgatory(void)
{
	int ret;

	ret = verify_sha256_digest();
	if (ret) {
		/* loop forever */
		for (;;)
			;
	}
}
"""

GOOD_PATCH = """\
--- a/purgatory.c
+++ b/purgatory.c
@@ -5,6 +5,6 @@ void purgatory(void)
 	ret = verify_sha256_digest();
 	if (ret) {
-		/* loop forever */
+		/* park: the next kernel is not what was loaded */
 		for (;;)
 			;
 	}
"""

STALE_PATCH = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
Subject: [PATCH] purgatory: something written against another tree

---
--- a/purgatory.c
+++ b/purgatory.c
@@ -5,6 +5,6 @@ void purgatory(void)
 	ret = verify_sha512_digest();
 	if (ret) {
-		/* loop forever */
+		/* park */
 		for (;;)
 			;
 	}
"""


def make_tree(root: Path) -> Path:
    """A fake kernel tree: enough for load_recipe (Makefile, Kconfig) and for patches."""
    root.mkdir()
    (root / "Makefile").write_text("# fake\n")
    (root / "Kconfig").write_text("# fake\n")
    (root / "purgatory.c").write_text(PURGATORY_C)
    return root


def write_recipe(folder: Path, text: str, name: str = "r.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def local_recipe(tmp_path):
    """A recipe on a local tree with one patch and one fragment."""
    make_tree(tmp_path / "linux")
    (tmp_path / "fix.patch").write_text(GOOD_PATCH)
    (tmp_path / "lab.config").write_text("CONFIG_KEXEC_FILE=y\n")
    return write_recipe(tmp_path, "source: {path: linux}\npatches: [fix.patch]\n"
                                  "config: {base: tinyconfig, fragments: [lab.config]}\n")


# ------------------------------------------------------------------ recipes

def test_shipped_recipes_load_with_their_patches_in_order():
    serial = load_recipe(KERNELS / "tiny-6.12-purgatory-serial.yaml")
    control = load_recipe(KERNELS / "tiny-6.12-no-digest.yaml", "tiny-6.12-no-digest")
    assert serial.source_package == control.source_package == "linux-source-6.12"
    assert [p.name[:4] for p in serial.patches] == ["0001"]
    assert [p.name[:4] for p in control.patches] == ["0001", "0002"]
    assert control.name == "tiny-6.12-no-digest" and serial.base == "tinyconfig"
    assert serial.fragments == (KERNELS / "kexec-lab.config",)


def test_shipped_patches_are_kernel_style_one_change_each():
    for patch in sorted(PATCHES.glob("*.patch")):
        text = patch.read_text()
        assert text.startswith("From ") and "\nSubject: [PATCH " in text, patch.name
        assert "\nSigned-off-by: " in text and text.count("\ndiff --git ") == 1, patch.name
        assert "arch/x86/purgatory/purgatory.c" in text


@pytest.mark.parametrize("text, line, message", [
    ("source: {path: linux}\npatches: [missing.patch]\n", 2,
     "key 'patches.0': 'missing.patch' file not found"),
    ("source: {path: linux, debian_package: linux-source-6.12}\n", 1,
     "key 'source': needs exactly one of 'debian_package' or 'path'"),
    ("source: {path: linux}\nconfig:\n  base: hugeconfig\n", 3,
     "key 'config.base': 'hugeconfig' is neither one of tinyconfig"),
    ("source: {path: nowhere}\n", 1, "key 'source.path':"),
    ("source: {path: linux}\npatchs: []\n", 2, "key 'patchs': unknown key"),
    ("source: {path: linux}\nconfig: {fragments: [3]}\n", 2,
     "key 'config.fragments.0': must be a string, got 3"),
])
def test_bad_recipes_name_file_line_and_key(tmp_path, text, line, message):
    make_tree(tmp_path / "linux")
    path = write_recipe(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:{line}: {message}")


# ------------------------------------------------------------------ cache key

def test_cache_key_follows_source_patches_order_and_config(local_recipe, tmp_path):
    recipe = load_recipe(local_recipe)
    key = cache_key(recipe_inputs(recipe, source_identity(recipe)))
    assert key == cache_key(recipe_inputs(recipe, source_identity(recipe)))  # stable

    def key_after(change) -> str:
        change()
        again = load_recipe(local_recipe)
        return cache_key(recipe_inputs(again, source_identity(again)))

    keys = {key,
            key_after(lambda: (tmp_path / "fix.patch").write_text(GOOD_PATCH.replace("park", "stop"))),
            key_after(lambda: (tmp_path / "lab.config").write_text("CONFIG_CRASH_DUMP=y\n")),
            key_after(lambda: local_recipe.write_text(
                local_recipe.read_text().replace("tinyconfig", "defconfig"))),
            key_after(lambda: (tmp_path / "linux" / "purgatory.c").write_text(PURGATORY_C + "\n"))}
    assert len(keys) == 5

    (tmp_path / "second.patch").write_text(GOOD_PATCH)
    two = write_recipe(tmp_path, "source: {path: linux}\npatches: [fix.patch, second.patch]\n", "a.yaml")
    swapped = write_recipe(tmp_path, "source: {path: linux}\npatches: [second.patch, fix.patch]\n", "b.yaml")
    a, b = load_recipe(two), load_recipe(swapped)
    assert cache_key(recipe_inputs(a, "same")) != cache_key(recipe_inputs(b, "same"))


def test_a_built_in_lab_key_is_part_of_the_cache_key(local_recipe, tmp_path):
    """The certificate counts by fingerprint: another cache's key pair is another build;
    a recipe without trusted_keys keeps the inputs (and key) it had before."""
    plain = load_recipe(local_recipe)
    assert "trusted_keys" not in recipe_inputs(plain, "same", tmp_path / "cache-a")
    keyed = write_recipe(tmp_path, local_recipe.read_text() + "trusted_keys: [lab]\n", "k.yaml")
    recipe = load_recipe(keyed)
    assert recipe.trusted_keys == ("lab",)
    a = recipe_inputs(recipe, "same", tmp_path / "cache-a")
    assert a == recipe_inputs(recipe, "same", tmp_path / "cache-a")  # made once, then reused
    assert a["trusted_keys"][0]["name"] == "lab" and len(a["trusted_keys"][0]["sha256"]) == 64
    b = recipe_inputs(recipe, "same", tmp_path / "cache-b")
    assert len({cache_key(recipe_inputs(plain, "same")), cache_key(a), cache_key(b)}) == 3
    with pytest.raises(ValueError, match="needs the cache directory"):
        recipe_inputs(recipe, "same")


def test_the_generated_fragment_names_the_cached_certificate(local_recipe, tmp_path):
    keyed = load_recipe(write_recipe(tmp_path, local_recipe.read_text() + "trusted_keys: [lab]\n",
                                     "k.yaml"))
    fragment = kernel_build._trusted_keys_fragment(keyed, tmp_path / "cache", tmp_path)
    cert = tmp_path / "cache" / "signing" / "lab" / "cert.pem"
    assert cert.is_file() and f'CONFIG_SYSTEM_TRUSTED_KEYS="{cert}"' in fragment.read_text()
    check_fragments((fragment,), f'CONFIG_SYSTEM_TRUSTED_KEYS="{cert}"\n')
    with pytest.raises(ConfigError, match="CONFIG_SYSTEM_TRUSTED_KEYS=.* did not survive"):
        check_fragments((fragment,), 'CONFIG_SYSTEM_TRUSTED_KEYS=""\n')
    assert kernel_build._trusted_keys_fragment(load_recipe(local_recipe), tmp_path, tmp_path) is None


def test_only_the_lab_key_can_be_built_in(local_recipe, tmp_path):
    path = write_recipe(tmp_path, local_recipe.read_text() + "trusted_keys: [wrong]\n", "w.yaml")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}:4: key 'trusted_keys.0': 'wrong' is not one of: lab")


def test_tree_fingerprint_ignores_git_and_sees_edits(tmp_path):
    tree = make_tree(tmp_path / "linux")
    before = tree_fingerprint(tree)
    (tree / ".git").mkdir()
    (tree / ".git" / "index").write_text("changes all the time")
    assert tree_fingerprint(tree) == before
    (tree / "Kconfig").write_text("# edited, and longer\n")
    assert tree_fingerprint(tree) != before


# ------------------------------------------------------------------ patches

def test_patch_applies_to_a_private_copy_and_never_writes_the_original(tmp_path):
    tree = make_tree(tmp_path / "linux")
    (tmp_path / "fix.patch").write_text(GOOD_PATCH)
    copy = tmp_path / "copy"
    private_copy(tree, copy)
    assert os.stat(copy / "Makefile").st_ino == os.stat(tree / "Makefile").st_ino  # hard links
    apply_patch(tmp_path / "fix.patch", copy)
    assert "park: the next kernel" in (copy / "purgatory.c").read_text()
    assert (tree / "purgatory.c").read_text() == PURGATORY_C
    assert sorted(p.name for p in copy.iterdir()) == ["Kconfig", "Makefile", "purgatory.c"]


def test_a_patch_that_does_not_apply_names_patch_file_and_hunk(tmp_path):
    tree = make_tree(tmp_path / "linux")
    patch = tmp_path / "0003-stale.patch"
    patch.write_text(STALE_PATCH)
    with pytest.raises(PatchError) as err:
        apply_patch(patch, tree)
    message = str(err.value)
    assert message.startswith("patch 0003-stale.patch does not apply: purgatory.c: hunk #1 "
                              "@@ -5,6 +5,6 @@ void purgatory(void) FAILED at line 5")
    assert str(patch) in message
    assert (tree / "purgatory.c").read_text() == PURGATORY_C
    assert not list(tree.glob("*.rej")) and not list(tree.glob("*.orig"))


def test_shipped_series_applies_in_order_to_the_real_purgatory(tmp_path):
    """The two patches against linux-source-6.12's purgatory.c (recorded in tests/data)."""
    tree = tmp_path / "linux"
    (tree / "arch/x86/purgatory").mkdir(parents=True)
    shutil.copy(PRISTINE_PURGATORY, tree / "arch/x86/purgatory/purgatory.c")
    for patch in sorted(PATCHES.glob("*.patch")):
        apply_patch(patch, tree)
    text = (tree / "arch/x86/purgatory/purgatory.c").read_text()
    assert "outb %0, %1" in text and "ignored (negative control)" in text
    with pytest.raises(PatchError, match=r"patch 0001-\S+ does not apply: .*previously applied"):
        apply_patch(sorted(PATCHES.glob("0001-*.patch"))[0], tree)


# ------------------------------------------------------------------ config

def test_the_lab_fragment_holds_in_a_real_tiny_build():
    check_fragments((KERNELS / "kexec-lab.config",), BUILT_CONFIG.read_text())


def test_the_signature_fragment_holds_in_a_real_sig_build():
    """tiny-6.12-sig's .config (recorded): every line of both fragments, the generated
    CONFIG_SYSTEM_TRUSTED_KEYS among them, landed; it is not the forced variant."""
    config = (RECORDED / "tiny-6.12-sig" / "config").read_text()
    check_fragments((KERNELS / "kexec-lab.config", KERNELS / "kexec-sig.config"), config)
    assert 'CONFIG_SYSTEM_TRUSTED_KEYS="' in config and "signing/lab/cert.pem" in config
    with pytest.raises(ConfigError, match="CONFIG_KEXEC_SIG_FORCE=y did not survive"):
        check_fragments((KERNELS / "kexec-sig-force.config",), config)
    shipped = load_recipe(KERNELS / "tiny-6.12-sig-force.yaml")
    assert shipped.trusted_keys == ("lab",)
    check_fragments(shipped.fragments, (RECORDED / "tiny-6.12-sig-force" / "config").read_text())


def test_a_fragment_line_lost_in_olddefconfig_names_file_line_and_symbol(tmp_path):
    fragment = KERNELS / "kexec-lab.config"
    line = next(n for n, text in enumerate(fragment.read_text().splitlines(), 1)
                if text == "CONFIG_CRYPTO_SHA256=y")
    config = BUILT_CONFIG.read_text().replace("CONFIG_CRYPTO_SHA256=y", "# CONFIG_CRYPTO_SHA256 is not set")
    with pytest.raises(ConfigError) as err:
        check_fragments((fragment,), config)
    assert str(err.value).startswith(f"{fragment}:{line}: CONFIG_CRYPTO_SHA256=y did not survive")
    assert "final .config: CONFIG_CRYPTO_SHA256=n" in str(err.value)


def test_not_set_lines_are_checked_too(tmp_path):
    fragment = tmp_path / "f.config"
    fragment.write_text("# comment\n# CONFIG_KEXEC_SIG is not set\n")
    check_fragments((fragment,), "CONFIG_KEXEC_FILE=y\n")
    with pytest.raises(ConfigError, match=r"f.config:2: CONFIG_KEXEC_SIG=n did not survive"):
        check_fragments((fragment,), "CONFIG_KEXEC_SIG=y\n")


# ------------------------------------------------------------------ progress and failures

KBUILD_OUTPUT = "  CC      kernel/fork.o\n  AR      kernel/built-in.a\n  LD      vmlinux\n"


def test_make_steps_show_stage_count_and_last_line(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_build, "PROGRESS_SECONDS", 0)
    stream = io.StringIO()
    log = tmp_path / "build.log"
    argv = [sys.executable, "-c", f"print({KBUILD_OUTPUT!r}, end='')"]
    kernel_build._make(argv, log, "building", Progress("kernel k", stream=stream))
    lines = stream.getvalue().splitlines()
    assert lines[-1].endswith("kernel k: building: 3 steps, last: LD      vmlinux")
    assert log.read_text().endswith("  LD      vmlinux\n") and log.read_text().startswith("$ ")


def test_a_failed_make_step_quotes_the_end_of_the_log(tmp_path):
    argv = [sys.executable, "-c", "print('  CC      fs/x.o'); print('fs/x.c:1: error: boom'); exit(2)"]
    with pytest.raises(BuildError) as err:
        kernel_build._make(argv, tmp_path / "build.log", "building", Progress(quiet=True))
    assert str(err.value).startswith("building failed (exit 2)")
    assert "fs/x.c:1: error: boom" in str(err.value)
