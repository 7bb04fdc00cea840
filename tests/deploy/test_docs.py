"""The deployment docs say what the code does: the step counts of the paper's runs, and every
chart value they name exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from diffar.operator.runs import Run, planned_steps

from .conftest import CHART, ROOT, find_tool, load_yaml

DOCS = [ROOT / "docs" / n for n in ("install.md", "dashboards.md", "troubleshooting.md")]
VALUE_ROOTS = (
    "operator",
    "metrics",
    "dashboards",
    "pushgateway",
    "runDefaults",
    "rbac",
    "image",
    "trainingRuntime",
)


def value_paths(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out.add(path)
        if isinstance(v, dict):
            out |= value_paths(v, f"{path}.")
    return out


def test_docs_exist():
    for doc in DOCS:
        assert doc.is_file(), doc


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_chart_values_exist(doc):
    known = value_paths(load_yaml(CHART / "values.yaml"))
    text = doc.read_text()
    named = set(re.findall(rf"`((?:{'|'.join(VALUE_ROOTS)})\.[A-Za-z.]+)", text))
    named |= set(re.findall(rf"--set(?:-json)? '?((?:{'|'.join(VALUE_ROOTS)})\.[A-Za-z.]+)", text))
    assert named, doc.name
    assert named - known == set()


def test_install_step_table_matches_the_operator():
    text = (ROOT / "docs" / "install.md").read_text()
    rows = re.findall(
        r"^\| `([\w-]+\.yaml)`(?:, `([\w-]+\.yaml)`)? \|.*\| ([\d,]+)(?: / ([\d,]+))? \|$",
        text,
        re.M,
    )
    rows += re.findall(r"^\| `([\w-]+\.yaml)`, `([\w-]+\.yaml)` \|.*\| ([\d,]+) \(", text, re.M)
    checked = 0
    for first, second, steps, steps2 in [(*r, "") if len(r) == 3 else r for r in rows]:
        names = [first, second] if second else [first]
        counts = [steps, steps2 or steps]
        for name, count in zip(names, counts, strict=False):
            run = Run.from_body(load_yaml(ROOT / "examples" / name))
            assert planned_steps(run) == int(count.replace(",", "")), name
            checked += 1
    assert checked >= 8


# ---------------------------------------------------------------------------------------------
# Every command in a fenced block of README.md, docs/*.md and the chart's README works as
# written, by these rules (a command no rule covers fails the test, so a new doc is classified):
#
# - `diffar ...` is parsed by the real argument parser (options, choices, required arguments).
#   It is then run when it is fast and self-contained here (render, crds, --help, --version,
#   train --dry-run, data inspect/fit/compare of files that exist) and must exit 0. A usage
#   synopsis (`[--opt]`, `INPUT...`) is checked against the subcommand's --help: each option it
#   names exists. `diffar run X --local` trains for minutes: X is resolved by the local runner
#   (what it checks before training), not trained. Commands that train or evaluate (quickstart,
#   reproduce, eval, train without --dry-run), read s3:// or need a cluster (operator) are parsed
#   only; their inputs, when they are files of the repository, must exist.
# - `kubectl apply -f X` becomes `diffar render X` for a run manifest, or loads every CRD of a
#   folder; `kubectl create ...` runs with `--dry-run=client -o yaml`; `helm install ...` becomes
#   `helm template ...` (the same arguments). Verbs that need a live API server (get, describe,
#   logs, rollout, patch, delete, explain, wait) are checked to be kubectl verbs (`--help`);
#   `helm uninstall` likewise.
# - `make T` runs as `make -n T`; `torchrun ... -m diffar.operator.cli ARGS` parses ARGS as a
#   diffar command; `torchx run ... FILE:fn` needs FILE to define fn; `bash SCRIPT` needs SCRIPT;
#   `docker build/push` (no Docker engine here) needs each `--target` in the Dockerfile;
#   shell assignments, `export` and loop keywords are not commands.
# ---------------------------------------------------------------------------------------------


COMMAND_DOCS = sorted(
    [ROOT / "README.md", CHART / "README.md", *(ROOT / "docs").glob("*.md")], key=str
)
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
COMMANDS = {"diffar", "kubectl", "helm", "make", "torchrun", "torchx", "bash", "docker", "export"}
LIVE_KUBECTL = {"get", "describe", "logs", "rollout", "patch", "delete", "explain", "wait"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def doc_commands(path: Path) -> list[Command]:
    out: list[Command] = []
    text = path.read_text()
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        lang, body = m.group(1), m.group(2)
        start = text[: m.start()].count("\n") + 2
        if lang not in SHELL_LANGS:
            continue
        lines = body.splitlines()
        if lang == "console":
            lines = [ln[2:] if ln.startswith("$ ") else "" for ln in lines]
        first = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
        if lang == "" and first.split(" ", 1)[0] not in COMMANDS:
            continue  # an untyped block of output, a diagram or a layout
        pending, at = "", 0
        for i, ln in enumerate(lines):
            if not pending and ln[:1].isspace() and ln.strip().startswith(("[", "--")) and out:
                # an indented continuation of a usage synopsis (no backslash)
                last = out[-1]
                out[-1] = Command(last.doc, last.line, f"{last.text} {ln.strip()}")
                continue
            if not pending:
                at = start + i
            pending += ln.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            pending = strip_comment(pending)
            if pending.strip():
                rel = str(path.relative_to(ROOT))
                for part in split_commands(pending.strip()):
                    if part.strip():
                        out.append(Command(rel, at, part.strip()))
            pending = ""
    return out


def split_commands(line: str) -> list[str]:
    """The commands of a shell line: split at `;` and ` && ` outside quotes."""
    parts, quote, start, i = [], None, 0, 0
    while i < len(line):
        ch = line[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ";" or line.startswith(" && ", i):
            parts.append(line[start:i])
            i += 1 if ch == ";" else 4
            start = i
            continue
        i += 1
    return [*parts, line[start:]]


def strip_comment(line: str) -> str:
    """The line without a shell comment (a `#` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line


ALL_COMMANDS = [c for doc in COMMAND_DOCS for c in doc_commands(doc)]


def test_the_docs_have_commands_to_check():
    kinds = {c.argv[0] for c in ALL_COMMANDS if c.argv}
    assert {"diffar", "kubectl", "helm", "make"} <= kinds
    assert len(ALL_COMMANDS) >= 40, len(ALL_COMMANDS)


def sh(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def ok(cmd: list[str], what: Command, timeout: float = 120) -> subprocess.CompletedProcess:
    r = sh(cmd, timeout)
    assert r.returncode == 0, (
        f"{what}\n  checked as: {' '.join(cmd)}\n{r.stdout[-1500:]}{r.stderr[-1500:]}"
    )
    return r


DIFFAR = [sys.executable, "-m", "diffar.operator.cli"]
PLACEHOLDER = re.compile(r"^(\[.*|.*\.\.\.|[A-Z][A-Z_]*|\]|.*\]|.*[|].*)$")


def is_synopsis(args: list[str]) -> bool:
    return any(PLACEHOLDER.match(a) and not a.startswith("--") for a in args) or any(
        a.startswith("[") for a in args
    )


def check_diffar(args: list[str], cmd: Command) -> None:
    from diffar.operator.cli import build_parser

    sub = [a for a in args if not a.startswith("-")][:2]
    if is_synopsis(args):
        words = sub[:2] if sub and sub[0] == "data" else sub[:1]
        help_text = ok([*DIFFAR, *words, "--help"], cmd).stdout
        for flag in re.findall(r"--[a-z][a-z-]*", " ".join(args)):
            assert flag in help_text, f"{cmd}: {flag} is not an option of diffar {' '.join(words)}"
        return
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as e:
        if e.code == 0 and ("--help" in args or "--version" in args):
            return ok([*DIFFAR, *args], cmd) and None
        raise AssertionError(f"{cmd}: the parser refuses it") from None
    files = [a for a in args[1:] if re.search(r"\.(ya?ml|json|csv)$", a) and "*" not in a]
    local_files = [f for f in files if not f.startswith("s3://")]
    command = parsed.command
    if command in ("render", "crds") or (
        command == "train" and parsed.dry_run and Path(ROOT / parsed.config).is_file()
    ):
        ok([*DIFFAR, *args], cmd)
    elif command == "run":
        from diffar.operator.commands import load_manifest
        from diffar.operator.local.runner import resolve

        assert (ROOT / parsed.manifest).is_file(), f"{cmd}: {parsed.manifest} does not exist"
        manifest = load_manifest(str(ROOT / parsed.manifest))
        if manifest.get("kind") == "ScalingStudy":  # each child run, as `diffar run` plans them
            from diffar.operator.study import Study, plan

            for child in plan(Study.from_body(manifest), local=True):
                resolve(child.body, ROOT / "runs", processes=1)
        else:
            resolve(manifest, ROOT / "runs")
    elif command == "quickstart":
        assert (ROOT / parsed.examples / "ar.yaml").is_file(), cmd
    for f in local_files:
        repo_file = f.startswith(("examples/", "charts/", "crds/"))
        assert not repo_file or (ROOT / f).exists(), f"{cmd}: {f} does not exist"


def check_kubectl(args: list[str], cmd: Command) -> None:
    kubectl = find_tool("kubectl", "run: bash scripts/install-tools.sh")
    rest, i = [], 0
    while i < len(args):  # the namespace flag does not change what is checked offline
        if args[i] in ("-n", "--namespace"):
            i += 2
            continue
        rest.append(args[i])
        i += 1
    verb = rest[0]
    if verb == "apply":
        files = [rest[j + 1] for j, a in enumerate(rest) if a == "-f"]
        assert files, cmd
        for f in files:
            path = ROOT / f
            assert path.exists(), f"{cmd}: {f} does not exist"
            if path.is_dir():
                import yaml

                for y in sorted(path.glob("*.yaml")):
                    assert yaml.safe_load(y.read_text())["kind"] == "CustomResourceDefinition", y
            else:
                ok([*DIFFAR, "render", f], cmd)
    elif verb == "create":
        ok([kubectl, *args, "--dry-run=client", "-o", "yaml"], cmd)
    elif verb in LIVE_KUBECTL:
        ok([kubectl, verb, "--help"], cmd)
    else:
        raise AssertionError(f"{cmd}: no rule for kubectl {verb}")


def check_helm(args: list[str], cmd: Command, helm: str) -> None:
    if args[0] in ("install", "upgrade"):
        drop = {"--create-namespace", "--wait", "--atomic", "--reuse-values", "--install"}
        ok([helm, "template", *[a for a in args[1:] if a not in drop]], cmd)
    elif args[0] in ("template", "lint"):
        ok([helm, *args], cmd)
    elif args[0] == "uninstall":
        ok([helm, "uninstall", "--help"], cmd)
    else:
        raise AssertionError(f"{cmd}: no rule for helm {args[0]}")


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: f"{c.doc}:{c.line}")
def test_documented_command_works_as_written(cmd: Command, helm):
    argv = cmd.argv
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]  # VAR=value before a command, or alone
    if not argv or argv[0] in ("export", "for", "do", "done"):
        return
    head, args = argv[0], argv[1:]
    if head in ("diffar", ".venv/bin/diffar"):
        check_diffar(args, cmd)
    elif head == "kubectl":
        check_kubectl(args, cmd)
    elif head == "helm":
        check_helm(args, cmd, helm)
    elif head == "make":
        ok(["make", "-n", *args], cmd)
    elif head == "torchrun":
        check_diffar(args[args.index("diffar.operator.cli") + 1 :], cmd)
    elif head == "torchx":
        spec = next(a for a in args if ".py:" in a)
        file, fn = spec.split(":")
        assert f"def {fn}(" in (ROOT / file).read_text(), cmd
    elif head == "bash":
        assert (ROOT / args[0]).is_file(), f"{cmd}: {args[0]} does not exist"
    elif head == "docker":
        if "--target" in args:
            target = args[args.index("--target") + 1]
            dockerfile = (ROOT / "Dockerfile").read_text()
            targets = re.findall(r"^FROM \S+ AS (\S+)", dockerfile, re.M)
            wanted = ["operator", "trainer", "evaluator"] if target.startswith("$") else [target]
            assert set(wanted) <= set(targets), f"{cmd}: Dockerfile targets {targets}"
    else:
        raise AssertionError(f"{cmd}: no rule for {head!r}; add one to this test")


def test_a_broken_command_is_caught(helm):
    with pytest.raises(AssertionError):
        test_documented_command_works_as_written(
            Command("x.md", 1, "diffar train --config examples/ar-100m.yaml --dry-run"), helm
        )
    with pytest.raises(AssertionError):
        test_documented_command_works_as_written(
            Command("x.md", 1, "helm install diffar charts/diffar --set nosuch.value=1"), helm
        )
    with pytest.raises(AssertionError):
        test_documented_command_works_as_written(
            Command("x.md", 1, "diffar data prepare IN --out O [--no-such-flag]"), helm
        )


def chart_values_documented() -> list[str]:
    """Every value of values.yaml that carries a `# --` description, as a dotted path."""
    stack: list[str] = []
    pending, out = False, []
    for ln in (CHART / "values.yaml").read_text().splitlines():
        if re.match(r"^\s*# --", ln):
            pending = True
            continue
        m = re.match(r"^(\s*)([A-Za-z]\w*):", ln)
        if m:
            stack = [*stack[: len(m.group(1)) // 2], m.group(2)]
            if pending:
                out.append(".".join(stack))
            pending = False
    return out


def test_the_chart_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    values = chart_values_documented()
    assert len(values) >= 40
    missing = [v for v in values if f"| `{v}` |" not in readme]
    assert missing == []


def test_the_docs_tell_one_story():
    """Namespaces, images and datasets are named the same way everywhere."""
    docs = {p.name: p.read_text() for p in [*COMMAND_DOCS]}
    for name, text in docs.items():
        assert "helm install diffar charts/diffar -n diffar " not in text, name
        assert "fineweb-gpt2" not in text and "sotu-gpt2" not in text, name
    for name in ("README.md", "install.md", "operator.md"):
        assert "diffar-system" in docs[name] and "research" in docs[name], name
        assert "published" in docs[name], name  # no images are: build your own
    for example in (ROOT / "examples").glob("*.yaml"):
        text = example.read_text()
        assert "s3://diffar-data/c4-gpt2/" in text, example.name  # the dataset install.md creates
    assert "s3://diffar-data/c4-gpt2" in docs["install.md"]
