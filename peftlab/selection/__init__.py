"""Gradient-based parameter selection: FISH masks (Sung et al., 2021), GPS (Zhang et al.,
CVPR 2024), SPT's sensitivity count (He et al., ICCV 2023), whole-tensor selection.

    selection.py  the math: scores from gradients (Fisher, |grad|, |w * grad|), masks at a
                  granularity, where the selected entries lie
    scores.py     compute_scores: the model run on a few batches (setup, accumulate, finish)
    fisher.py     per-example Fisher from one batched backward pass (Linear, Conv1D, Embedding,
                  LayerNorm, RMSNorm; tied weights; per-example loss normalisation)
    sparse.py     SparseDelta (W + scatter(values)), the fast path (no dense W + delta and no
                  dense weight gradient) and its wrappers SparseLinear / SparseEmbedding
    surgery.py    SelectionConfig, apply (score, select, attach deltas), masks_of, merge, unload
    format.py     saving / loading (indices + values; no batches needed to reload)

    pl.selection.apply(model, pl.selection.SelectionConfig(fraction=0.005), batches=batches)
"""

from peftlab.selection.format import (
    SUFFIXES,
    adapter_state_dict,
    load_adapter_state,
    prepare_load,
)
from peftlab.selection.scores import compute_scores
from peftlab.selection.selection import (
    GRANULARITIES,
    KINDS,
    LayerRow,
    candidate_names,
    layer_summary,
    make_masks,
    resolve_count,
)
from peftlab.selection.sparse import (
    SparseDelta,
    SparseEmbedding,
    SparseLayer,
    SparseLinear,
    sparse_embedding,
    sparse_linear,
)
from peftlab.selection.surgery import (
    SelectionConfig,
    apply,
    masks_of,
    merge,
    sparse_layers,
    unload,
)

__all__ = [
    "GRANULARITIES", "KINDS", "SUFFIXES", "LayerRow", "SelectionConfig", "SparseDelta",
    "SparseEmbedding", "SparseLayer", "SparseLinear",
    "adapter_state_dict", "apply", "candidate_names", "compute_scores", "layer_summary",
    "load_adapter_state", "make_masks", "masks_of", "merge", "prepare_load", "resolve_count",
    "sparse_embedding", "sparse_layers", "sparse_linear", "unload",
]
