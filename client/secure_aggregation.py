"""A site's side of secure aggregation: Flower's SecAgg+ mod, applied when the server asks.

Flower 1.39's SecAgg+ runs on its legacy message format (FitIns/FitRes); fedtl's handlers
speak the Message API. `legacy_messages_mod` translates between the two so the same train
and evaluate code serves both, and `secure_aggregation_mod` hands a round to Flower's
`secaggplus_mod` only when the message carries its stage configuration.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters,
                         parameters_to_ndarrays)
# Flower's own SecAgg+ mod converts with this module; the Message API has no public twin.
from flwr.compat.common import recorddict_compat as compat

from common import protocol

SECAGG_CONFIGS = "secaggplus_configs"  # the record Flower's SecAgg+ workflow adds


class SiteRefused(Exception):
    """The site declined or refused; carries the error reply through Flower's mod."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.reason)
        self.error = error


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's SecAgg+ for the rounds that use it; a refusal stays a refusal (for
    SecAgg+, a site that declines its masked round is a dropout it recovers from)."""
    try:
        if msg.has_content() and SECAGG_CONFIGS in msg.content.config_records:
            return secaggplus_mod(msg, ctxt, call_next)
        return call_next(msg, ctxt)
    except SiteRefused as refused:
        return Message(refused.error, reply_to=msg)


def masked_over(msg: Message, ctxt: Context) -> int:
    """How many sites the sum this reply goes into must include: the SecAgg+ threshold when
    Flower's mod is masking this reply (it calls the handlers only in that stage, after its
    setup stored the threshold), else 0."""
    if SECAGG_CONFIGS not in msg.content.config_records:
        return 0
    state = ctxt.state.config_records.get(RECORD_KEY_STATE)
    threshold = state.get("threshold") if state is not None else None
    return threshold if isinstance(threshold, int) and threshold > 0 else 0


def _marked(config: ConfigRecord, over: int) -> ConfigRecord:
    return ConfigRecord({**dict(config), protocol.MASKED_OVER: over})


def legacy_messages_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Serve a legacy FitIns/EvaluateIns with the Message API handlers and answer in kind.

    Every request leaves here with `protocol.MASKED_OVER` set by the site itself (a value the
    server sent is overwritten): the release decides its noise from it.
    """
    if not msg.has_content():
        return call_next(msg, ctxt)
    content = msg.content
    kind = msg.metadata.message_type
    prefix = {MessageType.TRAIN: "fitins", MessageType.EVALUATE: "evaluateins"}.get(kind)
    if prefix is None or f"{prefix}.parameters" not in content.array_records:
        if protocol.CONFIG in content.config_records:
            content.config_records[protocol.CONFIG] = _marked(
                content.config_records[protocol.CONFIG], 0)
        return call_next(msg, ctxt)
    parameters = compat.arrayrecord_to_parameters(content.array_records[f"{prefix}.parameters"],
                                                  keep_input=True)
    # The config record is taken as it is: the class list is a list, no legacy Scalar.
    modern = Message(content=RecordDict({
        protocol.ARRAYS: ArrayRecord(parameters_to_ndarrays(parameters)),
        protocol.CONFIG: _marked(content.config_records[f"{prefix}.config"],
                                 masked_over(msg, ctxt)),
    }), metadata=msg.metadata)
    reply = call_next(modern, ctxt)
    if reply.has_error():
        raise SiteRefused(reply.error)
    metrics = dict(reply.content.metric_records[protocol.METRICS])
    site = reply.content.config_records[protocol.SITE]
    # A legacy reply has no room for the site record: its two strings travel as metrics.
    figures = {**metrics, **{k: str(v) for k, v in site.items()}}
    ok = Status(code=Code.OK, message="")
    if msg.metadata.message_type == MessageType.TRAIN:
        arrays = reply.content.array_records[protocol.ARRAYS].to_numpy_ndarrays()
        _check_within_clip(arrays, modern.content.config_records[protocol.CONFIG], figures)
        out = compat.fitres_to_recorddict(FitRes(
            status=ok, parameters=ndarrays_to_parameters(arrays),
            num_examples=int(metrics[protocol.NUM_EXAMPLES]), metrics=figures), keep_input=True)
    else:
        out = compat.evaluateres_to_recorddict(EvaluateRes(
            status=ok, loss=0.0, num_examples=int(metrics[protocol.NUM_EXAMPLES]),
            metrics=figures))
    return Message(out, reply_to=msg)


def _check_within_clip(arrays: list, config: ConfigRecord, figures: dict) -> None:
    """Refuse to send a head SecAgg+ would clip: it clips every weight to [-clip, clip]
    silently, which would corrupt the sum without anyone noticing."""
    clip = config.get(protocol.SECAGG_CLIP)
    if not isinstance(clip, (int, float)):
        return
    largest = max(float(np.abs(a).max()) for a in arrays)
    if largest > clip:
        raise SiteRefused(Error(code=protocol.INCOMPATIBLE, reason=(
            f"site {figures[protocol.SITE_NAME]}: its head has a weight of {largest:.3g}, "
            f"beyond secure aggregation's clip of {clip}; SecAgg+ would clip it silently. "
            "Raise --secagg-clip")))
