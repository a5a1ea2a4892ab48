"""The report of a reweighting study: per target, every method's mixture and its proxies' bits per byte against
natural, uniform and the grid's best point (paired over seeds), the goals checked plainly, and a plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stride_engine.artifacts import atomic_write_text

from ..studies.notes import keep_notes

REFERENCES = ("natural", "uniform")
BOOTSTRAP = 10_000


def write_report(rows: list[dict], recipe: dict, path: Path) -> None:
    out = Path(path).with_suffix(".md")
    atomic_write_text(out, keep_notes(out, markdown(rows, recipe), rows[0].get("commit")))
    plot(rows, Path(path).with_suffix(".png"))


def _by_seed(rows: list[dict], target: str, method: str, key: str = "target_bpb") -> dict[int, float]:
    return {r["seed"]: r[key] for r in rows if r["target"] == target and r["method"] == method}


def paired(values: dict[int, float], reference: dict[int, float], seed: int = 0) -> dict[str, float] | None:
    """The mean paired difference (method - reference) over the seeds both have, its bootstrap 95% interval and the
    paired t-test's p; None without two shared seeds."""
    seeds = sorted(set(values) & set(reference))
    if len(seeds) < 2:
        return None
    from scipy.stats import ttest_rel

    differences = np.array([values[s] - reference[s] for s in seeds])
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(seeds), (BOOTSTRAP, len(seeds)))].mean(axis=1)
    if differences.std() > 0:
        p = float(ttest_rel([values[s] for s in seeds], [reference[s] for s in seeds]).pvalue)
    else:  # the same difference at every seed: no noise at all, so any difference is beyond it
        p = 0.0 if differences.mean() != 0 else 1.0
    return {"mean": float(differences.mean()), "low": float(np.quantile(means, 0.025)), "high": float(np.quantile(means, 0.975)),
            "p": p, "seeds": len(seeds)}


def _change(result: dict | None) -> str:
    if result is None:
        return ""
    p = "< 0.001" if result["p"] < 0.001 else f"= {result['p']:.2g}"
    return f"{result['mean']:+.4f} [{result['low']:+.4f}, {result['high']:+.4f}] (p {p})"


def beats(result: dict | None) -> bool:
    """Lower beyond seed noise: the whole bootstrap interval below zero and the paired t-test at 5%."""
    return result is not None and result["high"] < 0 and result["p"] < 0.05


def summary(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """target -> method -> mean bits per byte (target, macro, worst domain), spread, the paired comparisons, regret."""
    table: dict[str, dict[str, dict]] = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        methods = [m for m in dict.fromkeys(r["method"] for r in rows if r["target"] == target) if m != "grid"]
        best = _by_seed(rows, target, "grid-best")
        natural = _by_seed(rows, target, "natural")
        entries = {}
        for method in methods:
            mine = [r for r in rows if r["target"] == target and r["method"] == method]
            values = _by_seed(rows, target, method)
            entry = {
                "bpb": float(np.mean(list(values.values()))), "std": float(np.std(list(values.values()), ddof=1)) if len(values) > 1 else 0.0,
                "seeds": len(values), "macro": float(np.mean([r["macro_bpb"] for r in mine])),
                "worst": float(np.mean([r["worst_domain_bpb"] for r in mine])), "weights": mine[0]["weights"],
                "epochs": mine[0]["epochs"], "cost": mine[0].get("weight_proxy_runs"),
                **{f"vs_{ref}": paired(values, _by_seed(rows, target, ref)) for ref in REFERENCES if ref != method},
            }
            if best and natural and method != "grid-best":
                gap = np.mean(list(natural.values())) - np.mean(list(best.values()))
                entry["regret"] = float((entry["bpb"] - np.mean(list(best.values()))) / gap) if gap > 0 else None
            entries[method] = entry
        table[target] = entries
    return table


# the STRIDE arms the goals are checked for: curate reweight's defaults (the domain operators under the macro guard),
# and the per-document reading that was the default until 2026-12
GOAL_ARMS = {"stride-guarded": "curate reweight's defaults: the domain-operators reading under the macro guard, mode "
                               "average on a target with parts",
             "stride": "the per-document `positive` reading, unguarded (the default until 2026-12), mode target"}


def goals(table: dict[str, dict[str, dict]], method: str = "stride", rows: list[dict] | None = None) -> list[str]:
    """The issue's goals for STRIDE's weights, each said true or false with its numbers (with the grid's `rows`, also
    the gap closed to the best grid mixture whose macro bpb is within 1% of natural's: the oracle under the same
    constraint on the other domains)."""
    lines = []
    targets = [t for t, entries in table.items() if method in entries]
    wins = [t for t in targets if beats(table[t][method].get("vs_natural")) and beats(table[t][method].get("vs_uniform"))]
    lines.append(f"- Beats natural and uniform beyond seed noise on >= 2 targets: **{'yes' if len(wins) >= 2 else 'no'}** "
                 f"({len(wins)} of {len(targets)}: {', '.join(wins) or 'none'}).")
    for target in targets:
        entry, entries = table[target][method], table[target]
        macro = 100 * (entry["macro"] / entries["natural"]["macro"] - 1) if "natural" in entries else None
        closed = 1 - entry["regret"] if entry.get("regret") is not None else None
        parts = [f"macro per-domain bpb {macro:+.2f}% vs natural ({'within' if macro is not None and macro <= 1 else 'beyond'} 1%)"
                 if macro is not None else "", f"closes {100 * closed:.0f}% of natural's gap to the grid's best" if closed is not None else ""]
        within = grid_within(rows or [], target, 1.01 * entries["natural"]["macro"]) if "natural" in entries else None
        if within is not None and within["bpb"] < entries["natural"]["bpb"]:
            share = (entries["natural"]["bpb"] - entry["bpb"]) / (entries["natural"]["bpb"] - within["bpb"])
            parts.append(f"closes {100 * share:.0f}% of the gap to the grid's best mixture within 1% macro "
                         f"({' / '.join(f'{w:.2f}' for w in within['weights'].values())}: {within['bpb']:.4f}, macro {within['macro']:.4f})")
        for peer in ("doge", "mixmin", "similarity", "similarity-guarded"):
            if peer in entries:
                word = "at least as good as" if entry["bpb"] <= entries[peer]["bpb"] else "worse than"
                parts.append(f"{word} {peer} ({entry['bpb']:.4f} vs {entries[peer]['bpb']:.4f})")
        lines.append(f"- {target}: " + "; ".join(p for p in parts if p) + ".")
    return lines


def markdown(rows: list[dict], recipe: dict) -> str:
    diagnostics = [r for r in rows if "diagnostic" in r]
    transfer = [r for r in rows if r.get("scale") == "transfer"]
    rows = [r for r in rows if "diagnostic" not in r and r.get("scale") != "transfer"]
    context = rows[0]
    table = summary(rows)
    domains = list(context.get("domain_bpb", {}))
    lines = [
        f"# Reweighting study: {context['recipe']}{' (smoke)' if context['smoke'] else ''}", "",
        f"Made by `{context['command']}` at commit {context['commit']} on {context['machine']['cpus']} CPUs; this invocation "
        f"{context['invocation_seconds'] / 60:.0f} min (finished stages are reused).", "",
        f"Each mixture is the pool resampled to its weights at {context['budget_tokens']:,} tokens (uniform inside each domain); a "
        "proxy trained from scratch on it for each seed, the same steps for every mixture; lm-eval bits per byte on the target's "
        "evaluation items (never seen by any method) and on held-out documents of every domain. Lower is better.",
        "vs natural / uniform: the mean paired difference over seeds (the same seeds: initialisation, data order and resampling), "
        "its bootstrap 95% interval and the paired t-test's p. Regret: (bpb - grid-best) / (natural - grid-best), 0 is the "
        "grid's best mixture, 1 is no better than natural. Cost: proxy runs spent finding the weights (STRIDE: the reference "
        "model's training and the fit; the domain-operators arms: the reference model's training and their own bank, since "
        "a run prepared with `curate fit --chunks-only` serves them).", "",
    ]
    for target, entries in table.items():
        lines += [f"## target: {target}", "", "| method | weights (" + " / ".join(domains) + ") | target bpb | vs natural | vs uniform | "
                  "regret | macro bpb | worst domain bpb | cost (proxy runs) |", "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for method, e in sorted(entries.items(), key=lambda item: item[1]["bpb"]):
            weights = " / ".join(f"{e['weights'].get(d, 0):.2f}" for d in domains)
            regret = f"{e['regret']:.2f}" if e.get("regret") is not None else ""
            cost = f"{e['cost']:.1f}" if e.get("cost") is not None else ""
            lines.append(f"| {method} | {weights} | {e['bpb']:.4f} ± {e['std']:.4f} | {_change(e.get('vs_natural'))} | "
                         f"{_change(e.get('vs_uniform'))} | {regret} | {e['macro']:.4f} | {e['worst']:.4f} | {cost} |")
        grid = [r for r in rows if r["target"] == target and r["method"] == "grid"]
        if grid:
            points: dict[int, list[dict]] = {}
            for r in grid:
                points.setdefault(r["grid_point"], []).append(r)
            ranked = sorted(points.values(), key=lambda rs: np.mean([r["target_bpb"] for r in rs]))
            lines += ["", f"Grid ({len(points)} mixtures, {len(ranked[0])} seed(s) each), best five and worst:", "",
                      "| weights | target bpb | macro bpb |", "| --- | ---: | ---: |"]
            for rs in ranked[:5] + ranked[-1:]:
                weights = " / ".join(f"{rs[0]['weights'].get(d, 0):.2f}" for d in domains)
                lines.append(f"| {weights} | {np.mean([r['target_bpb'] for r in rs]):.4f} | {np.mean([r['macro_bpb'] for r in rs]):.4f} |")
        lines.append("")
    for method, what in GOAL_ARMS.items():
        if any(method in entries for entries in table.values()):
            lines += [f"## The goals, for STRIDE's weights (`{method}`: {what})", "", *goals(table, method, rows), ""]
    if transfer:
        lines += transfer_lines(table, summary(transfer), recipe, rows, transfer)
    stability = [r for r in diagnostics if r["diagnostic"] == "stability"]
    if stability:
        lines += ["## Stability of the weights", "", "The largest change of any domain's weight when the method's input changes "
                  "(STRIDE's per-document and guarded arms and the similarity ablation: each half of the target's items; DoReMi and DoGE: "
                  "seed 0 and 1).", "",
                  "| target | method | varied | weights (" + " / ".join(domains) + ") | largest difference |", "| --- | --- | --- | --- | ---: |"]
        for r in stability:
            variants = "; ".join(" / ".join(f"{v.get(d, 0):.2f}" for d in domains) for v in r["variants"])
            lines.append(f"| {r['target']} | {r['method']} | {r['varied']} | {variants} | {r['max_weight_difference']:.3f} |")
        lines.append("")
    for r in (r for r in diagnostics if r["diagnostic"] == "groups"):
        per_domain = ", ".join(f"{d} {n}" for d, n in sorted(r["groups_per_domain"].items()))
        formed = (f"The run clustered its chunks into {r['chunk_groups']} recovery groups; {r['groups']} of them hold most of some "
                  f"document's tokens, and those are the domains `--domain-field groups` gives. "
                  if "chunk_groups" in r else f"The run's {r['groups']} recovery groups (`--domain-field groups`). ")
        lines += ["## Recovery groups as domains", "", formed + "Against "
                  f"the true domains, token-weighted: purity {r['purity']:.3f} (the share of a group's tokens in its majority "
                  f"domain), inverse purity {r['inverse_purity']:.3f} (the share of a domain's tokens in its largest group). "
                  f"Groups whose majority is each domain: {per_domain}.", ""]
    return "\n".join(lines)


def grid_within(rows: list[dict], target: str, macro_limit: float) -> dict | None:
    """The grid mixture of lowest mean target bpb among those whose mean macro bpb is at most `macro_limit`."""
    points: dict[int, list[dict]] = {}
    for r in rows:
        if r["target"] == target and r["method"] == "grid":
            points.setdefault(r["grid_point"], []).append(r)
    allowed = [rs for rs in points.values() if np.mean([r["macro_bpb"] for r in rs]) <= macro_limit]
    if not allowed:
        return None
    best = min(allowed, key=lambda rs: np.mean([r["target_bpb"] for r in rs]))
    return {"weights": best[0]["weights"], "bpb": float(np.mean([r["target_bpb"] for r in best])),
            "macro": float(np.mean([r["macro_bpb"] for r in best]))}


def grid_points(rows: list[dict], target: str) -> dict[int, float]:
    """Each grid mixture's mean target bpb over its seeds."""
    points: dict[int, list[float]] = {}
    for r in rows:
        if r["target"] == target and r["method"] == "grid":
            points.setdefault(r["grid_point"], []).append(r["target_bpb"])
    return {point: float(np.mean(values)) for point, values in points.items()}


def grid_transfer_line(small_rows: list[dict], large_rows: list[dict], target: str) -> str | None:
    """Spearman's rho across the grid mixtures between the scales, and where each scale's best mixture ranks at the other."""
    from scipy.stats import spearmanr

    small, large = grid_points(small_rows, target), grid_points(large_rows, target)
    shared = sorted(set(small) & set(large))
    if len(shared) < 3:
        return None
    a, b = np.array([small[p] for p in shared]), np.array([large[p] for p in shared])
    rho = spearmanr(a, b).statistic
    rank_in_large = int((b < b[int(np.argmin(a))]).sum()) + 1  # the small scale's best mixture, ranked at the larger
    rank_in_small = int((a < a[int(np.argmin(b))]).sum()) + 1
    return (f"Grid: Spearman's rho = {rho:.2f} over {len(shared)} mixtures between the scales; the small proxy's best mixture "
            f"ranks {rank_in_large} of {len(shared)} at the larger one, whose best ranks {rank_in_small} at the small one.")


def transfer_lines(small: dict[str, dict[str, dict]], large: dict[str, dict[str, dict]], recipe: dict,
                   small_rows: list[dict], large_rows: list[dict]) -> list[str]:
    """The arms at the larger proxy beside the small one, the rank correlation of their order across scales and, where
    the grid was trained at both, the rank correlation across the grid's mixtures."""
    from scipy.stats import spearmanr

    model = (recipe.get("reweight", {}).get("transfer") or {}).get("model", {})
    lines = ["## Transfer to a larger proxy", "",
             f"Every arm's mixture (the same datasets) trained at {', '.join(f'{k} {v}' for k, v in model.items())}, the same "
             "steps; Spearman's rho between the arms' mean target bpb at the two scales"
             + (", and between the grid mixtures' (the grid at the transfer seeds)." if any(r["method"] == "grid" for r in large_rows) else "."), ""]
    for target, entries in large.items():
        methods = [m for m in entries if m in small.get(target, {})]
        rho = spearmanr([small[target][m]["bpb"] for m in methods], [entries[m]["bpb"] for m in methods]).statistic if len(methods) > 2 else None
        lines += [f"### {target}: rho = {rho:.2f} over {len(methods)} arms" if rho is not None else f"### {target}", ""]
        grid_line = grid_transfer_line(small_rows, large_rows, target)  # under its target's heading
        if grid_line:
            lines += [grid_line, ""]
        lines += ["| method | small proxy bpb | larger proxy bpb | larger: vs natural |", "| --- | ---: | ---: | --- |"]
        for method in sorted(methods, key=lambda m: entries[m]["bpb"]):
            lines.append(f"| {method} | {small[target][method]['bpb']:.4f} | {entries[method]['bpb']:.4f} ± {entries[method]['std']:.4f} | "
                         f"{_change(entries[method].get('vs_natural'))} |")
        lines.append("")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    rows = [r for r in rows if "diagnostic" not in r]
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary(rows)
    domains = list(rows[0].get("domain_bpb", {}))
    figure, axes = plt.subplots(2, len(table), figsize=(5.5 * len(table), 6.5), squeeze=False)
    for column, (target, entries) in enumerate(table.items()):
        methods = sorted(entries, key=lambda m: entries[m]["bpb"])
        axis = axes[0, column]
        axis.barh(range(len(methods)), [entries[m]["bpb"] for m in methods], xerr=[entries[m]["std"] for m in methods],
                  color=["tab:red" if m.startswith("stride") else "tab:gray" if m in REFERENCES else "tab:blue" for m in methods])
        axis.set_yticks(range(len(methods)), methods, fontsize=8)
        low = min(entries[m]["bpb"] - entries[m]["std"] for m in methods)
        axis.set_xlim(low - 0.02 * abs(low), None)
        axis.invert_yaxis()
        axis.set_title(f"{target}: target bits per byte (lower is better)", fontsize=9)
        axis = axes[1, column]
        left = np.zeros(len(methods))
        for d in domains:
            share = np.array([entries[m]["weights"].get(d, 0) for m in methods])
            axis.barh(range(len(methods)), share, left=left, label=d)
            left += share
        axis.set_yticks(range(len(methods)), methods, fontsize=8)
        axis.invert_yaxis()
        axis.set_title("the mixture's weights", fontsize=9)
        axis.legend(frameon=False, fontsize=7, ncol=len(domains), loc="lower center", bbox_to_anchor=(0.5, -0.25))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
