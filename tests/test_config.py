"""Budget parsing, method specs, seeds and run ids."""
from __future__ import annotations

import pytest

from alignbench.config import (
    RunSpec,
    parse_budget,
    parse_budgets,
    parse_method_spec,
    parse_seeds,
    resolve_budget,
    split_methods,
)
from alignbench.errors import BudgetError, ConfigError


@pytest.mark.parametrize("text,value", [("1k", 1000), ("2.5k", 2500), ("10k", 10000), ("10000", 10000),
                                        ("max", "max"), ("MAX", "max"), (" 3K ", 3000), (500, 500)])
def test_parse_budget(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["10q", "0", "-1", "", "1.5", "k", "0.0001k"])
def test_bad_budgets_say_why(text):
    with pytest.raises(BudgetError) as exc:
        parse_budget(text)
    assert "budget" in str(exc.value)


def test_budget_lists_and_resolution():
    assert parse_budgets("1k,5k,10k") == [1000, 5000, 10000]
    assert resolve_budget("max", 30000) == 30000
    with pytest.raises(BudgetError, match="30000 pairs available"):
        resolve_budget(40000, 30000)


def test_method_specs():
    assert parse_method_spec("pal:K=128:tau_p=0.05") == ("pal", {"K": "128", "tau_p": "0.05"})
    assert split_methods("pal:K=128,tau_p=0.05,asif,csa") == ["pal:K=128:tau_p=0.05", "asif", "csa"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_method_spec("pal:K")


def test_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        parse_seeds("a")


def test_run_id_is_stable_and_sensitive():
    a = RunSpec("pal", budget=1000, seed=0, method_options={"K": 128})
    b = RunSpec.from_dict(a.to_dict())
    assert a.run_id == b.run_id
    assert RunSpec("pal", budget=1000, seed=1).run_id != RunSpec("pal", budget=1000, seed=0).run_id
    assert a.run_id.startswith("pal-K128-effnet-lite0+minilm-l6-b1000-s0-")
