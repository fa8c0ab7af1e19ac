"""Capacity bars per GPU model, drawn on the server as inline SVG (like charts.py): one row per model,
on one scale of GPUs, so models compare at a glance.

In each row, from the left: GPUs used by ready replicas; GPUs waiting replicas need that the free GPUs can
hold; then those they cannot (beyond the nodes' edge). A solid line marks the GPUs on the nodes, a dashed
one what the quotas promise: a dashed line right of the solid one is an oversubscribed model.
Pure functions of serving.capacity's figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.capacity import ModelCapacity

WIDTH, ROW, LABEL = 600, 34, 0
BAR = 16


@dataclass(frozen=True)
class Segment:
    x: float
    width: float
    kind: str  # used, waiting, short
    label: str


@dataclass(frozen=True)
class Row:
    title: str
    summary: str
    y: float
    segments: list[Segment]
    nodes_x: float
    quota_x: float
    oversubscribed: bool


@dataclass(frozen=True)
class CapacityChart:
    rows: list[Row]
    width: int
    height: int
    scale: int  # GPUs the full width stands for


def capacity_chart(models: list[ModelCapacity]) -> CapacityChart:
    scale = max(
        [1] + [max(m.on_nodes, m.promised_by_quotas, m.used_by_replicas + m.waiting_gpus) for m in models]
    )

    def x(gpus: float) -> float:
        return round(WIDTH * gpus / scale, 2)

    rows = []
    for index, model in enumerate(models):
        fits = min(model.waiting_gpus, model.free)
        parts = [
            ("used", 0, model.used_by_replicas, f"{model.used_by_replicas} GPUs used by ready replicas"),
            ("waiting", model.used_by_replicas, fits, f"{fits} GPUs wanted by waiting replicas, free now"),
            (
                "short",
                model.used_by_replicas + fits,
                model.waiting_without_room,
                f"{model.waiting_without_room} GPUs wanted by waiting replicas that do not fit",
            ),
        ]
        segments = [
            Segment(x=x(start), width=x(size), kind=kind, label=label)
            for kind, start, size, label in parts
            if size
        ]
        nodes = f"{model.nodes} node{'s' if model.nodes != 1 else ''}"
        summary = (
            f"{model.used_by_replicas} used of {model.on_nodes} on {nodes}; quotas promise "
            f"{model.promised_by_quotas}; {model.waiting_gpus} waiting"
        )
        rows.append(
            Row(
                title=model.gpu_model,
                summary=summary,
                y=index * ROW,
                segments=segments,
                nodes_x=x(model.on_nodes),
                quota_x=x(model.promised_by_quotas),
                oversubscribed=model.oversubscribed,
            )
        )
    return CapacityChart(rows=rows, width=WIDTH, height=max(ROW, ROW * len(rows)), scale=scale)
