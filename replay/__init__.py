"""Replay: read the log (from JetStream or an exported file), travel in time, draw the causal
timeline of a workflow, export and import slices, re-run handlers against the record, and
fork a workflow to continue it live. Nothing here calls a model; only `fork` and
`import_log` write to a live log."""

from mesh.errors import ReplayIsolationError
from replay.causal import belongs, causal_slice, children_of, derivation_label
from replay.context import Effect, RecordBook, RecordedMesh, ReplayContext, ReplayLlmSession
from replay.export import ExportResult, ImportResult, export_log, import_log
from replay.files import iter_file, read_file
from replay.fork import ForkResult, fork, fork_log, plan_fork
from replay.reader import (
    LogReader,
    LogSlice,
    Position,
    RawMessage,
    ScanReport,
    parse_position,
    read_log,
    read_slice,
    subject_matches,
)
from replay.rerun import Divergence, RerunResult, rerun, rerun_file, rerun_log
from replay.state import (
    SNAPSHOT_BUCKET,
    Rebuilt,
    SnapshotStore,
    pick,
    projection_named,
    rebuild,
    rebuild_all,
    rebuild_file,
    state_from_file,
    state_from_records,
)
from replay.timeline import Hop, Timeline, build_timeline, render_text
from replay.timeline_html import render_html
from replay.traces import ReplayedSpan, export_traces, rebuild_traces

__all__ = [
    "SNAPSHOT_BUCKET",
    "Divergence",
    "Effect",
    "ExportResult",
    "ForkResult",
    "Hop",
    "ImportResult",
    "LogReader",
    "LogSlice",
    "Position",
    "RawMessage",
    "Rebuilt",
    "RecordBook",
    "RecordedMesh",
    "ReplayedSpan",
    "ReplayContext",
    "ReplayIsolationError",
    "ReplayLlmSession",
    "RerunResult",
    "ScanReport",
    "SnapshotStore",
    "Timeline",
    "belongs",
    "build_timeline",
    "causal_slice",
    "children_of",
    "derivation_label",
    "export_log",
    "export_traces",
    "fork",
    "fork_log",
    "import_log",
    "iter_file",
    "parse_position",
    "pick",
    "plan_fork",
    "projection_named",
    "read_file",
    "read_log",
    "read_slice",
    "rebuild",
    "rebuild_all",
    "rebuild_traces",
    "rebuild_file",
    "render_html",
    "render_text",
    "rerun",
    "rerun_file",
    "rerun_log",
    "state_from_file",
    "state_from_records",
    "subject_matches",
]
