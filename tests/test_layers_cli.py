"""``alignbench layers`` stores STRUCTURE's layer choice; ``run --image-layer best`` uses it and records it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignbench.cli import main as cli
from alignbench.errors import ConfigError
from alignbench.layer_choices import StoredChoice, choice_path, load_choice, parse_layer, resolve_best
from alignbench.layer_selection import select_layers_for_pair
from alignbench.store import FeatureStore
from tiny_data import PAIR


def layers(dirs, *extra) -> int:
    return cli(["layers", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
                "--no-progress", *extra])


def run(dirs, *extra) -> int:
    return cli(["run", "--pair", PAIR, "--data-root", str(dirs["data"]), "--cache", str(dirs["cache"]),
                "--results", str(dirs["results"]), "--no-progress", "--device", "cpu", "--methods", "random",
                "--budget", "20", "--datasets", "flickr8k", *extra])


def test_layers_prints_the_table_and_stores_the_search(dirs, capsys):
    assert layers(dirs, "--n", "12", "--train", "flickr8k:train") == 0
    out = capsys.readouterr()
    path = choice_path(dirs["cache"], ("tiny-vit", "tiny-text"), ("flickr8k", "train"), 12)
    rec = json.loads(path.read_text())
    want = select_layers_for_pair(PAIR, "flickr8k", "train", sample=12, seed=0, store=FeatureStore(dirs["cache"]),
                                  data_root=dirs["data"], progress=False)
    np.testing.assert_allclose(rec["scores"], want.scores)
    assert (rec["image_layer"], rec["text_layer"], rec["n"]) == (want.image_layer, want.text_layer, 12)
    assert f"best: image layer {want.image_layer}, text layer {want.text_layer}" in out.out
    assert f"{want.score:.4f}*" in out.out and "image \\ text" in out.out
    assert str(path) in out.err and "--image-layer best --text-layer best" in out.err


def test_layers_with_fewer_images_than_n_uses_what_exists_and_says_so(dirs, capsys):
    assert layers(dirs, "--train", "flickr8k:dev") == 0  # 6 dev images, --n 5000 by default
    out = capsys.readouterr()
    assert "flickr8k:dev has 6 images with captions, fewer than --n 5000: scoring on all 6" in out.err
    rec = json.loads(choice_path(dirs["cache"], ("tiny-vit", "tiny-text"), ("flickr8k", "dev"), 5000).read_text())
    assert rec["n"] == 6 and rec["n_requested"] == 5000 and rec["n_available"] == 6


def test_layers_with_a_budget_smaller_than_n_scores_on_the_budget_and_runs_pick_a_choice_within_theirs(dirs, capsys):
    """A run at budget B must not pick its layers on more pairs than it may train on."""
    assert layers(dirs, "--n", "12") == 0
    capsys.readouterr()
    # only a choice on 12 pairs exists: a 10-pair run uses it and says it saw more pairs than the budget
    assert run(dirs, "--image-layer", "best", "--text-layer", "best", "--tasks", "retrieval", "--budget", "10") == 0
    err = capsys.readouterr().err
    assert "n=12" in err and "WARNING: chosen on 12 pairs, more than this run's budget of 10" in err
    assert f"alignbench layers --pair {PAIR} --train flickr8k:train --budget 10" in err

    assert layers(dirs, "--n", "12", "--budget", "8") == 0
    err = capsys.readouterr().err
    assert "--budget 8 is smaller than --n 12: scoring on 8 pairs" in err and "--budget 8" in err.splitlines()[-1]
    rec = json.loads(choice_path(dirs["cache"], ("tiny-vit", "tiny-text"), ("flickr8k", "train"), 8).read_text())
    assert rec["n"] == 8 and rec["budget"] == "8"
    for budget, n in (("10", 8), ("20", 12)):  # the choice on the most pairs within the budget
        assert run(dirs, "--image-layer", "best", "--text-layer", "best", "--tasks", "retrieval",
                   "--budget", budget) == 0
        err = capsys.readouterr().err
        assert f"n={n}," in err and "WARNING" not in err


def test_run_with_best_before_layers_says_which_command_to_run(dirs, capsys):
    assert run(dirs, "--image-layer", "best", "--text-layer", "best") == 2
    err = capsys.readouterr().err
    assert f"run `alignbench layers --pair {PAIR} --train flickr8k:train` first" in err
    assert not dirs["results"].exists() or not list(dirs["results"].glob("*.json"))


def test_run_with_best_uses_the_stored_choice_and_records_the_layers(dirs, capsys):
    assert layers(dirs, "--n", "12") == 0
    rec = json.loads(choice_path(dirs["cache"], ("tiny-vit", "tiny-text"), ("flickr8k", "train"), 12).read_text())
    capsys.readouterr()
    assert run(dirs, "--image-layer", "best", "--text-layer", "best", "--tasks", "retrieval") == 0
    assert f"image layer {rec['image_layer']}, text layer {rec['text_layer']}" in capsys.readouterr().err
    (result,) = [json.loads(p.read_text()) for p in dirs["results"].glob("*.json")]
    assert result["spec"]["encoder"]["image_layer"] == rec["image_layer"]
    assert result["spec"]["encoder"]["text_layer"] == rec["text_layer"]
    assert result["layers"] == {"image": rec["image_layer"], "text": rec["text_layer"]}


def test_run_records_the_default_last_layers(dirs):
    assert run(dirs, "--tasks", "retrieval") == 0
    (result,) = [json.loads(p.read_text()) for p in dirs["results"].glob("*.json")]
    assert result["layers"] == {"image": 1, "text": 1}  # tiny encoders: 2 layers each, last by default


def _stored(scores, il=(0, 1, 2), tl=(0, 1)) -> StoredChoice:
    return StoredChoice(Path("x.json"), {"scores": scores, "image_layers": list(il), "text_layers": list(tl)})


def test_best_with_one_side_fixed_reads_that_row_or_column():
    s = _stored([[0.1, 0.5], [0.4, 0.2], [0.3, 0.3]])
    assert s.best() == (0, 1, 0.5)
    assert resolve_best("best", 0, s, n_layers=(3, 2)) == (1, 0, 0.4)  # best image layer for text layer 0
    assert resolve_best(2, "best", s, n_layers=(3, 2)) == (2, 1, 0.3)  # ties go to the later layer
    assert resolve_best("best", None, s, n_layers=(3, 2)) == (0, 1, 0.5)  # None = the last text layer
    assert resolve_best(-1, "best", s, n_layers=(3, 2)) == (2, 1, 0.3)
    with pytest.raises(ConfigError, match="no text layer 5"):
        resolve_best("best", 5, s, n_layers=(3, 6))


def test_load_choice_takes_the_largest_n_and_layer_arguments_parse(tmp_path):
    from alignbench.layer_selection import LayerChoice

    for n, best in ((100, 0), (2000, 1)):
        c = LayerChoice(best, 0, np.array([[0.1], [0.2]]) if best else np.array([[0.3], [0.2]]), [0, 1], [0], 5, n)
        from alignbench.layer_choices import save_choice

        save_choice(tmp_path, ("a", "b"), ("flickr8k", "train"), n, c)
    got = load_choice(tmp_path, ("a", "b"), ("flickr8k", "train"))
    assert got.record["n_requested"] == 2000 and got.best()[0] == 1
    with pytest.raises(ConfigError, match="alignbench layers --pair a\\+b --train flickr8k:dev"):
        load_choice(tmp_path, ("a", "b"), ("flickr8k", "dev"))
    assert parse_layer("best") == "best" and parse_layer("-1") == -1 and parse_layer(None) is None
    with pytest.raises(ConfigError, match="not an integer or 'best'"):
        parse_layer("bset")
