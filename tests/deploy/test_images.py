"""The Dockerfile, read: lints and checks that need no build (`make images-test` builds the three
images on stand-in bases and smoke-tests them: scripts/images/test_smoke.py).

- hadolint passes;
- defects a build on stand-in bases found, each kept out by a check here: flash-attn's
  architectures come from FLASH_ATTN_CUDA_ARCHS; no wheel or requirements file is copied into a
  layer (RUN --mount binds them); every `--no-build-isolation` build has setuptools and wheel;
  every pip that downloads can use the host's CA bundle (the optional `pip-ca` secret); buildah
  builds with the docker format (the OCI one drops SHELL);
- each final target (operator, trainer, evaluator) runs as a non-root user, carries the OCI
  labels, and has an entrypoint that is a real command of the package;
- every file the Dockerfile copies from the build context exists and .dockerignore lets it in;
- the per-image requirements are what images/lock.py makes from the pinned environment, and the
  operator's command needs none of the trainer's packages;
- the trainer entrypoint's torchrun line is the one the operator's PyTorchJob runs.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys

import pytest

from .conftest import ROOT, run

DOCKERFILE = ROOT / "Dockerfile"
TARGETS = ("operator", "trainer", "evaluator")
OCI_LABELS = (
    "title",
    "description",
    "source",
    "licenses",
    "version",
    "revision",
    "created",
)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            current = m.group(2) or m.group(1)
            out[current] = [(word, rest)]
        elif current is not None:
            out[current].append((word, rest))
    return out


def effective(stage: str, word: str) -> str | None:
    """The last value of an instruction in a stage, following FROM <stage> chains."""
    chain = stages()
    value = None
    seen = stage
    lineage = []
    while seen in chain:
        lineage.append(seen)
        base = chain[seen][0][1].split()[0]
        seen = base
    for name in reversed(lineage):
        for w, rest in chain[name]:
            if w == word:
                value = rest
    return value


def test_hadolint_passes(hadolint):
    run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)])


def test_hadolint_is_not_vacuous(hadolint, tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    proc = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_the_three_targets_exist():
    assert set(TARGETS) <= set(stages())


@pytest.mark.parametrize("target", TARGETS)
def test_targets_run_as_non_root_with_labels(target):
    user = effective(target, "USER")
    assert user and user.split(":")[0] not in ("0", "root"), user
    labels = " ".join(rest for w, rest in stages()[target] if w == "LABEL")
    for key in OCI_LABELS:
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_base_images_are_pinned():
    for word, rest in instructions():
        if word == "ARG" and rest.split("=")[0].endswith("_IMAGE"):
            image = rest.split("=", 1)[1]
            assert ":" in image and not image.endswith(":latest"), image
            assert re.search(r":\d", image), f"{image}: pin a version tag (or a digest)"


def _dockerignore_allows(path: str) -> bool:
    allowed = True
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
            for p in prefixes
        ):
            allowed = negate
    return allowed


def copied_sources() -> list[str]:
    out = []
    for word, rest in instructions():
        if word not in ("COPY", "ADD"):
            continue
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        if re.search(r"--from=", rest):
            continue
        out += args[:-1]
    return out


def test_every_copied_file_exists_and_is_in_the_context():
    sources = copied_sources()
    assert "images/trainer/entrypoint.sh" in sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: no such file"
        assert _dockerignore_allows(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"
        if path.is_dir():
            for f in path.rglob("*.py"):
                rel = f.relative_to(ROOT).as_posix()
                assert _dockerignore_allows(rel), rel
    # Nothing secret or bulky gets into the context.
    for rel in (".venv/bin/python", ".git/config", "tests/conftest.py", ".tools/bin/helm"):
        assert not _dockerignore_allows(rel), rel


def test_package_sources_are_copied():
    """The wheel stage copies every folder the package maps (pyproject's package-dir)."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    copied = {s.rstrip("/") for s in copied_sources()}
    assert dirs <= copied
    assert "pyproject.toml" in copied and pyproject["project"]["readme"] in copied


def _exec_form(value: str) -> list[str]:
    import json

    return json.loads(value)


def _diffar_commands() -> set[str]:
    from diffar.operator.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(sub.choices)


@pytest.mark.parametrize("target", TARGETS)
def test_entrypoints_are_real_commands(target):
    entrypoint = _exec_form(effective(target, "ENTRYPOINT"))
    cmd = _exec_form(effective(target, "CMD"))
    commands = _diffar_commands()
    if entrypoint == ["diffar"]:
        assert cmd[0] in commands, cmd
        # The default arguments parse.
        from diffar.operator.cli import build_parser

        build_parser().parse_args(cmd)
    else:
        assert entrypoint == ["diffar-trainer"]
        copies = [rest for w, rest in stages()[target] if w == "COPY"]
        assert any(
            "images/trainer/entrypoint.sh /usr/local/bin/diffar-trainer" in c for c in copies
        )
        assert cmd[0] in commands


def test_pyproject_script_is_the_cli():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["diffar"] == "diffar.operator.cli:main"


def test_entrypoint_script_is_valid_bash_and_matches_the_pytorchjob():
    script = ROOT / "images" / "trainer" / "entrypoint.sh"
    run(["bash", "-n", str(script)])
    assert script.stat().st_mode & 0o111
    from diffar.operator.builders import trainer_command

    command, args = trainer_command()
    text = script.read_text()
    assert command == ["torchrun"] and "exec torchrun" in text
    # The builder's $(PET_X) references are the script's ${PET_X} ones, flag for flag.
    for arg in args:
        m = re.match(r"(--[\w-]+)=\$\((PET_\w+)\)", arg)
        if m:
            assert f'{m.group(1)}="${{{m.group(2)}}}"' in text, arg
    assert "-m diffar.operator.cli" in text
    i = args.index("-m")
    assert args[i + 1] == "diffar.operator.cli" and args[i + 2] == "train"


def test_trainer_entrypoint_runs_diffar_outside_a_pytorchjob(tmp_path):
    """Without PET_* it execs `diffar ARGS`; with PET_NNODES but no rank it fails loudly."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("diffar", "torchrun"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    script = str(ROOT / "images" / "trainer" / "entrypoint.sh")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    out = subprocess.run(
        ["bash", script, "data", "inspect", "x"], env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "diffar data inspect x"
    out = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "diffar train --config /etc/diffar/train.json"
    pet = {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "8",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "m",
        "PET_MASTER_PORT": "23456",
    }
    out = subprocess.run(
        ["bash", script, "train", "--config", "c.json"],
        env={**env, **pet},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == (
        "torchrun --nnodes=2 --nproc-per-node=8 --node-rank=1 --master-addr=m "
        "--master-port=23456 -m diffar.operator.cli train --config c.json"
    )
    del pet["PET_NODE_RANK"]
    out = subprocess.run(
        ["bash", script, "train"], env={**env, **pet}, capture_output=True, text=True
    )
    assert out.returncode == 2 and "PET_NODE_RANK" in out.stderr


def test_requirements_are_locked_to_the_pinned_environment():
    run([sys.executable, str(ROOT / "images" / "lock.py"), "--check"])
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            constraints[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    for image in TARGETS:
        for line in (ROOT / "images" / image / "requirements.txt").read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            name, version = line.split("==")
            # A package constraints.txt lacks (a dependency of a new dependency) is pinned to
            # the virtualenv's version by lock.py; where constraints.txt has it, they agree.
            if name in constraints:
                assert constraints[name] == version, (
                    f"{image}: {name}=={version}, constraints say {constraints[name]}"
                )


def test_operator_image_needs_no_trainer_packages():
    """`diffar operator` and the builders import without torch, DeepSpeed, numpy, boto3..."""
    operator_reqs = {
        line.split("==")[0]
        for line in (ROOT / "images" / "operator" / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert "torch" not in operator_reqs and "deepspeed" not in operator_reqs
    code = """
import sys
BLOCKED = {"torch", "deepspeed", "numpy", "boto3", "botocore", "scipy", "matplotlib", "pyarrow",
           "tiktoken", "torchx", "flash_attn", "jsonschema", "celpy"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked in the operator image: " + name)
sys.meta_path.insert(0, Block())
import yaml
from diffar.operator.cli import build_parser, main
build_parser().parse_args(["operator", "--standalone"])
import diffar.operator.handlers
from diffar.operator.builders import render
from diffar.operator.runs import Run, Settings, validate
run = Run.from_body(yaml.safe_load(open(sys.argv[1])))
assert validate(run) == [], validate(run)
assert [o["kind"] for o in render(run, Settings())] == ["ConfigMap", "PyTorchJob", "Job"]
print("ok")
"""
    out = run([sys.executable, "-c", code, str(ROOT / "examples" / "diffusion-100m.yaml")])
    assert out.stdout.strip() == "ok"


def _imports(path) -> tuple[set[str], set[str]]:
    """(third-party top-level imports, diffar modules imported) of one source file."""
    import ast

    tree = ast.parse(path.read_text())
    top, ours = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if name.startswith("diffar."):
                ours.add(name)
            elif name.split(".")[0] not in sys.stdlib_module_names and name != "__future__":
                top.add(name.split(".")[0])
    return top, ours


def _closure(files) -> set[str]:
    """Third-party imports of files and of every diffar module they import, transitively."""
    folders = {"diffar.trainer": "trainer", "diffar.evaluator": "evaluator"}
    todo, seen, out = list(files), set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        top, ours = _imports(path)
        out |= top
        for module in ours:
            package, _, rest = module.rpartition(".")
            if module in folders:  # `from diffar.trainer import x`: x is a module
                continue
            if package in folders and (ROOT / folders[package] / f"{rest}.py").is_file():
                todo.append(ROOT / folders[package] / f"{rest}.py")
    return out


# Imports an image may lack: provided by the base image, installed separately, or optional
# (guarded by `except ImportError`) or only used outside the image (the local torchx launcher).
NOT_FROM_REQUIREMENTS = {
    "trainer": {"torch", "flash_attn", "torchx"},
    "evaluator": {"torch", "threadpoolctl", "flash_attn"},
}


@pytest.mark.parametrize("image", NOT_FROM_REQUIREMENTS)
def test_image_requirements_cover_the_code(image):
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    files = sorted((ROOT / image).glob("*.py"))
    imports = _closure(files) - NOT_FROM_REQUIREMENTS[image]
    reqs = {
        line.split("==")[0]
        for line in (ROOT / "images" / image / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    missing = {}
    for name in imports:
        candidates = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(name, [name])}
        if not candidates & reqs:
            missing[name] = sorted(candidates)
    assert missing == {}, "run images/lock.py after adding these to its IMAGES table"


# --- defects found by building on stand-in bases (issue 17) ----------------------------------

FINAL_STAGES = ("operator", "runtime-base", "trainer", "evaluator")


def _runs(stage: str) -> list[str]:
    return [rest for w, rest in stages()[stage] if w == "RUN"]


def _env(stage: str) -> dict[str, str]:
    env = {}
    for word, rest in stages()[stage]:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_flash_attn_is_built_for_sm90_only():
    """flash-attn 2.8's setup.py reads FLASH_ATTN_CUDA_ARCHS (default 80;90;100;120), not
    TORCH_CUDA_ARCH_LIST; the docs say which variable does what."""
    env = _env("flash-attn")
    assert env["FLASH_ATTN_CUDA_ARCHS"] == "90"
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert env["FLASH_ATTENTION_FORCE_BUILD"] == "TRUE"
    version = [r for w, r in stages()["flash-attn"] if w == "ARG" and "FLASH_ATTN_VERSION" in r]
    assert version == ["FLASH_ATTN_VERSION=2.8.3"], "re-check the variable for another version"
    # The stand-in switch defaults to a real compile.
    assert "FLASH_ATTENTION_SKIP_CUDA_BUILD=FALSE" in [
        r for w, r in stages()["flash-attn"] if w == "ARG"
    ]
    readme = (ROOT / "images" / "README.md").read_text()
    assert "FLASH_ATTN_CUDA_ARCHS" in readme
    assert not re.search(r"TORCH_CUDA_ARCH_LIST[^.]*sm_90 only", readme + DOCKERFILE.read_text())


def test_no_wheel_is_copied_into_a_layer():
    """Wheels reach the final stages through RUN --mount=type=bind only: a file copied in and
    deleted by a later RUN stays in the earlier layer."""
    for stage in FINAL_STAGES:
        for word, rest in stages()[stage]:
            if word in ("COPY", "ADD"):
                assert "--from=" not in rest, f"{stage}: {word} {rest}"
                assert ".whl" not in rest and "/tmp" not in rest, f"{stage}: {word} {rest}"
        for run_ in _runs(stage):
            assert "rm -rf /tmp" not in run_, f"{stage}: cleanup means something was copied in"
            for path in re.findall(r"(/tmp/\w+)/\S*\.whl", run_):
                assert f"target={path}" in run_, f"{stage}: {path} is not a bind mount"


def test_no_build_isolation_has_its_build_requirements():
    """`pip wheel --no-build-isolation` builds with what the stage has: flash-attn's setup.py
    imports setuptools and wheel (and packaging, psutil, ninja), so they are installed first."""
    found = 0
    for stage in stages():
        installed = ""
        for run_ in _runs(stage):
            if "--no-build-isolation" in run_:
                found += 1
                before = installed + run_.split("--no-build-isolation")[0]
                for package in ("setuptools==", "wheel=="):
                    assert package in before, f"{stage}: {package[:-2]} not installed first"
                if "flash-attn" in run_:
                    for package in ("packaging==", "psutil==", "ninja=="):
                        assert package in before, f"{stage}: {package[:-2]} not installed first"
            installed += run_
    assert found == 2  # the diffar wheel and flash-attn


def _pip_downloads(run_: str) -> bool:
    """Whether a RUN has a pip command that reaches an index (not only local files with --no-deps)."""
    for segment in re.split(r"&&|;", run_):
        words = shlex.split(segment.replace("\\", " "))
        if "pip" not in words:
            continue
        words = words[words.index("pip") + 1 :]
        if not words or words[0] not in ("install", "wheel"):
            continue
        if "--no-deps" not in words or "-r" in words:
            return True
        takes_value = {"--wheel-dir", "-r", "--find-links", "-c"}
        args = [
            w
            for i, w in enumerate(words[1:], 1)
            if not w.startswith("-") and words[i - 1] not in takes_value
        ]
        if any(not a.startswith(("/", ".")) for a in args):
            return True
    return False


def test_pip_that_downloads_can_use_the_host_ca_bundle():
    """Every RUN whose pip reaches an index mounts the optional `pip-ca` secret and points pip at
    it when present; the build scripts pass the host's bundle."""
    downloads = 0
    for stage in stages():
        for run_ in _runs(stage):
            if _pip_downloads(run_):
                downloads += 1
                assert "--mount=type=secret,id=pip-ca" in run_, run_
                assert "PIP_CERT=/run/secrets/pip-ca" in run_, run_
    assert downloads == 5  # wheel (setuptools), operator, flash-attn, trainer, evaluator
    build = (ROOT / "scripts" / "images" / "build.sh").read_text()
    assert '--secret "id=pip-ca,src=$ca"' in build
    assert "--secret id=pip-ca" in (ROOT / "Makefile").read_text()


def test_buildah_builds_use_the_docker_format():
    """The OCI image format has no SHELL: buildah drops runtime-base's bash -o pipefail."""
    assert any(w == "SHELL" for w, _ in stages()["runtime-base"])
    build = (ROOT / "scripts" / "images" / "build.sh").read_text()
    assert "--format docker" in build and "--pull=never" in build
    assert "--isolation chroot" in build
    makefile = (ROOT / "Makefile").read_text()
    for line in makefile.splitlines():
        if "buildah build" in line:
            assert "--format docker" in line and "STAGE_NONCE=$$(date" in line, line
    # buildah 1.28 mounts a cached stage empty: every buildah build gets a new STAGE_NONCE, and
    # the stages that RUN --mount reads declare it.
    assert 'buildah build "${args[@]}" --build-arg "STAGE_NONCE=$(date +%s%N)"' in build
    mounted = {
        m for r in (rest for _, rest in instructions()) for m in re.findall(r"from=([\w-]+)", r)
    }
    assert mounted == {"wheel", "flash-attn"}
    for stage in mounted:
        assert "STAGE_NONCE=" in [r for w, r in stages()[stage] if w == "ARG"], stage


def test_stand_ins_never_take_upstream_names():
    """The stand-in bases are localhost/diffar-standin/*: a build that pulled the real base would
    never silently get a stand-in, and a stand-in is never mistaken for the real one."""
    text = (ROOT / "scripts" / "images" / "standins.sh").read_text()
    assert "buildah tag" not in text
    names = re.findall(r'(\w+_IMAGE)="([^"]+)"', text)
    assert {n for n, _ in names} == {"PYTHON_IMAGE", "TORCH_IMAGE"}
    for _, name in names:
        assert name.startswith("localhost/diffar-standin/"), name


def test_pip_download_classifier():
    """The CA-bundle check above is only as good as its idea of which pip reaches an index."""
    assert _pip_downloads("pip install --no-cache-dir -r /usr/local/share/diffar/requirements.txt")
    assert _pip_downloads("pip install --no-cache-dir setuptools==84.2.1 wheel==0.45.1")
    assert _pip_downloads(
        'x && pip wheel --no-deps --no-build-isolation --wheel-dir /wheels "flash-attn==2.8.3"'
    )
    assert not _pip_downloads("pip install --no-cache-dir --no-deps /tmp/dist/diffar-*.whl")
    assert not _pip_downloads("pip wheel --no-cache-dir --no-deps --no-build-isolation -w /d .")
    assert not _pip_downloads("useradd --uid 10001 diffar")
