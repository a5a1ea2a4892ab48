"""A reweighting's report: the new mixture beside the natural and uniform ones, per domain (Markdown and a plot)."""

from __future__ import annotations

import io
from typing import Any

from .domain_effects import TRUST_Z


def weights_plot(record: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = [d["domain"] for d in record["domains"]]
    figure, axis = plt.subplots(figsize=(max(4.5, 1.1 * len(domains) + 2), 3.2))
    width = 0.27
    for offset, key, label in ((-width, "natural", "natural (tokens)"), (0.0, "uniform", "uniform"), (width, "weight", "reweighted")):
        axis.bar([i + offset for i in range(len(domains))], [d[key] for d in record["domains"]], width, label=label)
    axis.set_xticks(range(len(domains)), domains, fontsize=8)
    axis.set_ylabel("share of the mixture's tokens")
    rule = record["rule"]
    how = "proportional" if rule and rule.get("weighting") == "proportional" else f"eta {rule['eta']}" if rule else ""
    title = f"mode {rule['mode']}, {how}, cap {rule['max_epochs']} epochs" if rule else "a given mixture"
    axis.set_title(title, fontsize=9)
    axis.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def _read_as(record: dict[str, Any]) -> str:
    if record.get("aggregation") == "domain-regression":
        return "read per domain by regressing the target's responses on each subset's tokens of each domain"
    if record.get("aggregation") == "domain-operators":
        return "read per domain as the target's loss drop under operators trained on each whole domain"
    return f"per document ({record.get('aggregation') or 'positive'}) and summed over each domain's tokens"


def markdown(record: dict[str, Any], request: dict[str, Any], sampled: dict[str, dict[str, int]] | None) -> str:
    rule = record["rule"]
    if rule is None:
        return _given_markdown(record, request, sampled)
    signal = "influence" if record["method"] == "stride-influence" else f"{record['method'].removesuffix('-influence')} score"
    lines = [
        "# Mixture weights", "",
        f"Target: {record['target']}. Run: {record['run']}. Budget: {record['budget_tokens']:,} tokens "
        f"(the corpus has {record['corpus_tokens']:,}). Signal: {signal}, {_read_as(record)}.", "",
        _rule_line(rule), "",
        "| domain | documents | tokens | natural | uniform | weight | epochs at budget | influence / token | ± s.e. |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in record["domains"]:
        lines.append(f"| {d['domain']} | {d['documents']:,} | {d['tokens']:,} | {d['natural']:.3f} | {d['uniform']:.3f} | "
                     f"**{d['weight']:.3f}** | {d['epochs']:.2f} | {d['influence_per_token']:.3g} | {d['standard_error']:.2g} |")
    lines += _unhelped_lines(record) + _check_lines(record) + _guard_lines(record)
    if len(record.get("parts", {})) > 1:
        lines += ["", "Parts of the target and their say in the weights: "
                  + ", ".join(f"{p} {w:.2f}" for p, w in record["parts"].items()) + "."]
    return "\n".join(lines + _sampled_lines(record, request, sampled)) + "\n"


def _rule_line(rule: dict[str, Any]) -> str:
    if rule.get("weighting") == "proportional":
        how = (f"Rule: w = each domain's share of the target's total positive influence (influence per token x tokens; "
               f"the optimum of a loss logarithmic in each domain's share; mode `{rule['mode']}`)")
    else:
        how = (f"Rule: w ∝ {rule['prior']} · exp({rule['eta']} · z), z = each domain's influence per token against the "
               f"others', in units of their spread beyond noise and shrunk by its standard error across domains "
               f"(mode `{rule['mode']}`)")
    return (f"{how}, smoothed with {rule['smoothing']:.0%} of the {rule['prior']} mixture, at most "
            f"{rule['max_epochs']:g} epochs of any domain.")


def unhelped_note(record: dict[str, Any]) -> str | None:
    """What to tell a user whose target no domain helps: the weights are the prior's for want of evidence, not a finding."""
    unhelped = record.get("unhelped_parts") or []
    if not unhelped:
        return None
    used = {part for part, say in record["parts"].items() if say > 0}
    which = "the target" if set(unhelped) >= used else "parts " + ", ".join(unhelped) + " of the target"
    return (f"no domain's influence on {which} is positive, so the {record['rule']['prior']} mixture is kept there: the "
            "reading found nothing to move it by (a model that has memorised its corpus reads every dose as harmful to "
            "unseen text); check a mixture with a proxy (`curate retrain`, `curate eval`)")


def _unhelped_lines(record: dict[str, Any]) -> list[str]:
    note = unhelped_note(record)
    return ["", note[0].upper() + note[1:] + "."] if note else []


def _check_lines(record: dict[str, Any]) -> list[str]:
    check = record.get("own_domain_check")
    if not check:
        return []
    against = [c["domain"] for c in check["domains"] if c["z"] < 0]
    verdict = (f"pooled over the domains, more of a domain helps its own held-out chunks (z = {check['pooled_z']:+.1f}), "
               "so the domain-level reading of the design was used" if check["trusted"] else
               f"pooled over the domains, the run does not show that more of a domain helps its own held-out chunks "
               f"(z = {check['pooled_z']:+.1f}, needs > {TRUST_Z}): its operators do not measure what more of a domain "
               f"does, so the influence is read per document ({record['aggregation']}) instead")
    if against:
        verdict += f"; read against their own text: {', '.join(against)}"
    lines = ["", f"Own-domain check (`--rule auto`): {verdict}.", "",
             "| domain | effect on its own held-out chunks, per token, beyond the mean | ± s.e. | z |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {c['domain']} | {c['own_effect']:.3g} | {c['standard_error']:.2g} | {c['z']:+.1f} |" for c in check["domains"]]
    return lines


def _guard_lines(record: dict[str, Any]) -> list[str]:
    guard = record.get("guard")
    if not guard:
        return []
    if guard.get("note"):
        return ["", f"Macro guard: {guard['note']}; the weights are the rule's."]
    shares = ", ".join(f"{d['domain']} {share:.2f}" for d, share in zip(record["domains"], guard["shares"]))
    how = ("each domain's slope read from the domain operators' doses on held-out chunks"
           if record["rule"]["guard"] == "measured" else "every domain's loss falling alike with the log of its share")
    before = "it leaves out a domain" if guard["predicted_before"] is None else f"{guard['predicted_before']:+.3f}"
    moved = (f"the rule's mixture raises it ({before}), so the weights moved {guard['alpha']:.2f} of the way to that "
             "optimum, where it is back to natural's" if guard["alpha"] > 0 else
             f"the rule's mixture does not raise it ({before}): the weights are the rule's")
    return ["", f"Macro guard ({how}): the domains' mean loss is lowest at {shares}; {moved} (before smoothing and the "
            "epoch cap)."]


def _given_markdown(record: dict[str, Any], request: dict[str, Any], sampled: dict[str, dict[str, int]] | None) -> str:
    lines = [
        "# A given mixture", "",
        f"Run: {record['run']}. Budget: {record['budget_tokens']:,} tokens (the corpus has {record['corpus_tokens']:,}). "
        "The weights were given, not computed; epochs beyond the corpus repeat documents.", "",
        "| domain | documents | tokens | natural | uniform | weight | epochs at budget |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in record["domains"]:
        lines.append(f"| {d['domain']} | {d['documents']:,} | {d['tokens']:,} | {d['natural']:.3f} | {d['uniform']:.3f} | "
                     f"**{d['weight']:.3f}** | {d['epochs']:.2f} |")
    return "\n".join(lines + _sampled_lines(record, request, sampled)) + "\n"


def _sampled_lines(record: dict[str, Any], request: dict[str, Any], sampled: dict[str, dict[str, int]] | None) -> list[str]:
    lines: list[str] = []
    if sampled is not None:
        lines += ["", f"Resampled dataset: {request['out_data']} (uniform inside each domain; seed {request['seed']}).", "",
                  "| domain | documents drawn | copies written | passes over the domain |", "| --- | ---: | ---: | ---: |"]
        for d in record["domains"]:
            counts = sampled.get(d["domain"], {"documents": 0, "copies": 0})
            lines.append(f"| {d['domain']} | {counts['documents']:,} | {counts['copies']:,} | {counts['copies'] / d['documents']:.2f} |")
    return lines
