"""Interactive viewers (ipywidgets) over inspected images, with a static fallback for batch runs.

A viewer holds controls (model, image, object, layer, head, ...) and an ``Output`` widget; any
control change calls :meth:`Viewer.update`, which redraws the matplotlib figure into the output.
``viewer.show()`` displays the controls and the figure in JupyterLab. Where no frontend can
drive widgets (papermill, ``nbconvert --execute``, a plain Python process) the viewer is
*static*: ``show()`` renders one figure for the current selection instead, so an executed
notebook keeps a picture rather than a dead widget. ``static=None`` (default) decides with
:func:`is_static_context`; pass ``static=True/False`` to force it.

Viewers build and update without a display: tests call :meth:`Viewer.update` directly and read
:attr:`Viewer.figure`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import clear_output, display

from attnkit.viz.attention import plot_object_attention
from attnkit.viz.labels import normalizer_label
from attnkit.viz.matching import plot_cost_terms, plot_matching, plot_query_scores

__all__ = ["AttentionViewer", "MatchingViewer", "Viewer", "is_static_context"]

STATIC_ENV = "ATTNKIT_STATIC_WIDGETS"


def is_static_context() -> bool:
    """Whether widgets cannot be used interactively here.

    ``$ATTNKIT_STATIC_WIDGETS`` decides when set (``1``/``0``). Otherwise static outside an
    IPython kernel (plain Python, terminal IPython), and static in a kernel whose current cell
    was sent without stdin: batch executors (papermill, nbconvert, nbclient) run cells with
    ``allow_stdin=False``, while JupyterLab, Notebook and VS Code allow it.
    """
    env = os.environ.get(STATIC_ENV)
    if env is not None:
        return env.strip().lower() not in ("", "0", "false", "no")
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipywidgets
        return True
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return True
    parent = kernel.get_parent() if hasattr(kernel, "get_parent") else {}
    return not parent.get("content", {}).get("allow_stdin", True)


class Viewer:
    """Controls + an output that a matplotlib figure is redrawn into; see the module docstring.

    Subclasses build ``self.controls`` (a list of widgets) and implement :meth:`render`.
    """

    def __init__(self, static: bool | None = None) -> None:
        self.static = is_static_context() if static is None else bool(static)
        self.output = widgets.Output()
        self.figure = None
        self.controls: list[widgets.Widget] = []
        self._hold = False
        self._box = None

    def render(self):
        """A new figure for the current selection."""
        raise NotImplementedError

    def _watch(self) -> None:
        for control in self.controls:
            control.observe(self.update, names="value")

    def update(self, change=None):
        """Redraw the figure (the controls' callback); returns it."""
        if self._hold:
            return self.figure
        old, self.figure = self.figure, self.render()
        if old is not None:
            plt.close(old)
        if not self.static:
            with self.output:
                clear_output(wait=True)
                display(self.figure)
        plt.close(self.figure)  # keep pyplot from showing it a second time at the cell's end
        return self.figure

    def widget(self) -> widgets.Widget:
        """The controls above the figure output (built once)."""
        if self._box is None:
            rows = [widgets.HBox(self.controls[:3]), widgets.HBox(self.controls[3:])]
            self._box = widgets.VBox([*rows, self.output])
        return self._box

    def show(self):
        """Display the viewer (interactive) or one figure of the current selection (static)."""
        if self.static:
            fig = self.render()
            display(fig)
            plt.close(fig)
            self.figure = fig
            return fig
        self.update()
        display(self.widget())
        return self.widget()

    def _ipython_display_(self) -> None:
        self.show()


def _dropdown(description: str, options, width: str = "15em") -> widgets.Dropdown:
    return widgets.Dropdown(
        options=options,
        description=description,
        layout=widgets.Layout(width=width),
        style={"description_width": "initial"},
    )


class _InspectionViewer(Viewer):
    """Shared model and image pickers over ``{model label: [ImageInspection, ...]}``."""

    def __init__(self, inspections: Mapping[str, Sequence], static: bool | None = None) -> None:
        super().__init__(static)
        if not inspections or not all(len(v) for v in inspections.values()):
            raise ValueError("need at least one model with at least one inspected image")
        self.inspections = {k: list(v) for k, v in inspections.items()}
        first = next(iter(self.inspections.values()))
        models = [(normalizer_label(k), k) for k in self.inspections]
        self.model = _dropdown("model", models, "18em")
        images = [(f"#{ins.image_id}", k) for k, ins in enumerate(first)]
        self.image = _dropdown("image", images, "10em")

    @property
    def current(self):
        """The :class:`ImageInspection` of the selected model and image."""
        return self.inspections[self.model.value][self.image.value]


class AttentionViewer(_InspectionViewer):
    """Pick a model, an image and an object; slide through decoder layers and heads.

    The figure (:func:`~attnkit.viz.attention.plot_object_attention`) shows the image with the
    object's predicted and matched ground-truth boxes, and the chosen cross-attention map.
    Objects are the ground-truth objects (each model shows the query it matched to it, so
    switching models keeps the object) and each model's unmatched detections.
    """

    def __init__(
        self, inspections: Mapping[str, Sequence], static: bool | None = None, width: float = 1.0
    ) -> None:
        super().__init__(inspections, static)
        self.width = width
        first = self.current
        self.object = _dropdown("object", self._object_options(), "24em")
        self.layer = widgets.SelectionSlider(
            options=[(str(layer + 1), pos) for pos, layer in enumerate(first.layers)],
            value=len(first.layers) - 1,
            description="layer",
        )
        self.head = widgets.IntSlider(0, 0, first.num_heads - 1, description="head")
        self.average = widgets.Checkbox(False, description="mean over heads", indent=False)
        self.controls = [self.model, self.image, self.object, self.layer, self.head, self.average]
        self.model.observe(self._refresh_objects, names="value")
        self.image.observe(self._refresh_objects, names="value")
        self._watch()

    def _object_options(self) -> list[tuple[str, tuple[str, int]]]:
        ins = self.current
        options = []
        for t, label in enumerate(ins.gt_labels.tolist()):
            q = ins.query_of(t)
            where = f"q{q} {float(ins.scores[q]):.2f}" if q is not None else "unmatched"
            options.append((f"GT {t} {ins.class_name(label)} -> {where}", ("gt", t)))
        matched = set(ins.match_queries.tolist())
        for q in ins.objects():
            if q not in matched:
                name = ins.class_name(ins.labels[q])
                options.append(
                    (f"q{q} {name} {float(ins.scores[q]):.2f} (unmatched)", ("query", q))
                )
        return options or [("(no object)", ("none", -1))]

    def _refresh_objects(self, change=None) -> None:
        """New object options for the selected model and image, keeping the object if it can."""
        previous = self.object.value
        self._hold = True
        try:
            options = self._object_options()
            self.object.options = options
            values = [v for _, v in options]
            self.object.value = previous if previous in values else values[0]
        finally:
            self._hold = False

    @property
    def query(self) -> int | None:
        kind, k = self.object.value
        if kind == "gt":
            return self.current.query_of(k)
        return k if kind == "query" else None

    def render(self):
        ins = self.current
        query = self.query
        if query is None:
            fig, ax = plt.subplots(figsize=(3, 1))
            ax.axis("off")
            ax.text(0.5, 0.5, "no object to show", ha="center", va="center")
            return fig
        head = None if self.average.value else self.head.value
        layer = ins.layers[self.layer.value]
        return plot_object_attention(ins, query, layer=layer, head=head, width=self.width)


class MatchingViewer(_InspectionViewer):
    """Pick a model and an image; see its matched pairs, cost terms or query scores."""

    VIEWS = ("matched pairs", "cost terms", "query scores")

    def __init__(self, inspections: Mapping[str, Sequence], static: bool | None = None) -> None:
        super().__init__(inspections, static)
        self.view = widgets.ToggleButtons(options=self.VIEWS, description="view")
        self.unmatched = widgets.ToggleButtons(
            options=["all", "detected", "none"], value="all", description="unmatched"
        )
        self.controls = [self.model, self.image, self.view, self.unmatched]
        self._watch()

    def render(self):
        ins = self.current
        if self.view.value == "cost terms":
            return plot_cost_terms(ins)
        if self.view.value == "query scores":
            return plot_query_scores(ins)
        return plot_matching(ins, unmatched=self.unmatched.value)
