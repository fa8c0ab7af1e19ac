"""What a trained router would have done on the held-out split, in figures. Pure NumPy: arrays in, a JSON-
ready dict out.

Inputs, for n held-out prompts and c candidates: the true scores (n × c, 0..1), the predictor's
predictions (n × c), each call's cost per candidate (n × c, USD: the candidate's cost per 1,000 tokens
times the tokens it spent on that prompt), the fallback's column and the router's τ.

1. The choice at τ is `learning.routing.decide`'s rule with every candidate available, vectorised: the
   cheapest candidate predicted at least (1 − τ) × the fallback's prediction.
2. The curve: for τ from 0 to 100% in steps of 5 points, the mean true score of the chosen candidates
   (quality) and their mean cost per call, beside always-fallback, always-cheapest, and a random mix of
   the cheapest and the fallback costing the same as the router (its quality is the mix's expectation).
3. At the router's τ: each candidate's share of prompts; quality retained (router ÷ fallback) and cost
   saved (1 − router ÷ fallback) with 95% confidence intervals by the percentile bootstrap over prompts
   (a fixed seed, so a report is reproducible).
4. The router literature's figures (RouteLLM): between the strongest candidate (best mean true score)
   and the cheapest, order the prompts by the predicted advantage of the strongest and send the top k%
   to it: the performance gap recovered PGR(k) = (q(k) − q_cheapest) ÷ (q_strongest − q_cheapest);
   APGR is its mean over k from 0 to 100%, and CPT(50%), CPT(80%) the least share of calls to the
   strongest that recovers 50% and 80% of the gap. A random router's APGR is 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from learning import routing

TAU_STEPS = 21  # 0%, 5%, … 100%
BOOTSTRAP = 1000
CURVE_BOOTSTRAP = 200
SEED = 20261202
SHARE_STEPS = 101


def choose(predicted: np.ndarray, costs_per_1k: np.ndarray, fallback: int, tau: float) -> np.ndarray:
    """The chosen candidate's column per prompt (routing.decide's rule, every candidate available)."""
    floor = (1.0 - tau) * predicted[:, fallback : fallback + 1] - routing.SLACK
    eligible = predicted >= floor
    eligible[:, fallback] = True
    order = np.argsort(costs_per_1k, kind="stable")
    first = np.argmax(eligible[:, order], axis=1)
    return order[first]


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _bootstrap_ratios(
    chosen_scores: np.ndarray,
    chosen_costs: np.ndarray,
    fallback_scores: np.ndarray,
    fallback_costs: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
) -> tuple[list[float | None], list[float | None]]:
    """95% intervals of quality retained and cost saved."""
    n = len(chosen_scores)
    picks = rng.integers(0, n, size=(resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        retained = chosen_scores[picks].mean(axis=1) / fallback_scores[picks].mean(axis=1)
        saved = 1.0 - chosen_costs[picks].mean(axis=1) / fallback_costs[picks].mean(axis=1)
    intervals: list[list[float | None]] = []
    for values in (retained, saved):
        finite = values[np.isfinite(values)]
        if len(finite) == 0:
            intervals.append([None, None])
        else:
            low, high = np.percentile(finite, [2.5, 97.5])
            intervals.append([_round(low), _round(high)])
    return intervals[0], intervals[1]


def gap_recovered(true: np.ndarray, predicted: np.ndarray, strong: int, weak: int) -> dict[str, Any]:
    """APGR and CPT(50%), CPT(80%) between the strongest and the cheapest candidate (see the module)."""
    n = len(true)
    q_strong, q_weak = true[:, strong].mean(), true[:, weak].mean()
    if strong == weak or q_strong - q_weak <= 1e-12:
        note = "The cheapest candidate is also the strongest: there is no gap to recover."
        return {"apgr": None, "cpt50": None, "cpt80": None, "curve": [], "note": note}
    order = np.argsort(-(predicted[:, strong] - predicted[:, weak]), kind="stable")
    gains = np.concatenate([[0.0], np.cumsum((true[:, strong] - true[:, weak])[order])])
    shares = np.linspace(0.0, 1.0, SHARE_STEPS)
    # A share between two whole numbers of prompts sends the prompt at the boundary in part (linear
    # interpolation), so a small split gives a continuous curve rather than steps.
    quality = q_weak + np.interp(shares * n, np.arange(n + 1), gains) / n
    pgr = (quality - q_weak) / (q_strong - q_weak)
    apgr = float(np.mean((pgr[1:] + pgr[:-1]) / 2))  # the trapezoid rule over equal steps

    def cpt(target: float) -> float | None:
        reached = np.nonzero(pgr >= target - 1e-12)[0]
        return _round(shares[reached[0]]) if len(reached) else None

    return {
        "apgr": _round(apgr),
        "cpt50": cpt(0.5),
        "cpt80": cpt(0.8),
        "curve": [
            {"share_to_strongest": _round(s), "pgr": _round(p)}
            for s, p in zip(shares[::5], pgr[::5], strict=True)
        ],
    }


def build(
    *,
    candidates: Sequence[str],
    true: np.ndarray,
    predicted: np.ndarray,
    call_costs: np.ndarray,
    costs_per_1k: np.ndarray,
    fallback: int,
    tau: float,
) -> dict[str, Any]:
    """The report of one predictor on the held-out split (see the module's docstring)."""
    n = len(true)
    rows = np.arange(n)
    rng = np.random.default_rng(SEED)
    cheapest = int(np.argmin(costs_per_1k))
    strongest = int(np.argmax(true.mean(axis=0)))
    q_fallback, c_fallback = float(true[:, fallback].mean()), float(call_costs[:, fallback].mean())
    q_cheapest, c_cheapest = float(true[:, cheapest].mean()), float(call_costs[:, cheapest].mean())

    def point(at: float, resamples: int) -> dict[str, Any]:
        chosen = choose(predicted, costs_per_1k, fallback, at)
        scores, costs = true[rows, chosen], call_costs[rows, chosen]
        quality, cost = float(scores.mean()), float(costs.mean())
        if c_fallback > c_cheapest:
            mix = min(1.0, max(0.0, (cost - c_cheapest) / (c_fallback - c_cheapest)))
        else:
            mix = 1.0
        retained_ci, saved_ci = _bootstrap_ratios(
            scores, costs, true[:, fallback], call_costs[:, fallback], resamples, rng
        )
        shares = np.bincount(chosen, minlength=len(candidates)) / n
        return {
            "tau": _round(at),
            "quality": _round(quality),
            "cost_per_call_usd": _round(cost, 10),
            "random_mix_quality": _round(mix * q_fallback + (1 - mix) * q_cheapest),
            "quality_retained": _round(quality / q_fallback) if q_fallback > 0 else None,
            "quality_retained_ci95": retained_ci,
            "cost_saved": _round(1 - cost / c_fallback) if c_fallback > 0 else None,
            "cost_saved_ci95": saved_ci,
            "shares": {name: _round(float(share)) for name, share in zip(candidates, shares, strict=True)},
        }

    curve = [point(float(at), CURVE_BOOTSTRAP) for at in np.linspace(0.0, 1.0, TAU_STEPS)]
    return {
        "heldout_items": n,
        "candidates": list(candidates),
        "fallback": candidates[fallback],
        "cheapest": candidates[cheapest],
        "strongest": candidates[strongest],
        "costs_per_1k_tokens": {
            name: _round(float(c), 8) for name, c in zip(candidates, costs_per_1k, strict=True)
        },
        "baselines": {
            "always_fallback": {"quality": _round(q_fallback), "cost_per_call_usd": _round(c_fallback, 10)},
            "always_cheapest": {"quality": _round(q_cheapest), "cost_per_call_usd": _round(c_cheapest, 10)},
            "per_candidate": {
                name: {
                    "quality": _round(float(true[:, i].mean())),
                    "cost_per_call_usd": _round(float(call_costs[:, i].mean()), 10),
                }
                for i, name in enumerate(candidates)
            },
        },
        "at_tau": point(tau, BOOTSTRAP),
        "curve": curve,
        "gap_recovered": gap_recovered(true, predicted, strongest, cheapest),
    }


def at_tau(report: dict[str, Any], tau: float) -> dict[str, Any] | None:
    """The report's figures at `tau`: exact when it is the τ the report was built at, else the curve's
    nearest point (the curve is in steps of 5 points)."""
    exact = report.get("at_tau")
    if exact and exact.get("tau") is not None and abs(exact["tau"] - tau) < 1e-9:
        return exact
    curve = report.get("curve") or []
    if not curve:
        return None
    return min(curve, key=lambda entry: abs(entry["tau"] - tau))
