"""Round 1 of a ridge run: every site's one-shot class sums, summed and solved on the server."""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common import protocol
from common.config import RunConfig
from common.errors import UpdateRejectedError
from common.privacy.hull import HullPrior, project_release
from common.privacy.oneshot import (NOISE_SHARE_WARNING, PublicBasis, moment_matrix,
                                    noise_share, release_head, release_shapes, summed_std,
                                    sums_std)
from common.privacy.penalty import run_penalty
from common.privacy.release import sums_noise
from server.replies import capped_weights, check_sums_reply
from server.runbook import RunBook
from server.strategy import Validated

log = logging.getLogger("fedtl.server")


def solve_release(book: RunBook, totals: list[np.ndarray], count: float, basis: PublicBasis,
                  cfg: RunConfig, sites: int, prior: HullPrior | None = None) -> None:
    """The ridge head of the sites' summed release becomes the global head; the sum is kept
    (denoised by ``prior`` where it applies) for personal heads built from it
    (``--personal-tuning ridge``, ``ridge+bias``)."""
    # The run's planned noise, not what sites state: a site cannot talk the server out of
    # the warning, nor into a smaller penalty, by stating less.
    std = summed_std(sums_std(sums_noise(cfg), cfg.private_moment), sites,
                     cfg.sums_noise == "distributed")
    penalty = run_penalty(cfg, std, count, basis.variances)
    book.current.ridge_lambda = penalty
    if cfg.ridge_penalty == "noise":
        log.info(f"ridge penalty {penalty:.3g}, set from the release's noise ({std:.3g} per "
                 f"entry of the sums of {count:.0f} images)")
    note_noise_share(book, totals, count, basis, penalty, std, sites)
    if prior is not None:
        projection = project_release(totals[0], prior, sites)
        book.current.hull_distance = dict(zip(cfg.classes, map(float, projection.distances)))
        (log.info if projection.projected.all() else log.warning)(
            f"public hull prior, each class's distance from the hull in noise norms: "
            f"{projection.summary(cfg.classes)}")
        totals = [projection.release, *totals[1:]]
    book.one_shot = (totals, count)
    book.close_training(release_head(totals, count, basis, penalty))


def note_noise_share(book: RunBook, totals: list[np.ndarray], count: float,
                     basis: PublicBasis, penalty: float, std: float, sites: int) -> None:
    """Record and log how much of the head the release's noise makes (``std``: the summed
    release's planned noise per entry), and warn when it is mostly noise: the release is
    spent by then, but the operator learns why the head scores near chance and what to
    change."""
    moment = moment_matrix(totals[1], basis.components.shape[1]) if len(totals) > 1 else None
    share = noise_share(totals[0], count, basis.variances, penalty, std, moment)
    book.current.noise_share = share
    message = (f"the one-shot head's scores: {min(share, 1.0):.0%} of their spread is the "
               f"release's noise ({sites} site(s), {count:.0f} images, "
               f"{basis.components.shape[1]} components)")
    if share < NOISE_SHARE_WARNING:
        log.info(message)
        return
    log.warning(f"warning: {message}: the head is mostly noise and will score near chance. More "
                f"images per site, more sites, fewer --public-components (now "
                f"{basis.components.shape[1]}) or a larger epsilon would help.")


def one_shot_round(grid: Grid, cfg: RunConfig, federation: ConfigRecord, basis: PublicBasis,
                   strategy: Validated, prior: HullPrior | None = None) -> None:
    """Ask every site for its noised class sums in ``basis``, solve the ridge head from their
    total, then have the sites score it: round 1 of the run, recorded like any other."""
    book, rules = strategy.book, strategy.rules
    book.begin_round(1, book.head)
    _, nodes = sample_nodes(grid, cfg.required_sites, 0)  # waits for the sites to connect
    content = RecordDict({protocol.PUBLIC: ArrayRecord(basis.arrays()),
                          protocol.CONFIG: ConfigRecord({**dict(federation),
                                                         protocol.PUBLIC_RECIPE: basis.recipe})})
    messages = [Message(content=content, dst_node_id=node,
                        message_type=f"train.{protocol.CLASS_SUMS}") for node in nodes]
    shapes = release_shapes(basis.components.shape[1], len(cfg.classes), cfg.private_moment)
    accepted = []
    for reply in grid.send_and_receive(messages, timeout=cfg.round_timeout):
        if reply.has_error():
            book.note_error(reply.metadata.src_node_id, reply.error.code, reply.error.reason)
            continue
        try:
            update = check_sums_reply(reply, shapes, basis.fingerprint, rules)
        except UpdateRejectedError as exc:
            book.reject(reply.metadata.src_node_id, exc)
            continue
        book.accept(update)
        accepted.append(update)
    if len(accepted) < (cfg.min_sites or 1):
        book.fail_round(f"only {len(accepted)} site(s) released class sums, fewer than the "
                        f"{cfg.min_sites or 1} required (--min-sites)")
        book.close_training(None)
    else:
        # A site's count weighs at most max-weight-ratio times the others' median, as in
        # every average, so one reply cannot shrink the solution by claiming a huge count.
        counts = capped_weights([u.num_examples for u in accepted], cfg.max_weight_ratio)
        totals = [np.sum([u.arrays[i].astype(np.float64) for u in accepted], axis=0)
                  for i in range(len(shapes))]
        solve_release(book, totals, float(sum(counts)), basis, cfg, len(accepted), prior)
    messages = strategy.configure_evaluate(1, ArrayRecord(book.head),
                                           ConfigRecord(dict(federation)), grid)
    strategy.aggregate_evaluate(1, grid.send_and_receive(list(messages),
                                                         timeout=cfg.round_timeout))
