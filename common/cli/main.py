"""`fedtl`: the front door; parses arguments once into a RunConfig (or a daemon's options)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from client.supernode import HEARTBEAT_SECONDS, POLL_SECONDS
from common.cli.options import (HelpFormatter, add_settings, preset_overridden, preset_text,
                                settings_from)
from common.config import BASE_DTYPES, ENGINE, SCENARIO, TRAINING, RunConfig
from common.errors import ConfigError, FedtlError, exit_codes_help
from common.model_card import card_markdown, global_accuracy, read_model_card
from common.noised_figures import noised_figures
from common.privacy.accounting import ACCOUNTANTS
from common.privacy.oneshot import NOISE_SHARE_WARNING
from common.privacy.policy import ACTIONS, SitePolicy
from common.report import FinalFigures, Report
from common.privacy.release import COUNT_MODES, METRIC_MODES

_P = SitePolicy()


def _simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulate a whole federation in one process",
                       formatter_class=HelpFormatter)
    _simulation_options(p)


def _compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="run several strategies on one simulated scenario and "
                       "write one comparison report with plots",
                       formatter_class=HelpFormatter)
    p.add_argument("--variants", default="fedavg,fedprox,fedadam,fedavg+personalize",
                   help="comma-separated variants: a strategy, optionally ':<head>' (sgd, "
                   "ridge, ridge+sgd), ':nodp' (the same federation without DP) and "
                   "'+personalize', e.g. fedavg:ridge:nodp; or 'pooled' (all sites' training "
                   "images in one place, a non-private logistic-regression head: the "
                   "reference) or 'local' (each site's own such head of its own images "
                   "alone: what a site gets without any federation)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per variant (fresh DP noise each, the same --seed and so the same "
                   "partition); figures are their mean ± sd")
    _simulation_options(p)


def _simulation_options(p: argparse.ArgumentParser) -> None:
    add_settings(p, SCENARIO, TRAINING, ENGINE)
    p.add_argument("--out", default=None, help="output folder (default: runs/<time>)")
    p.add_argument("--verbose", action="store_true", help="show Flower's, Ray's and "
                                                          "TensorFlow's logs")


def _server_parser(sub: Any) -> None:
    p = sub.add_parser("server", help="the server daemon (Flower SuperLink, TLS and site "
                       "authentication on)", formatter_class=HelpFormatter)
    p.add_argument("--state", required=True, help="the daemon's state folder (database, runs)")
    p.add_argument("--certs", default=None,
                   help="folder with ca.crt, server.pem, server.key (`fedtl certs`)")
    p.add_argument("--sites", default=None,
                   help="folder with the public key (<site>.pub) of every site allowed to join")
    p.add_argument("--insecure", action="store_true",
                   help="no TLS, no site authentication (experiments on a trusted network only)")
    p.add_argument("--address", default="0.0.0.0:9092", help="where sites connect (gRPC)")
    p.add_argument("--control-host", default="127.0.0.1",
                   help="interface for launching runs (`fedtl run`); 0.0.0.0 to allow remote")
    p.add_argument("--control-port", type=int, default=9093,
                   help="port for launching runs (`fedtl run`; Flower's control API)")
    _log_format_option(p)


def _log_format_option(p: argparse.ArgumentParser) -> None:
    from common.deploy.daemon_log import LOG_FORMATS

    p.add_argument("--log-format", choices=LOG_FORMATS, default="plain",
                   help="plain lines, or one JSON object per line (time, level, source, "
                        "message) for log collectors; Flower's lines are relayed either way")


def _sites_parser(sub: Any) -> None:
    p = sub.add_parser("sites", help="add, remove or list the sites of a running `fedtl "
                       "server` (no restart)", formatter_class=HelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a site's public key; it may connect at "
                             "once and trains in the next run", formatter_class=HelpFormatter)
    add.add_argument("--key", required=True, help="the site's public key (<site>.pub)")
    add.add_argument("--name", default=None, help="its name (default: the key file's name)")
    remove = actions.add_parser("remove", help="unregister a site; its key is moved aside",
                                formatter_class=HelpFormatter)
    remove.add_argument("name", help="the site's name (see `fedtl sites list`)")
    show = actions.add_parser("list", help="registered sites and whether they are connected",
                              formatter_class=HelpFormatter)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    for action in (add, remove, show):
        action.add_argument("--state", required=True,
                            help="the server's state folder (`fedtl server --state`)")
        action.epilog = exit_codes_help()


def _client_parser(sub: Any) -> None:
    p = sub.add_parser("client", help="one site (Flower SuperNode) on its own image folder",
                       formatter_class=HelpFormatter)
    p.add_argument("--server", required=True, help="the server's address, host:9092")
    p.add_argument("--data", required=True, help="this site's folder, one subfolder per class")
    p.add_argument("--state", required=True,
                   help="this site's state folder (privacy ledger, feature cache)")
    p.add_argument("--budget", type=float, required=True,
                   help="the most epsilon this site will ever spend, over all runs")
    p.add_argument("--delta", type=float, default=1e-5, help="delta of the site's budget")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp",
                   help="how this site composes its budget over all runs, whatever a run was "
                   "calibrated with: rdp, or pld (tighter: a run calibrated with pld fits a "
                   "budget equal to its target only under pld)")
    p.add_argument("--name", default=None, help="site name in reports (default: key file name)")
    g = p.add_argument_group(
        "site policy", "what this site grants any run, whatever the server asks; a --policy "
        "file (TOML) holds the full set, these flags override it; defaults are the safe ones")
    g.add_argument("--policy", default=None, help="the site's policy file (TOML)")
    g.add_argument("--allow-no-dp", action="store_true", default=None,
                   help="admit runs without DP (the ledger then records infinite epsilon)")
    g.add_argument("--max-run-epsilon", type=float, default=None,
                   help=f"most epsilon one run may spend (default {_P.max_run_epsilon})")
    g.add_argument("--min-noise-multiplier", type=float, default=None,
                   help=f"least DP-SGD noise multiplier (default {_P.min_noise_multiplier})")
    g.add_argument("--max-sampling-rate", type=float, default=None,
                   help=f"largest Poisson sampling rate (default {_P.max_sampling_rate})")
    g.add_argument("--example-counts", choices=COUNT_MODES, default=None,
                   help=f"loosest count release allowed (default {_P.example_counts})")
    g.add_argument("--site-metrics", choices=METRIC_MODES, default=None,
                   help=f"loosest held-out figure release allowed (default {_P.site_metrics})")
    g.add_argument("--require-secure-aggregation", action="store_true", default=None,
                   help="refuse runs whose updates are not masked by SecAgg+")
    g.add_argument("--distributed-noise-sites", type=int, default=None,
                   help="N >= 2: under secure aggregation over at least N sites, add 1/N of "
                        "the one-shot release's noise variance, trusting the others to add "
                        "theirs (default 0: all of it here)")
    g.add_argument("--allow-joint-personal-heads", action="store_true", default=None,
                   help="let a run build this site's personal head from its images without "
                        "noise (--personal-tuning joint: nothing about it leaves, but the "
                        "model file here is not DP for them); default: such runs get the "
                        "DP `ridge` personal head")
    g.add_argument("--on-violation", choices=ACTIONS, default=None,
                   help="a run asking for less privacy: tighten it to the policy, or refuse "
                        f"it (default {_P.on_violation})")
    g.add_argument("--require-approval", action="store_true", default=None,
                   help="admit only runs approved with `fedtl approve` (or matching the "
                        "policy's approved-runs patterns)")
    p.add_argument("--key", default=None, help="this site's private key (`fedtl keys`)")
    p.add_argument("--ca", default=None, help="the server's CA certificate (ca.crt)")
    p.add_argument("--insecure", action="store_true", help="no TLS, no key (experiments only)")
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="do not keep extracted features in the state folder")
    p.add_argument("--base-dtype", choices=BASE_DTYPES, default="",
                   help="this site's arithmetic for the frozen base, whatever the run says "
                        "(default: as the run says; auto uses bfloat16 where the CPU has it)")
    p.add_argument("--verbose", action="store_true",
                   help="show TensorFlow's start-up messages from the site's worker")
    p.add_argument("--max-wait", type=float, default=None,
                   help="give up after this many seconds without the server (default: never)")
    p.add_argument("--poll", type=float, default=POLL_SECONDS, metavar="SECONDS",
                   help="how often the site asks the server for its next message while a "
                        "run is under way (a message in the last 30 s); an idle site slows to "
                        "Flower's own 3 s (default: %(default)s)")
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_SECONDS, metavar="SECONDS",
                   help="how often the site tells the server it is alive; the server counts "
                        "a site gone after two missed, and until then a round waits for it "
                        f"(10-1800; default: {HEARTBEAT_SECONDS:g}, Flower's)")
    _log_format_option(p)


def _run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="launch a training run on a running `fedtl server`",
                       formatter_class=HelpFormatter)
    p.add_argument("--server", default="127.0.0.1:9093",
                   help="the server's control address (`fedtl server --control-port`)")
    p.add_argument("--ca", default=None, help="the server's CA certificate")
    p.add_argument("--insecure", action="store_true", help="the server runs with --insecure")
    p.add_argument("--classes", default=None, help="the federation's classes, comma-separated")
    p.add_argument("--classes-from", default=None,
                   help="take the classes from this folder's subfolders (e.g. a public sample)")
    p.add_argument("--out", required=True,
                   help="output folder on the server's host (report.json, model.keras)")
    p.add_argument("--detach", action="store_true", help="submit and return; do not follow")
    add_settings(p, TRAINING)


def _certs_parser(sub: Any) -> None:
    p = sub.add_parser("certs", help="a test CA and server certificate (not for production)")
    p.add_argument("--out", required=True, help="folder for ca.crt, server.pem, server.key")
    p.add_argument("--host", action="append", default=None,
                   help="name or IP the server is reached at (repeatable; default: "
                        "localhost and 127.0.0.1)")
    p.add_argument("--days", type=int, default=365, help="how long the certificates are valid")


def _keys_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="a site's key pair for site authentication")
    p.add_argument("--out", required=True, help="folder for <name>.key and <name>.pub")
    p.add_argument("--name", required=True, help="the site's name")


def _budget_parser(sub: Any) -> None:
    p = sub.add_parser("budget", help="a site's privacy ledger and its decisions on runs")
    p.add_argument("--state", required=True, help="the site's state folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _approve_parser(sub: Any) -> None:
    p = sub.add_parser("approve", help="approve a run at a site whose policy requires it")
    p.add_argument("--state", required=True, help="the site's state folder")
    p.add_argument("run_id", metavar="RUN-ID", help="the run to admit (its id, as the site's "
                                                    "log or `fedtl budget` shows it)")
    p.add_argument("--by", default=None, help="who approves (default: the current user)")


def _demo_data_parser(sub: Any) -> None:
    p = sub.add_parser("demo-data", help="write the bundled digits as site image folders")
    p.add_argument("--out", required=True, help="folder to write site-1, site-2, ... into")
    p.add_argument("--sites", type=int, default=3, help="how many site folders to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the split among the sites")


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="accuracy of a saved model on an image folder")
    p.add_argument("--model", required=True, help="a model.keras written by fedtl")
    p.add_argument("--data", required=True, help="folder with one subfolder per class")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images out (counted) instead of failing")
    p.add_argument("--dicom-window", default="",
                   help="center,width for DICOM images (default: as in training, from the "
                        "report beside the model; else each file's own window)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's messages")


def _export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="a saved model for TF Serving (savedmodel) or phones "
                                      "and edge devices (tflite), with its model card")
    p.add_argument("--model", required=True, help="a model.keras written by fedtl")
    p.add_argument("--format", required=True,
                   help="savedmodel, tflite, or both comma-separated (the model is loaded "
                        "once); onnx: not available (tf2onnx is not installed), says why")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's messages")


def _audit_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="membership-inference attacks on a saved model: can they "
                                     "tell its training images from others?")
    p.add_argument("--model", required=True, help="a model.keras written by fedtl")
    p.add_argument("--members", required=True,
                   help="class folders of images the model was trained on")
    p.add_argument("--nonmembers", required=True,
                   help="class folders of images from the same source it never saw")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images out (counted) instead of failing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's messages")


def _run_audit(args: argparse.Namespace) -> int:
    from common.privacy.membership import audit

    result = audit(Path(args.model), args.members, args.nonmembers,
                   skip_bad=args.skip_bad_images)
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    print(f"membership inference on {result.model}: {result.members} members, "
          f"{result.nonmembers} non-members (accuracy {result.member_accuracy:.3f} vs "
          f"{result.nonmember_accuracy:.3f})")
    for name, figures in result.attacks.items():
        print(f"  {name:<20} AUC {figures['auc']:.3f}  advantage {figures['advantage']:.3f}")
    print(f"strongest attack: {result.attack}, AUC {result.auc:.3f}, advantage "
          f"{result.advantage:.3f} (0.5 and 0: members cannot be told apart)")
    return 0


def _run_simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import simulate

    out = args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = _settings(args, out=out)
    report = simulate(cfg, verbose=args.verbose)
    _print_summary(report, out)
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from simulations.compare import compare, parse_variants

    out = args.out or f"runs/compare-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = _settings(args, out=out)
    result = compare(cfg, parse_variants(args.variants), repeats=args.repeats,
                     verbose=args.verbose)
    print()
    print(result["table"])
    print(f"written: {out}/report.json and {out}/*.png; each variant's run in {out}/<variant>/")
    return 0


def _settings(args: argparse.Namespace, **fixed: Any) -> RunConfig:
    """settings_from, saying what a --preset set: a user should see what ran."""
    cfg = settings_from(args, **fixed)
    if args.preset:
        kept = preset_overridden(args)
        print(f"preset {args.preset}: {preset_text(args.preset)}"
              + (f" (given beside it: {' '.join(kept)})" if kept else "")
              + (" (compare: each variant says whether it personalizes)"
                 if args.command == "compare" else ""), flush=True)
    return cfg


def _print_summary(report: Report, out: str) -> None:
    final = report.final
    print()
    if final.accuracy is None:
        print("final held-out accuracy: not released by the sites (--site-metrics none)")
    else:
        site_mean = global_accuracy(report)["mean_site"]
        mean = f"mean over sites {site_mean:.4f}, " if site_mean is not None else ""
        print(f"final held-out accuracy (global head): {mean}weighted by held-out images "
              f"{final.accuracy:.4f}")
    if final.worst_site_accuracy is not None:
        own, sites = final.per_site_personal_accuracy or {}, final.per_site_accuracy
        which = ("global head" if not final.personalized
                 else "global head; no site released its own head's figures" if not own
                 else "own heads" if set(own) >= set(sites)
                 else f"own heads where released ({len(own)} of {len(sites)}), else global")
        print(f"per site ({which}): worst {final.worst_site_accuracy:.4f}, mean "
              f"{final.mean_site_accuracy:.4f}, spread (std) {final.site_accuracy_std:.4f}")
        against = _own_against_global(final)
        if against:
            print(against)
    if final.unseen_domain_accuracy is not None:
        print(f"unseen-domain site (global head): {final.unseen_domain_accuracy:.4f}")
    if final.private:
        print(f"epsilon per site at delta={final.delta}: "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(final.epsilon.items()))
              + f" (budget {final.target_epsilon})")
    else:
        print("no record-level differential privacy (--no-dp)")
    one_shot = next((r for r in report.rounds if r.noise_share is not None), None)
    if one_shot is not None:
        penalty = f", ridge penalty {one_shot.ridge_lambda:.3g}" \
            if one_shot.ridge_lambda is not None else ""
        print(f"one-shot head: {min(one_shot.noise_share, 1.0):.0%} of its scores' spread is "
              f"the release's noise" + (" (mostly noise: it scores near chance)"
                                        if one_shot.noise_share >= NOISE_SHARE_WARNING else "")
              + penalty)
    noised = noised_figures(report)
    if noised is not None:
        print(noised.describe())
    record_level = report.guarantees.record_level
    if record_level.released_outside_guarantee:
        print("released by sites outside that guarantee: "
              + ", ".join(record_level.released_outside_guarantee))
    for site, changes in sorted(record_level.tightened_by_sites.items()):
        print(f"{site} played the run under its own policy: {'; '.join(changes)}")
    client_level = report.guarantees.client_level
    if client_level.get("private"):
        print(f"client-level epsilon (a whole site) at delta={client_level['delta']}: "
              f"{client_level['epsilon']:.3f} after {client_level['releases']} noised "
              f"aggregates ({client_level['clipping']} clipping, final clip norm "
              f"{client_level['clip_norm']:.3g})")
    print(f"time: {report.timing.total_seconds:.1f} s in all, "
          f"{report.timing.feature_extraction_seconds:.1f} s extracting features")
    print(f"written: {out}/report.json, {out}/model.keras with {out}/model_card.md, "
          f"{out}/accuracy.png, {out}/epsilon.png, "
          f"{out}/tensorboard/ (uv run --with tensorboard tensorboard --logdir {Path(out).parent})")


def _own_against_global(final: FinalFigures) -> str | None:
    """Each site's own head against the global head on the same held-out images: a mean
    over own heads alone hides that on alike sites they cost (README: Personalization)."""
    gain = final.personal_gain()
    if gain is None:
        return None
    gains = list(gain.per_site.values())
    higher, lower = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    line = (f"own heads against the global head on the same sites: {higher} higher, {lower} "
            f"lower, {100 * gain.mean:+.1f} points on average")
    if len(gains) > 1:
        line += (f", the worst site {100 * gain.worst:+.1f} ({gain.worst_own:.3f} "
                 f"against {gain.worst_global:.3f})")
    if lower > len(gains) / 2:
        line += ("; here the global head is the better model for most sites (own heads help "
                 "where sites differ and cost where they are alike)")
    return line


def _run_evaluate(args: argparse.Namespace) -> int:
    from common.features.evaluation import evaluate_model

    result = evaluate_model(args.model, args.data, skip_bad=args.skip_bad_images,
                            dicom_window=args.dicom_window)
    card = read_model_card(Path(args.model))
    if args.json:
        print(json.dumps({**asdict(result), "model_card": card}))
        return 0
    if card is not None:
        print(card_markdown(card))
    print(f"accuracy {result.accuracy:.4f} on {result.n} images "
          f"({len(result.classes)} classes, {result.skipped} skipped)")
    print(evaluation_table(result.classes, result.confusion))
    return 0


# Beyond this many classes the matrix no longer fits a terminal; --json still has it.
CONFUSION_MAX_CLASSES = 12


def evaluation_table(classes: tuple[str, ...], confusion: tuple[tuple[int, ...], ...]) -> str:
    """Each class's recall and image count, and the confusion matrix when it fits a terminal.

    The matrix's columns are numbered like its rows, so long class names do not widen it.
    """
    width = max(len("class"), *(len(c) for c in classes))
    index = len(str(len(classes) - 1))
    lines = [f"{'':>{index}} {'class':<{width}}  recall  images"]
    for i, name in enumerate(classes):
        n = sum(confusion[i])
        recall = f"{confusion[i][i] / n:6.3f}" if n else f"{'-':>6}"
        lines.append(f"{i:>{index}} {name:<{width}}  {recall}  {n:6d}")
    if len(classes) > CONFUSION_MAX_CLASSES:
        lines.append(f"confusion matrix: {len(classes)} classes, in --json")
        return "\n".join(lines)
    cell = max(len(str(max(max(row) for row in confusion))), index) + 1
    lines.append("confusion matrix (rows: true class, columns: predicted class)")
    lines.append(" " * (index + 1) + "".join(f"{i:>{cell}}" for i in range(len(classes))))
    for i, row in enumerate(confusion):
        lines.append(f"{i:>{index}} " + "".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)


def _run_export(args: argparse.Namespace) -> int:
    from common.features.export import export_model, parse_formats

    for target in export_model(Path(args.model), parse_formats(args.format), Path(args.out)):
        print(f"written: {target} (input: float32 RGB images, pixels 0..255)")
    return 0


def _check_export(args: argparse.Namespace) -> None:
    from common.features.export import parse_formats

    parse_formats(args.format)


def _run_server(args: argparse.Namespace) -> int:
    from server.daemon import ServerOptions, serve

    opts = ServerOptions(state=Path(args.state), certs=_path(args.certs), sites=_path(args.sites),
                         insecure=args.insecure, fleet_address=args.address,
                         control_host=args.control_host, control_port=args.control_port)
    return serve(opts, _daemon_log("fedtl.server", args))


def _daemon_log(name: str, args: argparse.Namespace) -> logging.Logger:
    from common.deploy.daemon_log import daemon_logger

    return daemon_logger(name, args.log_format)


def _run_sites(args: argparse.Namespace) -> int:
    from server.site_admin import add_site, list_sites, remove_site

    if args.action == "add":
        site = add_site(Path(args.state), Path(args.key), args.name)
        print(f"site {site.name} registered (node {site.node_id}, key {site.fingerprint}); "
              "it may connect now and takes part in the next run")
    elif args.action == "remove":
        site = remove_site(Path(args.state), args.name)
        print(f"site {site.name} (node {site.node_id}) removed: its key no longer lets it "
              f"connect; the key file is kept in {Path(args.state) / 'removed-sites'}")
    else:
        rows = list_sites(Path(args.state))
        if args.json:
            print(json.dumps([asdict(r) for r in rows]))
            return 0
        print(f"{'site':<20} {'node':>20}  {'status':<10}  since")
        for r in rows:
            print(f"{r.name or '(unnamed)':<20} {r.node_id:>20}  {r.status:<10}  {r.since}")
    return 0


def _site_policy(args: argparse.Namespace) -> SitePolicy:
    """The policy file's settings, with the flags given on the command line over them."""
    base = SitePolicy.load(Path(args.policy).expanduser()) if args.policy else SitePolicy()
    flags = {f.name: getattr(args, f.name) for f in fields(SitePolicy)
             if getattr(args, f.name, None) is not None}
    return SitePolicy.from_mapping({**base.to_mapping(),
                                    **{k.replace("_", "-"): v for k, v in flags.items()}})


def _run_client(args: argparse.Namespace) -> int:
    from client.daemon import ClientOptions, run_site
    from common.privacy.ledger import SiteBudget

    key = _path(args.key)
    name = args.name or (key.stem if key else Path(args.data).name)
    opts = ClientOptions(server=args.server, data=Path(args.data), state=Path(args.state),
                         budget=SiteBudget(args.budget, args.delta, args.accountant),
                         name=name, key=key, ca=_path(args.ca), insecure=args.insecure,
                         cache=args.cache, max_wait=args.max_wait, poll=args.poll,
                         heartbeat=args.heartbeat,
                         policy=_site_policy(args), base_dtype=args.base_dtype)
    return run_site(opts, _daemon_log("fedtl.client", args), verbose=args.verbose)


def _run_run(args: argparse.Namespace) -> int:
    from common.deploy.control import ControlAddress
    from common.data.images import list_dataset
    from server.launch import launch

    if (args.classes is None) == (args.classes_from is None):
        raise ConfigError("give the federation's classes: --classes a,b,c or --classes-from DIR")
    classes = (tuple(c for c in args.classes.split(",") if c) if args.classes is not None
               else list_dataset(args.classes_from).classes)
    cfg = _settings(args, classes=classes, dataset="site-folders",
                    out=str(Path(args.out).expanduser().resolve()),
                    clients=max(1, args.min_sites))
    target = ControlAddress(args.server, ca=_path(args.ca), insecure=args.insecure)
    report = launch(cfg, target, follow=not args.detach)
    if report is not None:
        _print_summary(report, cfg.out)
    elif not args.detach:
        print(f"run finished; its report is in {cfg.out} on the server's host")
    return 0


def _run_certs(args: argparse.Namespace) -> int:
    from common.deploy.credentials import make_test_certs

    certs = make_test_certs(Path(args.out), args.host or ["localhost", "127.0.0.1"], args.days)
    print(f"test CA and server certificate written: {certs.ca} (give to sites and to "
          f"`fedtl run --ca`), {certs.cert} and {certs.key} (server only)")
    return 0


def _run_keys(args: argparse.Namespace) -> int:
    from common.deploy.credentials import key_fingerprint, make_site_keys

    keys = make_site_keys(Path(args.out), args.name)
    print(f"site key pair written: {keys.private} (stays at the site, `fedtl client --key`) "
          f"and {keys.public} (goes into the server's --sites folder); fingerprint "
          f"{key_fingerprint(keys.public.read_bytes())}")
    return 0


def _run_budget(args: argparse.Namespace) -> int:
    from common.privacy.audit_trail import AuditTrail
    from common.privacy.ledger import PrivacyLedger

    state = Path(args.state)
    if not state.is_dir():
        raise ConfigError(f"site state folder {state} does not exist")
    summary = PrivacyLedger(state).summary()
    trail = AuditTrail(state)
    if args.json:
        print(json.dumps({**asdict(summary),
                          "decisions": [asdict(d) for d in trail.decisions()]}))
        return 0
    if summary.budget is None:
        print(f"{state}: no budget recorded yet; spent epsilon {summary.spent:.4f}")
    else:
        print(f"{state}: spent epsilon {summary.spent:.4f} of {summary.budget} at delta "
              f"{summary.delta} ({summary.accountant}, all runs composed); remaining "
              f"{summary.remaining:.4f}")
    for run, spending in summary.runs.items():
        if not spending["private"]:
            print(f"  run {run}: NOT PRIVATE (trained without DP, allowed by the site's "
                  f"policy): epsilon infinite, {spending['steps']} steps")
            continue
        rate = spending["sampling_rate"]
        print(f"  run {run}: epsilon {spending['epsilon']:.4f} (delta {spending['delta']}), "
              f"{spending['steps']} steps in {spending['events']} charges, noise multiplier "
              f"{spending['noise_multiplier']:.4f}, last sampling rate "
              + ("-" if rate is None else f"{rate:.4f}"))
        if spending.get("epsilon_on_its_own") is not None:
            print(f"    its one-shot release carried 1/N of the noise (distributed under secure "
                  f"aggregation): on its own, without the other sites' noise, epsilon "
                  f"{spending['epsilon_on_its_own']:.4f}")
    decisions = trail.decisions()
    if decisions:
        print("decisions on runs (audit trail):")
    for d in decisions:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at))
        detail = d.reason or "; ".join(d.changes)
        print(f"  {when}  run {d.run_id}: {d.decision}" + (f" ({detail})" if detail else ""))
    if trail.damaged_lines():
        print(f"  warning: {trail.damaged_lines()} damaged line(s) in {trail.path} skipped")
    return 0


def _run_approve(args: argparse.Namespace) -> int:
    import getpass

    from common.privacy.audit_trail import AuditTrail
    from common.config import valid_run_id

    state = Path(args.state).expanduser()
    if not state.is_dir():
        raise ConfigError(f"site state folder {state} does not exist")
    if not valid_run_id(args.run_id):
        raise ConfigError(f"{args.run_id!r} is not a run id (letters, digits, '.', '_', '-')")
    AuditTrail(state).approve(args.run_id, by=args.by or getpass.getuser())
    print(f"run {args.run_id} approved at {state}; the site admits it from its next message")
    return 0


def _run_demo_data(args: argparse.Namespace) -> int:
    from common.data.demo import write_demo_sites

    for folder in write_demo_sites(Path(args.out), args.sites, args.seed):
        print(folder)
    return 0


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


COMMANDS = {"simulate": _run_simulate, "compare": _run_compare, "evaluate": _run_evaluate,
            "export": _run_export, "server": _run_server,
            "client": _run_client, "run": _run_run, "audit": _run_audit,
            "certs": _run_certs, "keys": _run_keys,
            "budget": _run_budget, "approve": _run_approve, "demo-data": _run_demo_data,
            "sites": _run_sites}


class _PrintVersion(argparse.Action):
    """argparse's own version action rewraps the text into one paragraph; one line a package."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        # The versions every report and model card records; metadata only, no TensorFlow.
        from common.report import versions

        print("\n".join(f"{name} {found}" for name, found in versions().items()))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The `fedtl` command line with all its subcommands."""
    parser = argparse.ArgumentParser(prog="fedtl", description=__doc__,
                                     epilog=exit_codes_help())
    parser.add_argument("--version", action=_PrintVersion,
                        help="print fedtl's version and its stack's, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_simulate_parser, _compare_parser, _evaluate_parser, _export_parser,
                _audit_parser,
                _server_parser, _sites_parser, _client_parser,
                _run_parser, _certs_parser, _keys_parser, _budget_parser, _approve_parser,
                _demo_data_parser):
        add(sub)
    for command in sub.choices.values():
        command.epilog = exit_codes_help()
    return parser


# Commands that load TensorFlow in this process.
USES_TENSORFLOW = frozenset({"simulate", "compare", "evaluate", "export", "audit"})
# Checks of their arguments that need no TensorFlow: a mistake costs no TensorFlow start.
CHECKS_BEFORE_TENSORFLOW = {"export": _check_export}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in CHECKS_BEFORE_TENSORFLOW:
            CHECKS_BEFORE_TENSORFLOW[args.command](args)
        if args.command in USES_TENSORFLOW:
            from common.deploy.quiet import load_tensorflow

            load_tensorflow(verbose=getattr(args, "verbose", False))
        return COMMANDS[args.command](args)
    except FedtlError as exc:
        print(f"fedtl: error: {exc}", file=sys.stderr)
        return exc.exit_code


