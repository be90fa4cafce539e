"""Mixed precision as TRL and verl train: float32 master weights and AdamW state, forwards in `model.dtype`.

    model.dtype   optim.master_weights   weights + AdamW moments   forwards
    float32       (either)               float32                   float32
    bfloat16      float32 (default)      float32                   autocast to bfloat16 (matmuls; norms, softmax float32)
    bfloat16      model                  bfloat16                  bfloat16 (pure: a warning says why it is risky)
    float16       (either)               refused for training: float16 needs loss scaling, which is not built

Why the masters: AdamW's first step moves every weight by about lr. At lr 1e-6 that is below half a bfloat16 ulp for
almost every weight (the ulp of 0.02 is 2^-13 ≈ 1.2e-4), so bfloat16 weights round every update away and the run
learns nothing while its losses look normal. Float32 masters keep the update; the forwards still run in bfloat16.

Autocast is marked on the model (`mark`) and entered by the forwards that read the mark (rollout/policy_stats.py's
`completion_forward`, the sft loss): a copy of the model (the KL reference, the one-step-off-policy behaviour copy)
carries the mark with it. Under FSDP2 the MixedPrecisionPolicy casts the gathered parameters instead (runtime/fsdp.py),
so nothing is marked there. Log-softmax and entropies always run in float32 (algo/logits.py).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MARK = "_dynamo_autocast_dtype"  # attribute on the module: the dtype its forwards autocast to

PURE_BF16_WARNING = ("optim.master_weights=model: the weights and AdamW's moments are held in {dtype}; an update below "
                     "half a {dtype} ulp (about 6e-5 at |w| = 0.02) is rounded away, so a small lr (1e-6) can learn nothing "
                     "while the losses look normal. The default optim.master_weights=float32 keeps float32 masters")


def weights_dtype(model_dtype: str, master_weights: str) -> torch.dtype:
    """The dtype a trained model's weights (and so AdamW's moments) are held in."""
    return torch.float32 if master_weights == "float32" else DTYPES[model_dtype]


def autocast_dtype(model_dtype: str, master_weights: str) -> Optional[torch.dtype]:
    """The dtype the forwards autocast to: model.dtype over float32 masters; None when the weights are already in it."""
    return DTYPES[model_dtype] if master_weights == "float32" and model_dtype != "float32" else None


def mark(model: torch.nn.Module, dtype: Optional[torch.dtype]) -> torch.nn.Module:
    """Record on `model` the dtype its forwards autocast to (None: none). Returns the model."""
    setattr(model, MARK, dtype)
    return model


def _marked(model):
    """The module that carries the mark, looking through an engine's wrapper (DDP's `.module`) and the adapter-disabled
    reference (models/load.py AdapterDisabled); None when nothing is marked."""
    for _ in range(4):  # a wrapper of a wrapper at most
        if hasattr(model, MARK):
            return model
        model = getattr(model, "module", None) or getattr(model, "_policy", [None])[0]
        if model is None:
            return None
    return None


def marked_dtype(model) -> Optional[torch.dtype]:
    """The autocast dtype recorded on `model` or the module it wraps; None when none is."""
    marked = _marked(model)
    return None if marked is None else getattr(marked, MARK)


@contextlib.contextmanager
def autocast(model) -> Iterator[None]:
    """The forwards inside run under autocast to the model's marked dtype, on its parameters' device (nothing if unmarked)."""
    marked = _marked(model)
    dtype = None if marked is None else getattr(marked, MARK)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=next(marked.parameters()).device.type, dtype=dtype):
        yield


def checkpoint_note(saved: Optional[str], loading: torch.dtype) -> Optional[str]:
    """One line when a checkpoint's weights were saved in a narrower dtype than the masters they resume into (a run from
    before float32 master weights): it resumes upcast. None when the dtypes agree or the checkpoint does not say."""
    if saved is None or saved not in DTYPES or DTYPES[saved].itemsize >= loading.itemsize:
        return None
    return (f"this checkpoint holds {saved} weights (saved before float32 master weights): they resume upcast to "
            f"{str(loading).split('.')[-1]}, and so do its AdamW moments; the rounding they carry stays")
