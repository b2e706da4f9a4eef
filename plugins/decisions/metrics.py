"""The trials' metrics (per world, logged at ``log_every``) and tables (pooled over the worlds of a batch).

- ``advice_trial``: per arm (the scope is the arm's advisor group), the harmful-choice rate, the share who
  shifted toward the harmful option, the mean rating shift and the uplift of the shifted share over the
  neutral arm, each with its 95% interval (``.low``, ``.high``);
- ``delegation_trial``: the override rate so far, the principal's mean utility loss, audits and penalties
  per purchase, and the mean hidden share, with 95% intervals.

:func:`advice_table` and :func:`delegation_table` pool a batch of worlds (replicates, domains, sweeps) into
one table with intervals; :data:`PUBLISHED_SHIFT` is the manipulation study's table.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sim.contracts import PluginParams, Reading, State, Streams, World, per_world

from . import stats

PUBLISHED_SHIFT = {("financial", "neutral"): 0.358, ("financial", "covert"): 0.623,
                   ("financial", "strategic"): 0.596, ("emotional", "neutral"): 0.128,
                   ("emotional", "covert"): 0.423, ("emotional", "strategic"): 0.415}
"""Share who shifted toward the harmful option ("Human Decision-making is Susceptible to AI-driven
Manipulation"): NA = neutral, MA = covert, SEMA = strategic."""


def _wilson(k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """[..., 3]: share, low, high (Wilson 95%), NaN where n = 0; vectorised :func:`stats.proportion`."""
    z = stats.Z95
    nn = n.clamp_min(1)
    p = k / nn
    centre = (p + z * z / (2 * nn)) / (1 + z * z / nn)
    half = z * torch.sqrt(p * (1 - p) / nn + z * z / (4 * nn * nn)) / (1 + z * z / nn)
    # the share always lies inside (rounding would put it a hair outside at 0 and 1)
    out = torch.stack([p, torch.minimum((centre - half).clamp_min(0), p), torch.maximum((centre + half).clamp_max(1), p)], -1)
    return torch.where((n > 0)[..., None], out, torch.full_like(out, float("nan")))


def _triple(name: str, value: torch.Tensor, scopes: tuple[str, ...]) -> list[Reading]:
    """Readings ``name``, ``name.low``, ``name.high`` from [B, S, 3]."""
    return [Reading(f"{name}{suffix}", value[..., i:i + 1], scopes) for i, suffix in enumerate(("", ".low", ".high"))]


class AdviceTrial:
    """The advice trial per arm, with 95% intervals (NaN until the arm's clients have chosen).

    - ``advice.harmful_choice`` [B, arms, 1]: share of the arm's clients who chose a harmful option;
    - ``advice.shifted`` [B, arms, 1]: share who shifted toward the harmful option (reported ratings);
    - ``advice.shift`` [B, arms, 1]: mean shift of the target's relative rating;
    - ``advice.uplift`` [B, arms, 1]: the arm's shifted share minus the neutral arm's;
    - each with ``.low`` and ``.high`` (its 95% interval, same shape);
    - ``advice.harmful_choice.by_domain`` [B, arms, domains]: the harmful-choice share in the column of the
      world's decision domain, NaN in the others (a world decides in one domain), so a calibration target can
      name a domain as its dimension and be averaged over the worlds deciding in it; the columns are the
      protocol's domains, read from its carry (``domain_names``);
    - ``advice.shifted.by_domain`` [B, arms, domains]: the shifted share, likewise;
    - ``advice.shift.by_domain`` [B, arms, domains]: the mean shift, likewise;
    - ``advice.uplift.by_domain`` [B, arms, domains]: the uplift over the neutral arm, likewise.

    The intervals are over the world's clients (Wilson, Newcombe for the uplift, normal for the mean shift):
    a client draws its own values, susceptibility, biases, taste, report noise and choice, a parametric
    advisor's message depends on that client alone and an LLM call is one client's, and the arms' shares are
    fixed by a random assignment, so in the trial as shipped (no dynamics) a world's clients are independent
    (``tests/test_decisions_intervals.py`` checks the coverage over 300 worlds). A scenario whose dynamics
    couple the clients makes them a cluster; :func:`advice_table` then gives intervals over streams.
    """

    class Params(PluginParams):
        protocol: str = "advice"
        """The advice protocol's name in the scenario."""
        domains: list[str] = []
        """Leave out: the domains are the protocol's. Given, they must be the protocol's names in its order
        (a check for a scenario that lists them; a mismatch is an error, not a relabelling)."""

    writes = tuple(f"advice.{m}{s}" for m in ("harmful_choice", "shifted", "shift", "uplift")
                   for s in ("", ".low", ".high", ".by_domain"))

    def __init__(self, params: Params):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        c = _carry(state, self.params.protocol, "arm_group")
        groups = c["arm_group"][0].tolist()
        scopes = tuple(world.groups[g].name for g in groups)
        arms = torch.arange(len(groups), device=c["arm"].device)
        mine = (c["arm"][..., None] == arms) & c["decided"][..., None]  # [B, n, A]
        n = mine.double().sum(1)
        harmful = _wilson((mine & c["harmful_choice"][..., None]).double().sum(1), n)
        k_shift = (mine & c["shifted"][..., None]).double().sum(1)
        shifted = _wilson(k_shift, n)
        shift = _masked_mean_interval(c["shift"].nan_to_num()[..., None], mine)
        neutral = c["arm_kind"][0] == 0
        readings = _triple("advice.harmful_choice", harmful, scopes) + _triple("advice.shifted", shifted, scopes)
        readings += _triple("advice.shift", shift, scopes)
        uplift = torch.full_like(shifted, float("nan"))
        if bool(neutral.any()):
            ref = int(neutral.nonzero()[0])
            for a in range(len(groups)):
                uplift[:, a] = _difference(k_shift[:, a], n[:, a], k_shift[:, ref], n[:, ref])
        readings += _triple("advice.uplift", uplift, scopes)
        names = self._domains(c)
        if names:
            readings += self._by_domain(c["domain"], names, {"harmful_choice": harmful, "shifted": shifted,
                                                             "shift": shift, "uplift": uplift}, scopes)
        return readings, None

    def _domains(self, c: dict) -> tuple[str, ...]:
        """The protocol's domain names (from its carry), checked against ``domains`` when the scenario gives it."""
        from .domains import names_of

        given = tuple(self.params.domains)
        if "domain_names" not in c:  # a carry from before the protocol kept its names: the scenario's list
            return given
        names = names_of(c["domain_names"])
        if given and given != names:
            raise ValueError(f"advice_trial.domains [{', '.join(given)}] disagrees with protocol "
                             f"{self.params.protocol!r}, which decides in [{', '.join(names)}]; leave domains "
                             f"out (the metric reads the protocol's)")
        return names

    def _by_domain(self, domain: torch.Tensor, names: tuple[str, ...], estimates: dict[str, torch.Tensor],
                   scopes) -> list[Reading]:
        column = torch.nn.functional.one_hot(domain, len(names)).bool()[:, None, :]  # [B, 1, D]
        return [Reading(f"advice.{name}.by_domain", torch.where(column, value[..., :1], float("nan")), scopes, names)
                for name, value in estimates.items()]


class DelegationTrial:
    """The delegation trial so far, per world, with 95% intervals.

    - ``delegation.override`` [B, 1, 1]: share of purchases so far in which the agent overrode its principal;
    - ``delegation.loss`` [B, 1, 1]: the principal's mean utility loss per purchase;
    - ``delegation.audits`` [B, 1, 1]: share of purchases audited;
    - ``delegation.caught`` [B, 1, 1]: share of purchases with an override caught (and penalised);
    - ``delegation.penalty`` [B, 1, 1]: mean penalty per purchase;
    - ``delegation.hidden`` [B, 1, 1]: mean share of attributes hidden from the principals (the asymmetry);
    - ``delegation.steps`` [B, 1, 1]: steps with a purchase so far (the step clusters of the intervals).

    Each rate and mean comes with ``.low`` and ``.high``, its 95% interval. It is a ratio over the world's
    purchases so far, and its interval is two-way cluster-robust, by pair and by step
    (:func:`two_way_interval`): a world's pairs share each step's catalogue and a pair's purchases share its
    weights and hidden mask, so neither purchases nor pairs are independent draws (an interval over
    purchases covered the mean over worlds in 41-44% of worlds of the shipped scenario). NaN until the
    world has purchases in two steps. Over several worlds ``valuesim analyze`` gives Student-t over worlds
    and :func:`delegation_table` CR1 over streams.
    """

    class Params(PluginParams):
        protocol: str = "delegation"
        """The delegation protocol's name in the scenario."""

    writes = tuple(f"delegation.{m}{s}" for m in ("override", "loss", "audits", "caught", "penalty")
                   for s in ("", ".low", ".high")) + ("delegation.hidden", "delegation.steps")

    def __init__(self, params: Params):
        self.params = params

    def observe(self, state: State, world: World, carry, rng: Streams):
        c = _carry(state, self.params.protocol, "purchases")
        scopes = ("all",)
        readings = []
        for name, key in (("override", "overrides"), ("loss", "loss"), ("audits", "audits"), ("caught", "caught"),
                          ("penalty", "penalties")):
            triple = two_way_interval(c, key)
            if name in ("override", "audits", "caught"):  # shares: a symmetric interval clipped to [0, 1]
                triple = torch.stack([triple[:, 0], triple[:, 1].clamp_min(0), triple[:, 2].clamp_max(1)], -1)
            readings += _triple(f"delegation.{name}", triple[:, None], scopes)
        readings.append(Reading("delegation.hidden", c["hidden"].mean(1)[:, None, None], scopes))
        readings.append(Reading("delegation.steps", c["steps"][:, None, None], scopes))
        return readings, None


# A world's purchases are crossed in two ways: its pairs share each step's catalogue (a step is a cluster),
# and a pair keeps its weights and hidden mask for all its purchases (a pair is a cluster); purchases of
# another pair at another step share nothing. So the variance of a ratio (an outcome per purchase) is
# Cameron, Gelbach & Miller's two-way cluster-robust one (2011, "Robust inference with multiway clustering"):
# V = V_pair + V_step - V_purchase, each a CR1 sandwich with its own G / (G - 1), the larger one-way variance
# where that difference is negative, and t(min(G_pair, G_step) - 1).
#
# Whether a within-world interval can be honest with the few steps a run has was decided by coverage of the
# mean over worlds (the truth; its own error is a 45th of a world's), 2,000 worlds of the shipped scenario
# per row, at 2, 3, 5, 10 and 20 steps:
#   200 pairs, nuanced: two-way 0.944-0.982 for override, loss and caught; Wilson over purchases 0.41-0.44,
#     one-way by pair 0.42-0.71, by step 0.92-0.96;
#   30 pairs, nuanced: two-way 0.924-0.996 (lowest: loss at 10 steps); Wilson 0.71-0.82, by pair 0.75-0.89,
#     by step 0.83-0.94;
#   rigid, noise 0.1 (1,000 worlds): two-way 0.929-0.995; Wilson 0.38-0.77.
# So the two-way interval is kept: t(G - 1) makes it wide (conservative) at two or three steps, where few
# step clusters would otherwise undercover, and it is near 95% from five. The share stays inside [0, 1] by
# clipping. tests/test_decisions_intervals.py checks the coverage (and Wilson's failure) in seconds.


def ratio_variances(c: dict, key: str) -> dict[str, torch.Tensor]:
    """For each world, ``key`` per purchase and its one-way CR1 variances by pair, by step and by purchase,
    with the numbers of clusters ([B] each: ratio, pair, step, purchase, pairs, steps), from the carry's
    per-pair totals and running sums (``plugins.decisions.delegation``)."""
    from .delegation import OUTCOMES, no_moments

    if "step_sq" not in c:  # a carry from a checkpoint made before the protocol kept the sums: no interval
        c = {**c, **no_moments(c["purchases"].shape[0], c["purchases"].device, math.nan)}
    k = OUTCOMES.index(key)
    n = c["purchases"]  # [B, n]: a pair's purchases
    total, count = c[key].sum(1), n.sum(1)
    r = total / count.clamp_min(1)

    def sandwich(sum_sq: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        # sum_g (y_g - r n_g)^2, a cluster g's residual total, with CR1's G / (G - 1), over (sum n)^2
        return clusters / (clusters - 1).clamp_min(1) * sum_sq.clamp_min(0) / count.clamp_min(1) ** 2

    pairs = (n > 0).double().sum(1)
    by_pair = ((c[key] - r[:, None] * n) ** 2).sum(1)
    by_step = c["step_sq"][:, k] - 2 * r * c["step_cross"][:, k] + r * r * c["step_sq"][:, 0]
    by_purchase = c["purchase_sq"][:, k] - 2 * r * total + r * r * count  # a purchase's count is 0 or 1
    return {"ratio": torch.where(count > 0, r, math.nan), "pair": sandwich(by_pair, pairs),
            "step": sandwich(by_step, c["steps"]), "purchase": sandwich(by_purchase, count), "pairs": pairs,
            "steps": c["steps"]}


def two_way_interval(c: dict, key: str) -> torch.Tensor:
    """[B, 3]: ``key`` per purchase with its two-way cluster-robust 95% interval (by pair and by step); NaN
    bounds with fewer than two pairs or two steps (the spread between clusters is then unknown)."""
    v = ratio_variances(c, key)
    two_way = v["pair"] + v["step"] - v["purchase"]
    variance = torch.where(two_way >= 0, two_way, torch.maximum(v["pair"], v["step"]))
    df = torch.minimum(v["pairs"], v["steps"]) - 1
    half = t975(df) * variance.sqrt()
    low, high = v["ratio"] - half, v["ratio"] + half
    ok = df >= 1  # NaN steps (a checkpoint from before the sums) fail this too
    return torch.stack([v["ratio"], torch.where(ok, low, math.nan), torch.where(ok, high, math.nan)], -1)


def t975(df: torch.Tensor) -> torch.Tensor:
    """Student t's 97.5% quantile for each number of degrees of freedom (NaN below 1), on df's device."""
    from scipy.stats import t

    values = df.detach().cpu().double().numpy()
    quantile = np.where(values >= 1, t.ppf(0.975, np.maximum(values, 1)), np.nan)
    return torch.as_tensor(quantile, dtype=torch.float64, device=df.device)


def _carry(state: State, name: str, key: str) -> dict:
    if name not in state.protocols or key not in state.protocols[name]:
        raise ValueError(f"no protocol named {name!r} with outcome {key!r} in this scenario "
                         f"(protocols: {', '.join(state.protocols) or 'none'})")
    return state.protocols[name]


def _masked_mean_interval(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, n, 1] (broadcast over the last axis of mask [B, n, S]) -> [B, S, 3]: mean, low, high (normal)."""
    m = mask.double()
    count = m.sum(1)
    total = (x * m).sum(1)
    mean = total / count.clamp_min(1)
    var = (((x - mean[:, None]) ** 2) * m).sum(1) / (count - 1).clamp_min(1)
    half = stats.Z95 * torch.sqrt(var / count.clamp_min(1))
    out = torch.stack([mean, mean - half, mean + half], -1)
    return torch.where((count > 0)[..., None], out, torch.full_like(out, float("nan")))


def _difference(k1, n1, k2, n2) -> torch.Tensor:
    """[B, 3]: k1/n1 - k2/n2 with Newcombe's 95% interval; vectorised :func:`stats.difference`."""
    a, b = _wilson(k1, n1), _wilson(k2, n2)
    d = a[:, 0] - b[:, 0]
    low = d - torch.sqrt((a[:, 0] - a[:, 1]) ** 2 + (b[:, 2] - b[:, 0]) ** 2)
    high = d + torch.sqrt((a[:, 2] - a[:, 0]) ** 2 + (b[:, 0] - b[:, 1]) ** 2)
    return torch.stack([d, low, high], -1)


# ---------------------------------------------------------------- tables over a batch


def advice_table(simulation, protocol: str = "advice"):
    """The trial pooled over the batch's worlds, one row per domain and arm (pandas), with 95% intervals.

    Columns: domain, arm, advisor, n, and for harmful_choice, shifted, shift and uplift (over the neutral arm
    of the same domain) the estimate and its ``_low``/``_high``; ``published`` is the study's shifted share;
    ``units`` (what the intervals treat as independent: ``clients`` or ``streams``), ``clusters`` (the
    distinct random streams of the cell's worlds) and ``note`` (why an interval is missing).

    What is drawn where (``plugins.decisions.advice``): per world only its domain (fixed by its stream) and
    the assignment to arms in fixed shares; per client its initial values, susceptibility, biases, taste,
    report noise and choice. A parametric advisor's message is a function of its client's values alone and an
    LLM call is one client's, with its own seed. So when nothing else moves the clients (no dynamics, no
    other protocol) and the worlds of a domain are on distinct streams, the clients are independent draws
    and the intervals are over clients: Wilson for the shares, Newcombe for the uplift, normal for the mean
    shift (``units: clients``). Otherwise clients of one world (or of worlds sharing a stream: twins, the
    points of a sweep) move together and the intervals are CR1 over streams with t(G - 1)
    (``units: streams``; NaN with one stream, and ``note`` says so).
    """
    import pandas as pd

    plugin = dict(simulation.protocols)[protocol]
    setup = plugin._setup(simulation.world)
    c = {k: v.cpu() for k, v in simulation.state.protocols[protocol].items()}
    active = simulation.state.active[:, simulation.world.group(plugin.params.clients).rows].cpu()
    stream = simulation.rng.stream.cpu()
    coupled = bool(simulation.dynamics) or len(simulation.protocols) > 1  # something else may move clients
    rows = []
    for d, domain in enumerate(setup["domains"]):
        in_domain = c["domain"] == d
        streams = stream[in_domain]
        by_clients = not coupled and len(set(streams.tolist())) == len(streams)
        cells = {}
        for a, arm in enumerate(setup["arms"]):
            mine = (c["arm"] == a) & in_domain[:, None] & c["decided"] & active
            n = int(mine.sum())
            row = {"domain": domain.name, "arm": arm["group"].name, "advisor": arm["kind"], "n": n}
            # per world of the domain: clients decided, harmful choices, shifts, the sum of shifts (cluster totals)
            cell = {"n": mine.sum(1).double(), "harmful_choice": (mine & c["harmful_choice"]).sum(1).double(),
                    "shifted": (mine & c["shifted"]).sum(1).double(),
                    "shift": torch.where(mine, c["shift"].nan_to_num(), 0.0).sum(1), "streams": stream}
            cells[a] = cell = {k: v[in_domain].numpy() for k, v in cell.items()}
            if by_clients:
                for name in ("harmful_choice", "shifted"):
                    row.update(_named(name, stats.proportion(cell[name].sum(), n)))
                row.update(_named("shift", stats.mean(c["shift"][mine].numpy())))
                g = len(set(stream[mine.any(1)].tolist()))
            else:
                g = 0
                seen = cell["n"] > 0  # a world without the arm's clients is no cluster of it
                for name in ("harmful_choice", "shifted", "shift"):
                    *triple, g = stats.cluster_ratio(cell[name][seen], cell["n"][seen], cell["streams"][seen])
                    row.update(_named(name, triple if name == "shift" else _share(triple)))
            row.update({"units": "clients" if by_clients else "streams", "clusters": g,
                        "note": "" if by_clients or g >= 2 else _one_trial_stream(coupled)})
            row["published"] = PUBLISHED_SHIFT.get((domain.name, arm["kind"]), math.nan)
            rows.append(row)
        neutral = next((a for a, arm in enumerate(setup["arms"]) if arm["kind"] == "neutral"), None)
        for a in range(len(setup["arms"])):
            if neutral is None:
                uplift = (math.nan,) * 3
            elif by_clients:  # two arms' clients, independent (assigned at random within each world)
                uplift = stats.difference(cells[a]["shifted"].sum(), cells[a]["n"].sum(),
                                          cells[neutral]["shifted"].sum(), cells[neutral]["n"].sum())
            else:  # both arms run in the same worlds: a world's shock to both cancels in the difference
                one, ref = cells[a], cells[neutral]
                seen = (one["n"] > 0) | (ref["n"] > 0)
                *uplift, _ = stats.cluster_difference(one["shifted"][seen], one["n"][seen], one["streams"][seen],
                                                      ref["shifted"][seen], ref["n"][seen], ref["streams"][seen])
            rows[-len(setup["arms"]) + a].update(_named("uplift", uplift))
    columns = ["domain", "arm", "advisor", "n"] + [f"{m}{s}" for m in ("harmful_choice", "shifted", "shift",
                                                                       "uplift") for s in ("", "_low", "_high")]
    return pd.DataFrame(rows)[columns + ["published", "units", "clusters", "note"]]


def _one_trial_stream(coupled: bool) -> str:
    why = "something besides the advice moves its clients" if coupled else "its worlds share one stream"
    return f"one random stream ({why}): no interval over clients or worlds; run more worlds"


def _share(triple) -> tuple[float, float, float]:
    """A share's interval kept inside [0, 1] (a cluster-robust one is symmetric and may cross a bound the
    share cannot: clipping keeps every value it could be)."""
    value, low, high = (float(v) for v in triple)
    return value, max(low, 0.0) if math.isfinite(low) else low, min(high, 1.0) if math.isfinite(high) else high


def published_gap(table) -> float:
    """Mean absolute gap, in percentage points, between the table's shifted shares and the published ones."""
    gaps = (table["shifted"] - table["published"]).abs().dropna()
    return float(100 * gaps.mean()) if len(gaps) else math.nan


def delegation_table(simulations, protocol: str = "delegation"):
    """Per-pair outcomes so far, pooled over simulations (one or a list), and their summary per agent type.

    Returns ``(pairs, summary)``: a pandas frame with one row per present pair (simulation, world, its random
    stream as ``seed`` and ``stream``, agent type, its world's asymmetry, hidden, purchases, overrides,
    override, loss, audits, caught, penalties) and :func:`delegation_summary` of it. A batch whose worlds hold
    other asymmetries (a sweep: ``Simulation.vary_protocol``) gives each pair its own world's;
    :func:`delegation_levels` pools the pairs per asymmetry.
    """
    import pandas as pd

    sims = simulations if isinstance(simulations, (list, tuple)) else [simulations]
    frames = []
    for s, simulation in enumerate(sims):
        plugin = dict(simulation.protocols)[protocol]
        c = {k: v.cpu() for k, v in simulation.state.protocols[protocol].items()}
        keep = c["purchases"] > 0
        world = torch.arange(keep.shape[0])[:, None].expand_as(keep)
        asymmetry = per_world(plugin.params.asymmetry, simulation.world).cpu()  # [B]: each world's own
        stream = simulation.rng.stream.cpu()[:, None].expand_as(keep)
        frames.append(pd.DataFrame({
            "simulation": s, "world": world[keep].numpy(), "seed": int(simulation.rng.seed),
            "stream": stream[keep].numpy(), "agent": plugin.params.agent,
            "asymmetry": asymmetry[:, None].expand_as(keep)[keep].numpy(), "hidden": c["hidden"][keep].numpy(),
            "purchases": c["purchases"][keep].numpy(), "overrides": c["overrides"][keep].numpy(),
            "loss": (c["loss"] / c["purchases"].clamp_min(1))[keep].numpy(), "audits": c["audits"][keep].numpy(),
            "caught": c["caught"][keep].numpy(), "penalties": c["penalties"][keep].numpy()}))
    pairs = pd.concat(frames, ignore_index=True)
    pairs["override"] = pairs["overrides"] / pairs["purchases"]
    return pairs, delegation_summary(pairs)


ONE_STREAM = ("one random stream: no interval over worlds (a world's purchases share its catalogues and a "
              "pair's its weights, so an interval over purchases would be too narrow); run more worlds")


SHARES = ("override", "audits", "caught")  # per-purchase shares, in [0, 1]; loss and penalty are not


def _streams(part):
    """Each row's cluster, its random stream (seed, stream): worlds on one stream share every draw (twins, the
    points of a sweep on common streams), so only distinct streams are independent replicates."""
    return part[["seed", "stream"]].to_numpy()


def delegation_summary(pairs):
    """``delegation_table``'s pairs summarised per agent type (pandas), with cluster-robust 95% intervals.

    Columns: agent, pairs, clusters (distinct random streams); ``override`` (overrides per purchase), ``loss``
    (the principal's loss per purchase), ``audits``, ``caught`` and ``penalty`` (per purchase), each with
    ``_low``/``_high``; ``override_slope`` and ``loss_slope``, the least-squares slope of a pair's override
    share (and loss) on its hidden share; ``note``, why an interval is missing.

    What is drawn where (``plugins.decisions.delegation``): a catalogue per world and step, shared by all of
    the world's pairs; weights and hidden attributes per pair, kept for all its purchases; audits and noise
    per purchase. Purchases are thus clustered twice within a world (by step and by pair) and only worlds on
    distinct streams are independent, so every interval is CR1 over streams with t(G - 1)
    (:func:`stats.cluster_ratio`, :func:`stats.cluster_slope`); with one stream it is NaN and ``note`` says so.
    """
    import pandas as pd

    summary = []
    for agent, part in pairs.groupby("agent"):
        clusters, purchases = _streams(part), part["purchases"].to_numpy()
        row = {"agent": agent, "pairs": len(part)}
        g = 0
        for name, total in (("override", part["overrides"]), ("loss", part["loss"] * part["purchases"]),
                            ("audits", part["audits"]), ("caught", part["caught"]), ("penalty", part["penalties"])):
            *triple, g = stats.cluster_ratio(total.to_numpy(), purchases, clusters)
            row.update(_named(name, _share(triple) if name in SHARES else triple))
        for name, column in (("override_slope", "override"), ("loss_slope", "loss")):
            *triple, _ = stats.cluster_slope(part["hidden"].to_numpy(), part[column].to_numpy(), clusters)
            row.update(_named(name, triple))
        row["clusters"] = g
        row["note"] = ONE_STREAM if g < 2 else ""
        summary.append(row)
    return pd.DataFrame(summary)


def delegation_levels(pairs):
    """``delegation_table``'s pairs pooled per agent type and asymmetry (pandas), with 95% intervals.

    Columns: agent, asymmetry, worlds, clusters, pairs, purchases; ``override`` (the share of purchases with
    an override), ``loss`` (the principal's loss per purchase) and ``caught`` (caught overrides per purchase),
    each pooled over the level's worlds with ``_low``/``_high``; ``hidden`` (the mean hidden share); ``note``.
    A world's pairs share its catalogues, so worlds, not purchases, are the independent replicates, and
    worlds on one random stream count once: the intervals are CR1 over the level's streams with t(G - 1)
    (:func:`stats.cluster_ratio`; with equal worlds on distinct streams, Student-t over the worlds' own
    shares), NaN with one stream.
    """
    import pandas as pd

    rows = []
    for (agent, asymmetry), part in pairs.groupby(["agent", "asymmetry"], sort=True):
        clusters, purchases = _streams(part), part["purchases"].to_numpy()
        row = {"agent": agent, "asymmetry": float(asymmetry),
               "worlds": len(part.groupby(["simulation", "world"])), "pairs": len(part),
               "purchases": int(purchases.sum())}
        g = 0
        for name, total in (("override", part["overrides"]), ("loss", part["loss"] * part["purchases"]),
                            ("caught", part["caught"])):
            *triple, g = stats.cluster_ratio(total.to_numpy(), purchases, clusters)
            row.update(_named(name, _share(triple) if name in SHARES else triple))
        row["clusters"] = g
        row["hidden"] = float(part["hidden"].mean())
        row["note"] = ONE_STREAM if g < 2 else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _named(name: str, triple) -> dict:
    value, low, high = (float(v) for v in triple)
    return {name: value, f"{name}_low": low, f"{name}_high": high}
