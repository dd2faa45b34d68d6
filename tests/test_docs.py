"""The pages a user follows say what the code does: every `edgereid ...` command quoted in README.md and docs/
parses with the real CLI, every run-folder file name they promise is one the code writes, and the pages stay
short and free of home paths and tracker talk."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from unittest import mock

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CLEAN_PAGES = [*PAGES, ROOT / "benchmarks" / "README.md", ROOT / "CHANGELOG.md"]
CONTROL = {"&&", "||", ";", "|", "&"}


def fenced_blocks(text: str) -> list:
    """Bodies of the ``` blocks of a Markdown page whose language is a shell or unnamed."""
    blocks, body, lang = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if body is None:
                body, lang = [], line.strip()[3:].strip().lower()
            else:
                if lang in ("", "bash", "sh", "shell", "console"):
                    blocks.append(body)
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def logical_lines(lines: list) -> list:
    """Join lines continued with a trailing backslash."""
    out, cur = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            out.append(cur + line)
            cur = ""
    if cur:
        out.append(cur)
    return out


def commands(line: str) -> list:
    """argv (without the leading `edgereid`) of each `edgereid` command in one shell line; comments dropped."""
    lexer = shlex.shlex(line.lstrip("$ "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens, found, seg = list(lexer), [], []
    for tok in tokens + [";"]:
        if tok in CONTROL:
            if seg and seg[0] == "edgereid":
                argv, skip = [], False
                for t in seg[1:]:  # drop redirections (`> my.yaml`)
                    if skip:
                        skip = False
                    elif t in (">", ">>", "<", "2>"):
                        skip = True
                    else:
                        argv.append(t)
                found.append(argv)
            seg = []
        else:
            seg.append(tok)
    return found


def quoted_commands() -> list:
    """(page, line, argv) of every `edgereid` command in a fenced shell block; a command holding `...` is a
    placeholder and skipped."""
    found = []
    for page in PAGES:
        for block in fenced_blocks(page.read_text()):
            for line in logical_lines(block):
                if not re.search(r"(^|[\s;&|$])edgereid\s", line.split("#")[0]):
                    continue  # a file tree, output, or a comment naming a command
                for argv in commands(line):
                    if "..." not in argv:
                        found.append((page.relative_to(ROOT).as_posix(), line.strip(), argv))
    return found


def parse(argv: list) -> None:
    """Parse `edgereid ARGV` as the CLI would, without running it: options, arguments, choices and types are
    checked; paths are not required to exist (the pages name the user's files)."""
    from edgereid.cli.main import cli

    with mock.patch.object(click.Path, "convert", lambda self, value, param, ctx: value), \
            mock.patch.object(Path, "exists", lambda self, **kw: True):  # an option's own check (search --gallery)
        ctx = cli.make_context("edgereid", list(argv))
        with ctx:
            args = [*getattr(ctx, "_protected_args", []), *ctx.args]
            name, cmd, rest = cli.resolve_command(ctx, args)
            assert cmd is not None, f"no command {args[:1]}"
            cmd.make_context(name, rest, parent=ctx).close()


COMMANDS = quoted_commands()


def test_the_pages_quote_commands_at_all():
    pages = {page for page, _, _ in COMMANDS}
    assert "README.md" in pages and len(pages) >= 5, pages
    assert len(COMMANDS) >= 40, len(COMMANDS)


@pytest.mark.parametrize("page,line,argv", COMMANDS, ids=[f"{p}:{' '.join(a[:2])}" for p, _, a in COMMANDS])
def test_quoted_command_parses(page, line, argv):
    try:
        parse(argv)
    except click.exceptions.Exit as exc:  # --help / --version
        assert exc.exit_code == 0
    except click.ClickException as exc:
        pytest.fail(f"{page}: `{line}` does not parse: {exc.format_message()}")


def test_every_cli_command_is_in_the_readme_table():
    from edgereid.cli.main import COMMANDS as CLI_COMMANDS

    readme = (ROOT / "README.md").read_text()
    table = {m.group(1) for m in re.finditer(r"^\| `edgereid ([\w-]+)` \|", readme, re.M)}
    assert table == set(CLI_COMMANDS), (set(CLI_COMMANDS) - table, table - set(CLI_COMMANDS))


def test_the_readme_test_command_is_the_one_ci_runs():
    """.ci/run installs the project and runs the README's test command: the two must stay the same command."""
    ci = (ROOT / ".ci" / "run").read_text()
    ci_test = [line.strip() for line in ci.splitlines() if "pytest" in line and not line.lstrip().startswith("#")]
    assert ci_test == ["python -m pytest -q tests"], ci_test
    first_block = fenced_blocks((ROOT / "README.md").read_text())[0]
    assert any(line.rstrip().endswith("&& " + ci_test[0]) for line in first_block), first_block


# -- file names the pages promise ----------------------------------------------------------------------------

WRITERS = {  # module -> what it writes into its output folder
    "training": ROOT / "training" / "trainer.py",
    "adapt": ROOT / "training" / "adapt.py",
    "quickstart": ROOT / "edgereid" / "pipelines" / "quickstart.py",
    "synthetic": ROOT / "training" / "synthetic.py",
    "calibration": ROOT / "calibration" / "calibset.py",
}
# Names the user picks on the command line (inputs, or outputs named with -o / as an argument) or the pages' own
# example inputs: not promised by the code.
USER_NAMED = {"g.csv", "attributes.csv", "OLD.pt", "NEW.pt", "converted.pt", "emb.csv", "qat.pt", "s0_embedding.pt"}


def written_names(source: Path) -> set:
    """File and folder names a module joins onto an output folder (`out / "name"`, `_save("name", ...)`) or lists
    as a sub-folder (`"bounding_box_train"` in synthetic's layout)."""
    text = source.read_text()
    names = set(re.findall(r'/\s*"([\w.-]+)"', text)) | set(re.findall(r'_save\("([\w.-]+)"', text))
    names |= set(re.findall(r'f"\{stem\}(\.[\w.]+)"', text))  # model.fp16.onnx, model.int8.onnx
    if source.name == "synthetic.py":
        names |= set(re.findall(r'"(bounding_box_\w+|query)"', text))
    return names


WRITTEN = {kind: written_names(path) for kind, path in WRITERS.items()}
ALL_WRITTEN = set().union(*WRITTEN.values()) | {f"model{suffix}" for suffix in WRITTEN["quickstart"]
                                                if suffix.startswith(".")}


def test_the_code_writes_what_the_guides_list():
    assert {"best_reid.pt", "best_gender.pt", "last.pt", "metrics.jsonl", "config.yaml"} <= WRITTEN["training"]
    assert {"adapted.pt", "adapt.jsonl", "clusters.csv"} <= WRITTEN["adapt"]
    assert {"train", "data", "model.onnx", "report.json", "report.md", "search_grid.png", "calib",
            "gender_train.csv", ".fp16.onnx", ".int8.onnx"} <= WRITTEN["quickstart"]
    assert {"market1501", "gender", "gender.csv", "gender_train.csv", "gender_test.csv",
            "summary.json"} <= WRITTEN["synthetic"]


PATH_RE = re.compile(r"(?<![\w/.$-])((?:runs/[\w./-]*[\w-])|(?:[\w.-]+/)*[\w.-]+\.(?:pt|csv|jsonl))(?![\w/])")


def promised_paths() -> list:
    found = []
    for page in PAGES:
        for m in PATH_RE.finditer(page.read_text()):
            found.append((page.relative_to(ROOT).as_posix(), m.group(1)))
    return found


def test_every_run_file_the_pages_name_is_written_by_the_code():
    bad = []
    for page, path in promised_paths():
        if path in USER_NAMED or (Path(path).name in USER_NAMED and not path.startswith("runs/")):
            continue
        parts = path.split("/")
        # runs/<run name>/<what the code writes>...; a file named outside runs/ must be one the code writes
        checked = parts[2:] if parts[0] == "runs" else parts[-1:]
        missing = [p for p in checked if p and p not in ALL_WRITTEN]
        if missing:
            bad.append(f"{page}: {path} ({', '.join(missing)})")
    assert not bad, "names no code writes:\n" + "\n".join(bad)
    assert len(promised_paths()) >= 20


# -- the pages stay short and clean ----------------------------------------------------------------------------

def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 400, len(lines)


@pytest.mark.parametrize("page", CLEAN_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pages_speak_of_the_software_only(page):
    text = page.read_text()
    for word in ("issue", "session"):
        hits = [line for line in text.splitlines() if re.search(word, line, re.I)]
        assert not hits, f"{page.name} mentions {word!r}: {hits[:3]}"
    assert not re.search(r"(?<![\w`])#\d+\b", text), f"{page.name} refers to a numbered ticket"
    assert "/root/" not in text and "/home/" not in text, f"{page.name} holds a home path"


def test_committed_results_hold_no_home_paths():
    results = sorted((ROOT / "benchmarks" / "results").rglob("*.json"))
    assert results
    bad = [p.relative_to(ROOT).as_posix() for p in results if re.search(r"/root/|/home/", p.read_text())]
    assert not bad, bad
