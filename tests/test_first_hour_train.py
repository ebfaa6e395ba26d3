"""The first hour of a new user with the training, embedding and export command lines (issue 26): each rough edge
met through the CLI with its default options, and the Python API's run outputs."""
import json
import re
from pathlib import Path

import pytest
import torch

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.train.cli import EXAMPLES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = dict(embed_dim=32, depth=1, num_heads=2, frames=64, decoder_embed_dim=32, decoder_depth=1,
                decoder_num_heads=2)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith("error: "), err
    return err


# ------------------------------------------------------------------------------------------------ --help
def _help_texts() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "pretrain" in a.choices)
    return [parser.format_help(), *(p.format_help() for p in sub.choices.values())]


def test_help_names_no_issue_numbers():
    for text in _help_texts():
        assert not re.search(r"(?i)\bissue \d+", text), re.search(r"(?i).{40}\bissue \d+.{20}", text)


def _paper_recipe(text: str) -> dict[str, str]:
    """The options of the paper's fine-tuning recipe as a text shows them: ``{"--patchout": "200", ...}``."""
    flags = re.findall(r"(--[a-z-]+)(?:\s+(?!--)([\w.]+))?", text)
    keep = {"--pool", "--head-init", "--no-refit-head", "--layer-decay", "--drop-path", "--freq-mask", "--time-mask",
            "--mixup", "--patchout", "--label-smoothing"}
    return {f: v for f, v in flags if f in keep}


def test_help_and_docs_give_the_same_paper_recipe_as_docs_maskspec():
    block = EXAMPLES.split("# the fine-tuning recipe of the paper")[1].split("\n  #")[0]
    docs = (ROOT / "docs" / "TRAINING.md").read_text().split("The paper's recipe:")[1].split("`,")[0]
    in_help, in_docs = _paper_recipe(block.replace("\\\n", " ")), _paper_recipe(docs)
    assert in_help == in_docs, (in_help, in_docs)
    # docs/MASKSPEC.md: "unstructured patchout (e.g. 200 of 496 tokens dropped in training)", drop path 0.1, ...
    paper = (ROOT / "docs" / "MASKSPEC.md").read_text()
    assert f"{in_help['--patchout']} of 496 tokens" in paper and "drop path 0.1" in paper
    assert "frequency mask 48" in paper and "time mask 192" in paper and "label smoothing 0.1" in paper


# ------------------------------------------------------------------------------------------------ devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_on_a_cpu_machine_is_one_error_line_with_exit_2(capsys):
    assert main(["pretrain", "--data", "synthetic:8", "--device", "cuda"]) == 2
    assert _one_error_line(capsys) == ("error: --device cuda: CUDA is not available on this machine (use --device cpu "
                                       "or auto)")


# ------------------------------------------------------------------------------------------------ reports
SMALL = ["--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2", "--decoder-dim", "32",
         "--decoder-depth", "1", "--decoder-heads", "2", "--clip-seconds", "0.64", "--quiet"]


def test_the_front_end_report_says_torch_is_the_default(tmp_path, capsys):
    assert main(["pretrain", "--data", "synthetic:8", "--steps", "1", "--batch-size", "4", *SMALL,
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "front end: torch (the default --frontend torch; --frontend auto or dali to use DALI)" in out, out
    assert "asked for" not in out


def test_eval_on_a_pretraining_checkpoint_says_to_fine_tune_it_first(tmp_path, capsys):
    Model(ModelConfig(**TINY_CFG)).save_pretrained(tmp_path / "pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "pt"), "--data", "synthetic:8"]) == 2
    err = _one_error_line(capsys)
    assert f"{tmp_path / 'pt'}: a pre-training checkpoint (no classifier head): fine-tune it first" in err, err
    assert "num_classes" not in err


@pytest.mark.parametrize("tool", ["embed", "export"])
def test_embed_and_export_name_a_malformed_config_json(tmp_path, capsys, tool):
    Classifier(ModelConfig(**TINY_CFG), 3).save_pretrained(tmp_path / "clf")
    cfg = tmp_path / "clf" / "config.json"
    cfg.write_text('{"model_type": "classifier", ')
    if tool == "embed":
        from maskspec_fast.embed import main as tool_main

        rc = tool_main(["--checkpoint", str(tmp_path / "clf"), "--data", "synthetic:2", "--out",
                        str(tmp_path / "e.npz"), "--quiet"])
    else:
        from maskspec_fast.export import main as tool_main

        rc = tool_main([str(tmp_path / "clf"), str(tmp_path / "m.pt2")])
    assert rc == 2
    err = _one_error_line(capsys)
    assert err.startswith(f"error: {cfg}: not valid JSON"), err


# ------------------------------------------------------------------------------------------------ Python API
def test_python_train_writes_config_and_summary_json(tmp_path):
    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.logmel import LogMel
    from maskspec_fast.train import PretrainTask, TrainConfig, train

    # workers=0: what is checked is the files the trainer writes; a loader process would only add start-up time
    config = TrainConfig(out=str(tmp_path), steps=2, batch_size=4, quiet=True, workers=0)
    result = train(PretrainTask(Model(ModelConfig(**TINY_CFG))), SyntheticSounds(8, clip_seconds=0.64), config,
                   LogMel(), torch.device("cpu"), log=lambda *a: None)
    settings = json.loads((tmp_path / "config.json").read_text())
    assert settings["task"] == "pretrain" and settings["train"] == json.loads(json.dumps(config.to_dict()))
    assert settings["model"]["frames"] == 64 and settings["clips"] == 8
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == result["steps"] == 2 and "losses" not in summary


def _finetune_source():
    from maskspec_fast.data import SyntheticSounds

    return SyntheticSounds(24, clip_seconds=0.64, train=True)


def test_finetune_takes_an_explicit_train_config_batch_size(tmp_path):
    from maskspec_fast.train import FinetuneRecipe, TrainConfig, finetune

    recipe = FinetuneRecipe(val_fraction=0.0, head_init="zero", refit_head=False, pool="mean")
    # workers=0: only the batch size's way into the run is checked; a loader process would only add start-up time
    run = TrainConfig(out=str(tmp_path / "a"), batch_size=8, quiet=True, workers=0, picture_every=0)
    source = _finetune_source()
    clf = Classifier(ModelConfig(**TINY_CFG), source.num_classes)
    result = finetune(clf, source, recipe, run, steps=1, log=lambda *a: None)
    assert result.summary["global_batch"] == 8 and result.settings["train"]["batch_size"] == 8
    assert result.settings["schedule"]["steps_per_epoch"] == 24 // 8  # the schedule is computed from it
    with pytest.raises(ValueError, match=r"TrainConfig\(batch_size=8\) and FinetuneRecipe\(batch_size=16\) "
                                         r"disagree: set one of them"):
        finetune(clf, _finetune_source(), recipe.replace(batch_size=16), run.replace(out=str(tmp_path / "b")),
                 steps=1, log=lambda *a: None)


def test_finetune_init_takes_the_clip_length_from_the_checkpoint_and_records_the_steps_it_runs(tmp_path, capsys):
    """A checkpoint trained on 64 frames (0.64 s): synthetic data default to 2.56 s, which used to make the
    fine-tuned model 256 frames long. And config.json recorded the recipe's 15 epochs of steps for a 3-step run."""
    Model(ModelConfig(**TINY_CFG)).save_pretrained(tmp_path / "pt")
    base = ["finetune", "--init", str(tmp_path / "pt"), "--data", "synthetic:40", "--steps", "3", "--batch-size",
            "8", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    settings = json.loads((tmp_path / "a" / "config.json").read_text())
    assert settings["model"]["frames"] == 64
    assert settings["schedule"]["steps"] == settings["train"]["steps"] == 3
    assert Classifier.from_pretrained(tmp_path / "a" / "final").config.frames == 64
    capsys.readouterr()
    assert main([*base, "--clip-seconds", "1.28", "--out", str(tmp_path / "b")]) == 0  # asked for: it wins
    out = capsys.readouterr().out
    assert "note: --clip-seconds 1.28 gives 128 frames" in out and "trained on 64 (0.64 s)" in out, out
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model"]["frames"] == 128
