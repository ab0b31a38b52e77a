"""TensorBoard event files of a run, in its output folder: `tensorboard --logdir runs/`.

Written with TensorFlow's core `tf.summary.write` (already loaded by the server for the
base), one step per round; the settings go in once as a text table. `tf.summary.scalar` and
`tf.summary.text` live in the tensorboard package, which a run does not need: the summaries
are tagged for TensorBoard's scalars and text plugins by hand, as those functions do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.report import RoundRecord, round_metrics

FOLDER = "tensorboard"


class TensorBoardLog:
    """Per-round curves of one run: accuracy (mean, worst, unseen, per site), epsilon (max
    over sites, per site, client-level), train loss, seconds."""

    def __init__(self, out: Path, settings: Mapping[str, Any]) -> None:
        self._out, self._settings = Path(out), dict(settings)
        self._writer: Any = None

    def _open(self) -> Any:
        # Opened at the first round, not before it: TensorFlow loads beside that round.
        if self._writer is not None:
            return self._writer
        import tensorflow as tf
        from tensorflow.core.framework.summary_pb2 import SummaryMetadata

        self._tf = tf
        self._scalar = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="scalars")).SerializeToString()
        text = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name="text")).SerializeToString()
        self._writer = tf.summary.create_file_writer(str(self._out / FOLDER))
        rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(self._settings.items()))
        with self._writer.as_default():
            tf.summary.write("settings", tf.constant(
                f"| setting | value |\n| --- | --- |\n{rows}"), step=0, metadata=text)
        self._writer.flush()
        return self._writer

    def round(self, record: RoundRecord, epsilon_by_site: Mapping[str, float]) -> None:
        """The figures of ``record`` at step ``record.round``."""
        with self._open().as_default():
            for tag, value in round_metrics(record, epsilon_by_site).items():
                self._tf.summary.write(tag, self._tf.constant(value, self._tf.float32),
                                       step=record.round, metadata=self._scalar)
        self._writer.flush()

    def close(self) -> None:
        self._open().close()
