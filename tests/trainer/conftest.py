import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import markov_tokens, write_dataset

VOCAB = 128


@pytest.fixture(scope="session")
def markov_splits(tmp_path_factory) -> tuple[Path, Path]:
    tokens = markov_tokens(24_000, VOCAB)  # one chain: validation follows the same process
    root = tmp_path_factory.mktemp("data")
    return (
        write_dataset(root / "train", tokens[:20_000], VOCAB),
        write_dataset(root / "val", tokens[20_000:], VOCAB),
    )


@pytest.fixture(scope="session")
def markov_dataset(markov_splits) -> Path:
    return markov_splits[0]


@pytest.fixture
def write_config(tmp_path, markov_dataset):
    def write(**overrides) -> Path:
        cfg = {
            "name": "test",
            "objective": "ar",
            "model": {"preset": "nano", "seq_len": 32, "vocab_size": VOCAB, "dropout": 0.0},
            "data": {"train_uri": str(markov_dataset)},
            "epochs": 4,
            "global_batch": 16,
            "micro_batch": 8,
            "optim": {"lr": 3e-3, "min_lr": 3e-4},
            "metrics": {"port": None, "log_interval": 10, "log_file": str(tmp_path / "loss.jsonl")},
        }
        for key, value in overrides.items():
            node = cfg
            *parents, leaf = key.split("__")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write
