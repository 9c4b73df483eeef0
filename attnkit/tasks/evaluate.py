"""One streamed evaluation pass of a model over a loader, for any task's evaluator."""

from __future__ import annotations

import torch

from attnkit.tasks.base import Evaluator


@torch.no_grad()
def run_evaluation(
    model, evaluator: Evaluator, loader, device, amp_dtype=None, progress: bool = True
) -> dict:
    """Feed every batch of ``loader`` through ``model`` into ``evaluator``; its metrics.

    The outputs are ``evaluator.predict(model, batch)`` when the evaluator has that (optional)
    method, e.g. sliding-window prediction, else ``model(**batch.inputs)``. An empty loader is
    an error rather than metrics of nothing.
    """
    from tqdm.auto import tqdm

    model.eval()
    predict = getattr(evaluator, "predict", None)
    seen = 0
    for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False):
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = predict(model, batch) if predict is not None else model(**batch.inputs)
        evaluator.update(outputs, batch)
        seen += len(batch)
    if seen == 0:
        raise ValueError("the evaluation split is empty: no metrics to compute")
    return evaluator.compute()
