"""Every registered method honours the Method contract (no edits needed for new methods).

Parametrised over ``METHODS.names()``.  Each method may speed its fits up here
with a ``test_overrides`` class attribute (config overrides, see methods/base.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from alignbench.errors import BudgetError, ConfigError, FeatureError
from alignbench.features import ImageFeatures, Pairs
from alignbench.methods.base import Method
from alignbench.registry import METHODS
from synthetic import make_pairs, recall_at_1, split_pairs

NAMES = METHODS.names()
CONTROLS = {"random"}  # untrained controls: not expected to beat chance
N_TRAIN, N_VAL, N_TEST = 600, 200, 200


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    pairs = make_pairs(N_TRAIN + N_VAL + N_TEST, seed=0)
    return split_pairs(pairs, N_TRAIN, N_VAL, N_TEST, seed=0)


def make(name: str, **extra) -> Method:
    cls = METHODS.get(name)
    return cls(**{**getattr(cls, "test_overrides", {}), **extra})


_FITTED: dict[str, Method] = {}


def fitted(name: str, data) -> Method:
    """One seed-0 fit per method, shared by the tests that only read it."""
    if name not in _FITTED:
        train, val, _ = data
        m = make(name)
        m.fit(train, val, seed=0)
        _FITTED[name] = m
    return _FITTED[name]


def embed_pairs(m: Method, pairs: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    return m.embed_image(pairs.image()), m.embed_text(pairs.text())


def test_registry_lists_the_core_methods():
    assert {"linear", "fusemix", "structure", "random"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_class_contract(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.level in ("global", "token")
    assert cls.registry_name == name
    assert (cls.__doc__ or "").strip(), "the first docstring line is the `alignbench ls` summary"
    assert dataclasses.is_dataclass(cls.Config)
    make(name)  # test overrides are valid config keys


@pytest.mark.parametrize("name", [n for n in NAMES if n not in CONTROLS])
def test_beats_chance_retrieval_by_a_wide_margin(name, data):
    m = fitted(name, data)
    img, txt = embed_pairs(m, data[2])
    sim = m.similarity(img, txt)
    assert sim.shape == (N_TEST, N_TEST) and torch.isfinite(sim).all()
    chance = 1 / N_TEST
    i2t, t2i = recall_at_1(sim.numpy()), recall_at_1(sim.T.numpy())
    assert i2t >= 5 * chance, f"{name}: I→T R@1 {i2t:.3f} vs chance {chance:.3f}"
    assert t2i >= 5 * chance, f"{name}: T→I R@1 {t2i:.3f} vs chance {chance:.3f}"


def _trained(name: str) -> bool:
    """Has the shared trainer's LR range test option (imported here, not at collection: a broken plug-in must
    fail its own tests only)."""
    return "lr_range_test" in {f.name for f in dataclasses.fields(METHODS.get(name).Config)}


def test_every_trained_method_has_the_range_test_option():
    assert all(_trained(n) for n in ("pal", "linear", "fusemix", "structure", "mlp", "sail", "freeze-align"))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in CONTROLS])
def test_trained_methods_take_their_lr_from_the_range_test_by_default(name, data):
    """Issue 11 / METHODS.md: the reference LR range test picks every trained method's lr per fit,
    and the result records it; a given ``lr=`` turns it off.  (The other tests fix ``lr`` for speed.)"""
    cls = METHODS.get(name)
    if not _trained(name):  # a closed form: then it has no learning rate to pick either
        assert "lr" not in {f.name for f in dataclasses.fields(cls.Config)}
        return
    assert cls.Config().lr_range_test is True
    overrides = {k: v for k, v in getattr(cls, "test_overrides", {}).items() if k != "lr"}
    m = cls(**{**overrides, "max_epochs": 1})
    assert m.config.lr_range_test is True
    train, val, _ = data
    m.fit(train, val, seed=0)
    info = m.fit_info
    rt = info["lr_range_test"]
    assert info["lr_source"] == "range_test" and not rt["fallback"], info.get("lr_source")
    assert info["lr"] == rt["lr"] == max(rt["lr_steep"] / 5, 1e-6)
    assert len(rt["curve"]["losses"]) >= 2
    assert cls(**{**overrides, "lr": 1e-3}).config.lr_range_test is False


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_deterministic_for_a_seed(name, data):
    first = fitted(name, data)
    train, val, test = data
    second = make(name)
    second.fit(train, val, seed=0)
    for a, b in zip(embed_pairs(first, test), embed_pairs(second, test)):
        assert torch.equal(a, b), f"{name}: two seed-0 fits differ"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_into_a_fresh_instance(name, data):
    m = fitted(name, data)
    fresh = make(name)
    fresh.load_state_dict(m.state_dict())
    for a, b in zip(embed_pairs(m, data[2]), embed_pairs(fresh, data[2])):
        assert torch.equal(a, b)
    assert fresh.num_parameters() == m.num_parameters() > 0


@pytest.mark.parametrize("name", NAMES)
def test_describe_records_config_and_fit_info(name, data):
    d = fitted(name, data).describe()
    assert d["method"] == name and isinstance(d["config"], dict)


@pytest.mark.parametrize("name", NAMES)
def test_budget_smaller_than_the_batch_size(name, data):
    train, val, test = data
    m = make(name)
    m.fit(train.subset(np.arange(20)), val.subset(np.arange(10)), seed=0)
    img, txt = embed_pairs(m, test)
    assert len(img) == len(txt) == N_TEST
    assert torch.isfinite(img).all() and torch.isfinite(txt).all()


@pytest.mark.parametrize("name", NAMES)
def test_token_methods_ignore_padding(name, data):
    m = fitted(name, data)
    texts = data[2].text()
    lengths = texts.lengths()
    assert lengths.min() < lengths.max()
    short = int(np.argmin(lengths))
    together = m.embed_text(texts)[short]  # padded to the longest caption of the set
    alone = m.embed_text(texts.subset([short]))[0]  # no padding at all
    assert torch.allclose(together, alone, atol=1e-5), f"{name}: embedding depends on padding"


@pytest.mark.parametrize("name", NAMES)
def test_patch_scores_shape(name, data):
    m = fitted(name, data)
    test = data[2]
    images = test.image().subset(np.arange(3))
    classes = m.class_embeddings(test.text().subset(np.arange(8)), n_classes=4, n_templates=2)
    scores = m.patch_scores(images, classes)
    P = images.grid[0] * images.grid[1]
    assert tuple(scores.shape) == (3, P, 4) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyperparameter_suggests_the_right_one(name):
    cls = METHODS.get(name)
    known = [f.name for f in dataclasses.fields(cls.Config)]
    if not known:
        pytest.skip(f"{name} has no hyperparameters")
    typo = known[0] + "x"
    with pytest.raises(ConfigError, match=f"did you mean.*{known[0]}"):
        cls(**{typo: 1})


@pytest.mark.parametrize("name", NAMES)
def test_budget_zero_is_a_budget_error(name, data):
    with pytest.raises(BudgetError):
        make(name).fit(data[0].subset(np.arange(0)), data[1], seed=0)


def _with_nan(pairs: Pairs) -> Pairs:
    img = pairs.images
    pooled = np.array(img.pooled, copy=True)
    tokens = None if img.tokens is None else np.array(img.tokens, copy=True)
    row = int(pairs.image_index[0])
    pooled[row, 0] = np.nan
    if tokens is not None:
        tokens[row, 0, 0] = np.nan
    return Pairs(dataclasses.replace(img, pooled=pooled, tokens=tokens), pairs.texts,
                 pairs.image_index, pairs.text_index)


@pytest.mark.parametrize("name", NAMES)
def test_nan_features_are_a_feature_error(name, data):
    with pytest.raises(FeatureError, match="(?i)nan|finite"):
        make(name).fit(_with_nan(data[0]), data[1], seed=0)


def _widen(f, extra: int = 1):
    """The same features with ``extra`` more dimensions (a different encoder/layer)."""
    pad = lambda a: None if a is None else np.concatenate([a, np.zeros((*a.shape[:-1], extra), a.dtype)], -1)  # noqa: E731
    if isinstance(f, ImageFeatures):
        return dataclasses.replace(f, pooled=pad(f.pooled), tokens=pad(f.tokens), final_norm=None)
    return dataclasses.replace(f, pooled=pad(f.pooled), tokens=pad(f.tokens))


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_dims_between_fit_and_embed(name, data):
    m = fitted(name, data)
    test = data[2]
    with pytest.raises(FeatureError):
        m.embed_image(_widen(test.image()))
    with pytest.raises(FeatureError):
        m.embed_text(_widen(test.text()))


@pytest.mark.parametrize("name", NAMES)
def test_embedding_before_fit_is_an_error(name, data):
    with pytest.raises((FeatureError, RuntimeError)):
        make(name).embed_image(data[2].image())


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_val_dims_are_a_feature_error(name, data):
    train, val, _ = data
    wide = Pairs(_widen(val.images), val.texts, val.image_index, val.text_index)
    with pytest.raises(FeatureError):
        make(name).fit(train, wide, seed=0)


def test_validation_rows_are_all_pairs_or_one_seeded_subset_shared_by_every_method():
    from alignbench.methods.base import validation_rows

    assert validation_rows(5, 1000, seed=3).tolist() == [0, 1, 2, 3, 4]
    rows = validation_rows(5000, 1000, seed=3)
    # the draw every capped method made before this helper existed (stored validation losses depend on it)
    expected = np.sort(np.random.default_rng(4).choice(5000, 1000, replace=False))
    assert np.array_equal(rows, expected) and len(set(rows.tolist())) == 1000
    assert not np.array_equal(rows, validation_rows(5000, 1000, seed=4))
