"""The update (and the figures) a site last released in a run, kept so that a reply the
server lost can be sent again without training or charging.

An update that already left the site costs nothing to send a second time: it is the same
output of the same mechanism (post-processing). A server that restarts after a site trained
a round, but before it aggregated the reply, asks for that round again with the same global
head; the site answers with what it sent before, so a coordinator crash does not make honest
sites pay twice for one round. Held-out figures are kept the same way, apart from updates (an
evaluation between two train requests must not displace the update): asked again about the
same head, a site answers with the noised figures it already released.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.personal import run_dir
from common.storage import write_atomically

FILE = "last-update.npz"
# What else a site answers again unchanged, each kept apart from the update: the held-out
# figures of an evaluation, and those of a personalization.
KINDS = {"update": FILE, "evaluate": "last-evaluate.npz", "personalize": "last-personalize.npz"}


@dataclass(frozen=True)
class KeptUpdate:
    """A released update and the figures sent with it."""

    weights: list[np.ndarray]
    figures: dict[str, int | float]


def request_key(head: list[np.ndarray], proximal_mu: float) -> str:
    """What a train request asks, as a digest: the global head it starts from and FedProx's
    mu (the run's settings are fixed by its run key)."""
    digest = hashlib.sha256(repr(float(proximal_mu)).encode())
    for w in head:
        a = np.ascontiguousarray(w)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def keep(state: Path, run_key: str, key: str, update: KeptUpdate, kind: str = "update"
         ) -> None:
    """Keep ``update`` as the answer to request ``key`` (replacing the run's previous one of
    this ``kind``), written before the reply leaves."""
    buffer = io.BytesIO()
    np.savez(buffer, *update.weights,
             meta=np.array(json.dumps({"key": key, "kind": kind, "figures": update.figures})))
    write_atomically(run_dir(state, run_key) / KINDS[kind],
                     lambda h: h.write(buffer.getvalue()))


def recall(state: Path, run_key: str, key: str, kind: str = "update") -> KeptUpdate | None:
    """The answer of this ``kind`` kept for request ``key`` of run ``run_key``; None if the
    last one answered another request or cannot be read (the site then computes, and is
    charged, as usual)."""
    path = run_dir(state, run_key) / KINDS[kind]
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("key") != key or meta.get("kind", "update") != kind:
                return None
            weights = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
            figures = dict(meta["figures"])
            if not all(type(v) in (int, float) for v in figures.values()):
                return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    return KeptUpdate(weights, figures)
