"""The model card written beside every saved model: what a team receiving `model.keras` needs
to use it correctly and to know what it may claim about privacy.

It is a view of the run's report (`model_card.json`, and the same as Markdown in
`model_card.md`); `fedtl evaluate` prints it when it is beside the model it scores.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common.noised_figures import NoisedFigures, noised_figures
from common.report import Report
from common.storage import write_atomically, write_json_atomically

JSON_FILE, MARKDOWN_FILE = "model_card.json", "model_card.md"


def model_card(report: Report) -> dict[str, Any]:
    """The card of the model a run with ``report`` saved."""
    record = report.guarantees.record_level
    return {
        "model": "model.keras",
        "run_id": report.run_id,
        "classes": [c for c in str(report.settings.get("classes", "")).split(",") if c],
        "input": {"image_size": report.base.image_size, "channels": "RGB",
                  "pixel_range": "0..255 (the model preprocesses itself)",
                  "dicom": ("rescale slope/intercept, then window "
                            + (str(report.settings.get("dicom-window") or "")
                               or "from each file (else its full range)")
                            + ", to 8-bit grey as RGB")},
        # --feature-centring site: the head was trained on each site's features centred on
        # that site's own mean; a user must centre theirs on their own images' mean.
        "centred_features": report.settings.get("feature-centring") == "site",
        "base": {"weights": report.base.weights, "fingerprint": report.base.fingerprint,
                 "layer": report.base.base_layer, "preprocessing": report.base.preprocessing},
        "head": {"hidden_units": report.settings.get("head-width", 0),
                 "strategy": report.final.strategy},
        "privacy": {
            "record_level": {"private": record.private, "unit": record.unit,
                             "epsilon_per_site": report.final.epsilon,
                             "target_epsilon": record.target_epsilon, "delta": record.delta,
                             "accountant": record.accountant, "covers": record.covers,
                             "released_outside_guarantee": record.released_outside_guarantee},
            "client_level": report.guarantees.client_level,
            "secure_aggregation": report.guarantees.secure_aggregation,
        },
        "data": {"sites": sorted(report.sites),
                 "images_per_site": {s: e.get("images") for s, e in report.sites.items()},
                 "skipped_images": report.data.skipped_images},
        "held_out_accuracy": global_accuracy(report),
        "versions": report.versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The card as a short Markdown page."""
    record = card["privacy"]["record_level"]
    eps = record["epsilon_per_site"]
    if record["private"]:
        privacy = (f"record-level DP per site: epsilon at most {max(eps.values(), default=0):.3g}"
                   f" (target {record['target_epsilon']}), delta {record['delta']}, "
                   f"{record['accountant']} accountant; covers {', '.join(record['covers'])}")
    else:
        privacy = "**not private**: trained without differential privacy"
    outside = ", ".join(record["released_outside_guarantee"]) or "nothing"
    client = card["privacy"]["client_level"]
    client_text = (f"epsilon {client['epsilon']:.3g} at delta {client['delta']} (a whole site)"
                   if client.get("private") else "off")
    acc = card["held_out_accuracy"]
    lines = [
        f"# Model card: {card['model']} (run {card['run_id']}, {card['date']})", "",
        f"- Classes ({len(card['classes'])}): {', '.join(card['classes'])}",
        f"- Input: {card['input']['image_size']} x {card['input']['image_size']} "
        f"{card['input']['channels']}, pixels {card['input']['pixel_range']}",
        f"- Base: ImageNet VGG16 up to {card['base']['layer']} ({card['base']['weights']}), "
        f"fingerprint {card['base']['fingerprint']}; preprocessing "
        f"`{card['base']['preprocessing']}`",
        *([("- Features: the head expects features centred on the images' own mean "
            "(each site trained on its own centred features); `fedtl evaluate` centres a "
            "folder on its own mean, the saved model alone does not")]
          if card.get("centred_features") else []),
        f"- Head: {card['head']['hidden_units'] or 'linear'}"
        f"{' hidden units' if card['head']['hidden_units'] else ''}, "
        f"federated with {card['head']['strategy']}",
        f"- Privacy: {privacy}",
        f"- Released outside that guarantee: {outside}",
        f"- Client-level DP: {client_text}",
        f"- Sites: {', '.join(card['data']['sites'])}",
        f"- Held-out accuracy: mean over sites {_fmt(acc['mean_site'])}, worst site "
        f"{_fmt(acc['worst_site'])}, weighted by the sites' held-out images "
        f"{_fmt(acc['weighted_by_images'])}"
        + (f", unseen site {_fmt(acc['unseen_site'])}" if acc["unseen_site"] is not None
           else ""),
        *([f"- {_sentence(NoisedFigures(**acc['noised']).describe())}"]
          if acc.get("noised") else []),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
    ]
    return "\n".join(lines) + "\n"


def global_accuracy(report: Report) -> dict[str, Any]:
    """The saved model's (the global head's) held-out figures: each site counting once, and
    Flower's aggregate weighted by the sites' held-out counts. Not the personal heads' (the
    run's own summary may use those): they are not in `model.keras`."""
    per_site = report.final.per_site_global_accuracy or {}
    values = list(per_site.values())
    noised = noised_figures(report)
    return {"mean_site": statistics.fmean(values) if values else None,
            "weighted_by_images": report.final.accuracy,
            "worst_site": min(values) if values else None,
            "per_site": per_site, "unseen_site": report.final.unseen_domain_accuracy,
            # A noised figure read without its error can be 50 points off on a small split.
            "noised": None if noised is None else asdict(noised)}


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_model_card(folder: Path, report: Report) -> dict[str, Any]:
    """Write the card of the run's model into ``folder`` (JSON and Markdown)."""
    card = model_card(report)
    write_json_atomically(Path(folder) / JSON_FILE, card, mode=0o644)
    text = card_markdown(card).encode()
    write_atomically(Path(folder) / MARKDOWN_FILE, lambda h: h.write(text), mode=0o644)
    return card


def read_model_card(model_path: Path) -> dict[str, Any] | None:
    """The card beside ``model_path``, if there is a readable one."""
    path = Path(model_path).parent / JSON_FILE
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None
