"""Teachers users already have: load options of ensdist-memoize, their dictionary compared by
content, their teacher-forced accuracy checked and recorded; checkpoint errors in one line."""

import os
import shutil

import numpy as np
import pytest
import torch

from ensdist_fairseq.checkpoints.checks import check_ensemble
from ensdist_fairseq.cli.memoize import main
from ensdist_fairseq.errors import EnsdistError
from ensdist_fairseq.store.format import StoreReader

pytestmark = pytest.mark.slow  # uses the tiny trained checkpoints


def _memoize(data, paths, output, *extra):
    argv = [data, "--path", ":".join(paths), "--output", str(output), "--topk", "4", "--cpu"]
    return main([*argv, "--split", "valid", *extra])


def _one_error(capsys):
    err = [x for x in capsys.readouterr().err.splitlines() if not x.startswith("ensdist-")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0][len("error: ") :]


def _swapped_dict(src, dst):
    with open(src) as f:
        lines = f.readlines()
    lines[5], lines[6] = lines[6], lines[5]
    with open(dst, "w") as f:
        f.writelines(lines)
    return lines[5].split()[0], lines[6].split()[0]


def test_teacher_dict_is_compared_by_content(tiny_data, tiny_checkpoints, tmp_path, capsys):
    swapped = tmp_path / "dict.de.txt"
    a, b = _swapped_dict(os.path.join(tiny_data, "dict.de.txt"), swapped)
    out = tmp_path / "t.h5"
    assert _memoize(tiny_data, tiny_checkpoints, out, "--teacher-dict", str(swapped)) == 1
    line = _one_error(capsys)
    assert line.startswith(f"--teacher-dict {swapped}: the dictionary of ") and "line 6" in line
    assert repr(b) in line and repr(a) in line and not out.exists()
    # the same file as the data's: accepted
    same = os.path.join(tiny_data, "dict.de.txt")
    check_ensemble(tiny_checkpoints, tiny_data, [same])
    # a pretrained model's dictionary shipped beside the checkpoint is found by itself
    shipped = tmp_path / "pretrained"
    shipped.mkdir()
    shutil.copy(tiny_checkpoints[0], shipped / "model.pt")
    shutil.copy(swapped, shipped / "dict.de.txt")
    with pytest.raises(EnsdistError, match=r"pretrained/dict.de.txt: the dictionary of .*line 6"):
        check_ensemble([str(shipped / "model.pt")], tiny_data)


def _independent_accuracy(data, paths, split="valid"):
    """argmax of the mean of the members' softmax, from fairseq's own ensemble loader."""
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        paths, arg_overrides={"data": data}
    )
    task.load_dataset(split)
    ds = task.dataset(split)
    correct = total = 0
    counts = {}
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds.collater([ds[i]])
            probs = sum(
                torch.softmax(m.eval()(**s["net_input"])[0].double(), -1) for m in models
            ) / len(models)
            t = s["target"][0]
            correct += int((probs[0].argmax(-1) == t).sum())
            total += len(t)
            for x in t.tolist():
                counts[x] = counts.get(x, 0) + 1
    return correct / total, max(counts.values()) / total


def test_accuracy_is_recorded_in_the_store(tiny_data, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "t.h5"
    assert _memoize(tiny_data, tiny_checkpoints, out, "--model-overrides", "{'dropout': 0.3}") == 0
    recorded = StoreReader(str(out)).provenance.teacher_accuracy
    accuracy, _unigram = _independent_accuracy(tiny_data, tiny_checkpoints)
    assert recorded == pytest.approx(accuracy, abs=1e-9)
    assert "teacher-forced accuracy on the first 40 sentences" in capsys.readouterr().err


def _scrambled(src, dst):
    """A teacher whose output rows are those of other tokens: another dictionary's ids."""
    state = torch.load(src, weights_only=True)
    w = state["model"]["decoder.embed_tokens.weight"]
    perm = torch.roll(torch.arange(len(w)), 1)
    for k in ("decoder.embed_tokens.weight", "encoder.embed_tokens.weight"):
        state["model"][k] = state["model"][k][perm]
    if "decoder.output_projection.weight" in state["model"]:
        state["model"]["decoder.output_projection.weight"] = w[perm]
    torch.save(state, dst)
    return str(dst)


def test_teachers_worse_than_a_constant_guess_are_refused(
    tiny_data, tiny_checkpoints, tmp_path, capsys
):
    bad = _scrambled(tiny_checkpoints[0], tmp_path / "scrambled.pt")
    accuracy, unigram = _independent_accuracy(tiny_data, [bad])
    assert accuracy < unigram  # the premise: no better than always the most frequent token
    out = tmp_path / "t.h5"
    assert _memoize(tiny_data, [bad], out) == 1
    line = _one_error(capsys)
    assert (
        line.startswith("--path: the teachers' accuracy on 'valid'")
        and "--allow-low-accuracy" in line
    )
    assert f"{100 * accuracy:.2f}%" in line and f"{100 * unigram:.2f}%" in line
    assert not out.exists()
    assert _memoize(tiny_data, [bad], out, "--allow-low-accuracy") == 0
    assert StoreReader(str(out)).provenance.teacher_accuracy == pytest.approx(accuracy, abs=1e-9)


def test_load_options_fail_in_one_line(tiny_data, tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "t.h5"
    assert _memoize(tiny_data, tiny_checkpoints, out, "--fp16") == 1
    assert _one_error(capsys) == "--fp16: needs a GPU (CUDA is not available or --cpu)"
    assert _memoize(tiny_data, tiny_checkpoints, out, "--user-dir", str(tmp_path / "no")) == 1
    assert _one_error(capsys) == f"--user-dir {tmp_path / 'no'}: directory not found"
    assert _memoize(tiny_data, tiny_checkpoints, out, "--model-overrides", "[1]") == 2
    assert _one_error(capsys).startswith("argument --model-overrides: expected a dict")
    assert _memoize(tiny_data, tiny_checkpoints, out, "--fp16", "--bf16") == 2
    capsys.readouterr()


def test_checkpoint_errors_name_the_file(tiny_data, tiny_checkpoints, tmp_path, capsys):
    from ensdist_fairseq.teachers.teacher_forcing import load_models

    state = torch.load(tiny_checkpoints[0], weights_only=True)
    state["cfg"]["model"].arch = "my_plugin_arch"
    state["cfg"]["model"]._name = "my_plugin_arch"
    unknown = str(tmp_path / "unknown.pt")
    torch.save(state, unknown)
    with pytest.raises(EnsdistError, match=r"unknown.pt: unknown architecture 'my_plugin_arch'"):
        check_ensemble([unknown], tiny_data)
    state = torch.load(tiny_checkpoints[0], weights_only=True)
    w = state["model"]["encoder.layers.0.fc1.weight"]
    state["model"]["encoder.layers.0.fc1.weight"] = w[:-1]
    shaped = str(tmp_path / "shaped.pt")
    torch.save(state, shaped)
    with pytest.raises(EnsdistError) as e:
        load_models([tiny_checkpoints[1], shaped], tiny_data)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{shaped}: weights do not fit")
    assert "encoder.layers.0.fc1.weight" in msg and str(tuple(w[:-1].shape)).replace(" ", "") in (
        msg.replace(" ", "").replace("[", "(").replace("]", ")")
    )
    # ':' in a checkpoint path: fairseq's separator, said so
    colon = tmp_path / "run:1"
    colon.mkdir()
    shutil.copy(tiny_checkpoints[0], colon / "checkpoint_best.pt")
    assert _memoize(tiny_data, [str(colon / "checkpoint_best.pt")], tmp_path / "c.h5") == 1
    line = _one_error(capsys)
    assert line.startswith(f"{colon}/checkpoint_best.pt: a checkpoint path may not contain ':'")
    np.testing.assert_equal(os.path.exists(tmp_path / "c.h5"), False)


def test_fairseq_generate_names_a_wrong_shaped_checkpoint(tiny_data, tiny_checkpoints, tmp_path):
    from test_bad_inputs import run_forked

    import ensdist_fairseq

    state = torch.load(tiny_checkpoints[0], weights_only=True)
    state["model"]["encoder.layers.0.fc1.weight"] = state["model"]["encoder.layers.0.fc1.weight"][
        1:
    ]
    shaped = str(tmp_path / "shaped.pt")
    torch.save(state, shaped)

    def generate():
        from fairseq_cli import generate

        return generate.cli_main()

    user_dir = os.path.dirname(ensdist_fairseq.__file__)
    argv = ["fairseq-generate", tiny_data, "--path", shaped, "--user-dir", user_dir, "--cpu"]
    code, stderr = run_forked(generate, argv)
    lines = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {shaped}: weights do not fit")


def test_fairseq_generate_says_the_colon_is_the_separator(tiny_data, tiny_checkpoints, tmp_path):
    from test_bad_inputs import run_forked

    import ensdist_fairseq

    colon = tmp_path / "run:2"
    colon.mkdir()
    path = str(colon / "checkpoint_best.pt")
    shutil.copy(tiny_checkpoints[0], path)

    def generate():
        from fairseq_cli import generate

        return generate.cli_main()

    user_dir = os.path.dirname(ensdist_fairseq.__file__)
    argv = ["fairseq-generate", tiny_data, "--path", path, "--user-dir", user_dir, "--cpu"]
    code, stderr = run_forked(generate, argv)
    lines = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and "fairseq's ensemble separator" in lines[0]
    assert lines[0].startswith(f"error: {path}: a checkpoint path may not contain ':'")
