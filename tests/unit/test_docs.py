"""The docs agree with the code: every `labctl ...` command they show parses with the real
parser, every module is in docs/internals.md, docs/catalogue.md is what `labctl scenarios
--markdown` writes, relative links lead to files, and nothing cites a file outside the
repository."""

import argparse
import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from labctl.cli import build_parser
from labctl.config.schema import load_scenario
from labctl.report.scenarios import markdown_table

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "artifacts" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"^(?:\$ )?(?:\.venv/bin/)?labctl\s+\S")
INLINE = re.compile(r"`((?:\.venv/bin/)?labctl\s[^`]+)`")
SHELL_ENDS = {">", ">>", "|", "&&", ";", "2>&1", "<"}
# Guides other work in progress adds; a link to one of them may lead nowhere until it lands.
PENDING = {"docs/ci.md", "docs/bisect.md", "docs/distro-kdump.md", "docs/kexec-reboot-and-mixed.md",
           "docs/findings-dumps.md"}


def commands(text: str) -> list[str]:
    """The labctl command lines a Markdown text shows: lines of fenced code blocks (a `$ `
    prompt and `.venv/bin/` allowed, `\\` continuations joined) and inline code spans."""
    found, fenced, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if fenced:
            line = pending + line
            pending = line[:-1] + " " if line.endswith("\\") else ""
            if not pending and COMMAND.match(line.strip()):
                found.append(line.strip())
        else:
            found += INLINE.findall(line)
    return found


def argv_of(command: str) -> list[str]:
    """The arguments labctl gets: prompt, path, comments and what the shell does after
    (redirections, pipes, further commands) left out."""
    words = shlex.split(command.removeprefix("$ "), comments=True)
    end = next((i for i, w in enumerate(words) if w in SHELL_ENDS or w.startswith(">")), len(words))
    return words[1:end]


def subcommand_choices(parser: argparse.ArgumentParser) -> dict:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices if actions else {}


def names_a_command(argv: list[str]) -> bool:
    """`labctl run` or `labctl report diff` named in prose: only subcommand names, each one
    the parser has."""
    parser = build_parser()
    for word in argv:
        choices = subcommand_choices(parser)
        if word not in choices:
            return False
        parser = choices[word]
    return bool(argv)


def parse_error(command: str) -> str | None:
    """None if the real parser takes the command, else its complaint."""
    argv = argv_of(command)
    if names_a_command(argv):
        return None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def doc_commands() -> list[tuple[str, str]]:
    return [(doc.relative_to(ROOT).as_posix(), c) for doc in DOCS for c in commands(doc.read_text())]


def test_the_docs_show_labctl_commands():
    shown = doc_commands()
    assert len({doc for doc, _ in shown}) >= 6 and len(shown) >= 40


@pytest.mark.parametrize(("doc", "command"), doc_commands())
def test_every_labctl_command_in_the_docs_parses(doc, command):
    assert parse_error(command) is None, f"{doc}: {command}"


@pytest.mark.parametrize(("text", "bad"), [
    ("```sh\n.venv/bin/labctl run crash-corrupt --kernels debian-6.12\n```\n", True),  # run has no --kernels
    ("```sh\n$ labctl frobnicate\n```\n", True),
    ("Run `labctl console --save-vmcore` then.\n", True),  # console needs a scenario
    ("```sh\nlabctl matrix \\\n    --jobs zero\n```\n", True),
    ("```sh\nlabctl scenarios --markdown > docs/catalogue.md   # regenerate\n```\n", False),
    ("the `labctl report` commands; `labctl run` and `labctl report diff`\n", False),
    ("`labctl bisekt` finds it\n", True),  # a subcommand the parser does not have
    ("```\nlabctl: configuration error: x.yaml:3: key 'y'\n```\n", False),  # output, not a command
])
def test_the_command_check_catches_what_does_not_parse(text, bad):
    shown = commands(text)
    assert [c for c in shown if parse_error(c)] if bad else all(parse_error(c) is None for c in shown)
    assert shown or not bad


def test_every_module_is_in_the_internals_map():
    internals = (ROOT / "docs" / "internals.md").read_text()
    modules = [p.relative_to(ROOT / "labctl").as_posix() for p in sorted((ROOT / "labctl").rglob("*.py"))
               if p.name != "__init__.py"]
    assert [m for m in modules if f"`{m}`" not in internals] == []


def test_the_catalogue_table_is_generated_from_the_scenario_files():
    scenarios = sorted((load_scenario(p) for p in (ROOT / "scenarios").glob("*.yaml")), key=lambda s: s.name)
    assert (ROOT / "docs" / "catalogue.md").read_text() == markdown_table(scenarios), \
        "run: .venv/bin/labctl scenarios --markdown > docs/catalogue.md"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#([^)]*))?\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


def test_relative_links_lead_to_files_and_headings():
    broken = []
    for doc in DOCS:
        for target, anchor in LINK.findall(doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            if not path.exists():
                if path.relative_to(ROOT).as_posix() not in PENDING:
                    broken.append(f"{doc.relative_to(ROOT)} -> {target}")
            elif anchor and anchor not in anchors(path.read_text()):
                broken.append(f"{doc.relative_to(ROOT)} -> {target}#{anchor}")
    assert broken == []


def test_nothing_in_the_repository_cites_a_file_outside_it():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    me = Path(__file__).relative_to(ROOT).as_posix()
    citing = []
    # spelled in parts, so that this test is not itself a file that cites them
    outside = ("design" + ".md", "/work/" + "shared")
    for name in tracked.split():
        path = ROOT / name
        if name == me or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if any(mention in text for mention in outside):
            citing.append(name)
    assert citing == []


def test_the_required_options_table_lists_the_lab_fragment():
    fragment = (ROOT / "guests" / "kernels" / "kexec-lab.config").read_text()
    options = re.findall(r"^CONFIG_(\w+)=", fragment, re.MULTILINE)
    table = (ROOT / "docs" / "kernels.md").read_text().split("## Required options")[1].split("\n## ")[0]
    assert options and [o for o in options if f"`{o}`" not in table] == []
