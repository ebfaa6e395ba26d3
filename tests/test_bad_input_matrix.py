"""One bad file among good ones, met the way a user meets it: every command x every worker setting x every kind of
bad file ends in one line naming the file, with the documented exit status, and never a traceback.

Matrix: {workers 0, the command's default, 2} x {corrupt, empty, too short, NaN, non-regular (a FIFO)} x {pretrain,
finetune, eval, embed, prepare}. The default worker count is exercised by NOT passing the option (``None`` below),
so a change of default is tested as users get it. Why the matrix exists: a DataLoader worker re-raised the package's
``AudioFileError`` as a plain ``RuntimeError`` (a 60-line traceback, exit 1) while every bad-file test ran with
``--workers 0``.

Documented outcomes (docs/DATA.md, docs/TRAINING.md, the CLIs' ``--help``):
* ``train pretrain|finetune|eval``: exit 2, one ``error: <path>: <problem>`` line;
* ``embed``: exit 3, the file named with its problem under "skipped N file(s)"; the good files are embedded;
* ``prepare``: exit 0, the bad clip left out, named in the summary line and in ``bad_files.csv``.
"""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from maskspec_fast import Classifier, ModelConfig

RATE = 32000
SECONDS = 0.32
SMALL = ["--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2"]
QUIET = ["--clip-seconds", str(SECONDS), "--quiet", "--threads", "2"]
NO_PICTURES = ["--picture-every", "0"]
BAD_KINDS = ("corrupt", "empty", "too_short", "nan", "fifo")
COMMANDS = ("pretrain", "finetune", "eval", "embed", "prepare")
WORKERS = (0, None, 2)  # None: the option left out (the command's default)


def _write_bad(path, kind: str) -> None:
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + os.urandom(200))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "too_short":  # 100 samples: less than one 16-frame patch
        sf.write(path, np.zeros(100, np.float32), RATE, subtype="FLOAT")
    elif kind == "nan":
        x = np.random.default_rng(0).uniform(-0.5, 0.5, int(SECONDS * RATE)).astype(np.float32)
        x[100] = np.nan
        sf.write(path, x, RATE, subtype="FLOAT")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        raise ValueError(kind)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 2-class classifier of the small size every command here runs (what `eval` and `embed` load)."""
    root = tmp_path_factory.mktemp("clf")
    torch.manual_seed(0)
    frames = 32  # 0.32 s at a 10 ms hop
    Classifier(ModelConfig.from_preset("tiny", frames=frames, embed_dim=32, depth=1, num_heads=2), 2).save_pretrained(
        root / "clf")
    return root / "clf"


def _folder(tmp_path, kind: str):
    """classes:ROOT with 3 good clips in each of two classes and one bad file of ``kind`` in class a."""
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for k in range(3):
            sf.write(tmp_path / "data" / c / f"{c}{k}.wav",
                     rng.uniform(-0.3, 0.3, int(SECONDS * RATE)).astype(np.float32), RATE, subtype="FLOAT")
    bad = tmp_path / "data" / "a" / f"bad_{kind}.wav"
    _write_bad(bad, kind)
    return tmp_path / "data", bad


def _argv(command: str, root, out, workers, checkpoint) -> list[str]:
    data = f"classes:{root}"
    w = [] if workers is None else (["--num-workers", str(workers)] if command == "embed" else ["--workers", str(workers)])
    if command == "pretrain":  # batch = every clip: the bad one is drawn in the one step
        return ["-m", "maskspec_fast.train", "pretrain", "--data", data, "--steps", "1", "--batch-size", "7",
                "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2", "--out", str(out),
                *SMALL, *QUIET, *NO_PICTURES, *w]
    if command == "finetune":  # the bad clip is in the fit split (drawn in an epoch) or the validation split
        return ["-m", "maskspec_fast.train", "finetune", "--data", data, "--steps", "2", "--batch-size", "6",
                "--out", str(out), *SMALL, *QUIET, *NO_PICTURES, *w]
    if command == "eval":
        return ["-m", "maskspec_fast.train", "eval", "--checkpoint", str(checkpoint), "--data", data, *QUIET, *w]
    if command == "embed":
        return ["-m", "maskspec_fast.embed", "--checkpoint", str(checkpoint), "--data", data,
                "--out", str(out / "emb.npz"), "--quiet", *w]
    return ["-m", "maskspec_fast.data", "prepare", data, str(out), "--quiet", *w]


def _run(argv: list[str], capfd, in_process: bool) -> subprocess.CompletedProcess:
    """The command as a user runs it (``python -m ...``), or, to keep the matrix's run time down, its ``main()``
    called in this process (the same argument parsing, error handling and DataLoader workers; an exception that
    escapes ``main`` fails the test with its traceback)."""
    if not in_process:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=600, env=env)
    import importlib

    module = argv[1] if argv[1] != "maskspec_fast.data" else "maskspec_fast.data.__main__"
    main = importlib.import_module(module if module != "maskspec_fast.train" else "maskspec_fast.train.cli").main
    capfd.readouterr()
    code = main(argv[2:])
    got = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, got.out, got.err)


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("workers", WORKERS, ids=lambda w: "default" if w is None else f"w{w}")
@pytest.mark.parametrize("command", COMMANDS)
def test_one_bad_file_is_one_line(tmp_path, capfd, checkpoint, command, workers, kind):
    root, bad = _folder(tmp_path, kind)
    out = tmp_path / "out"
    out.mkdir()
    # the default column runs the real `python -m` process; 0 and 2 workers call main() here (faster)
    run = _run(_argv(command, root, out, workers, checkpoint), capfd, in_process=workers is not None)
    err = run.stderr
    assert "Traceback" not in err, err[-3000:]
    if command in ("pretrain", "finetune", "eval"):
        assert run.returncode == 2, err[-3000:]
        lines = [ln for ln in err.splitlines() if "error:" in ln]
        assert len(lines) == 1 and str(bad) in lines[0], err[-3000:]
    elif command == "embed":
        assert run.returncode == 3, err[-3000:]
        assert any(str(bad) in ln for ln in err.splitlines()), err[-3000:]
        assert len(np.load(out / "emb.npz", allow_pickle=False)["paths"]) == 6  # the good files, each once
    else:
        assert run.returncode == 0, err[-3000:]
        summary = [ln for ln in (run.stdout + err).splitlines() if "bad clip(s) left out" in ln]
        assert len(summary) == 1 and str(bad) in summary[0], run.stdout + err
        with open(out / "bad_files.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [r["source"] for r in rows] == [str(bad)]
