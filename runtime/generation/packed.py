"""The generator's serving copy of a model, with Linear weights prepacked for oneDNN on CPU.

On CPU, MKL's plain sgemm is slow for the skinny matrices of batched decoding (a few rows times
a large weight): the same Linear runs ~2x faster from weights reordered once into oneDNN's
blocked layout (what torch.compile's freezing pass does for dynamic batch sizes). The serving
copy shares every tensor with the original model except those packed copies, so the original
stays a plain transformers model for everyone else (training copies, audits, perplexity).
"""

from __future__ import annotations

import copy
import logging

log = logging.getLogger("personae.packed")


def _packed_linear_class():
    """Build the PackedLinear module class (torch imported lazily)."""
    import torch

    class PackedLinear(torch.nn.Module):
        """A Linear computed from a oneDNN-prepacked copy of its weight (inference only)."""

        def __init__(self, linear: torch.nn.Linear, batch_hint: int, keep_dense: bool = True):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach()
            self.dtype = weight.dtype
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, batch_size=batch_hint)
            # The dense weight is kept (shared, no copy) where a plain Linear may be needed again.
            self.weight = weight if keep_dense else None
            self.bias = None if linear.bias is None else linear.bias.detach()

        def forward(self, x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

        def to_linear(self) -> torch.nn.Linear:
            """A plain Linear sharing the dense weight (for hybrid adapters' replacement copies)."""
            if self.weight is None:
                raise RuntimeError("this packed Linear dropped its dense weight")
            plain = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                                    device="meta")
            plain.weight = torch.nn.Parameter(self.weight, requires_grad=False)
            if self.bias is not None:
                plain.bias = torch.nn.Parameter(self.bias, requires_grad=False)
            return plain

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"

    PackedLinear.__module__, PackedLinear.__qualname__ = __name__, "PackedLinear"
    return PackedLinear


_CLASS = None


def packing_supported(model) -> bool:
    """Whether this model's Linear weights can be prepacked here (CPU, oneDNN, fp32)."""
    import torch

    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    # bf16 packing needs AVX-512/AMX-class CPUs; probe once on a tiny matrix instead of guessing.
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=parameter.dtype), batch_size=1)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def serving_copy(model, batch_hint: int = 8, keep_dense: bool = True):
    """The model with every nn.Linear replaced by a PackedLinear; all other tensors are shared, not copied.

    Returns the model itself when packing is not supported here. `keep_dense=False` lets the
    dense Linear weights go once the caller drops the original (a full model the generator owns).
    """
    global _CLASS
    import torch

    if not packing_supported(model):
        log.info("Linear prepacking not available here (%s); serving the model as it is",
                 next(model.parameters()).dtype)
        return model
    if _CLASS is None:
        _CLASS = _packed_linear_class()
    # Deep-copy the module tree but not the tensors: map every parameter and buffer to itself.
    memo = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    view = copy.deepcopy(model, memo)
    view.eval()
    replaced = 0
    with torch.no_grad():
        for name, module in list(view.named_modules()):
            for child_name, child in list(module.named_children()):
                if type(child) is torch.nn.Linear:
                    setattr(module, child_name, _CLASS(child, batch_hint, keep_dense))
                    replaced += 1
    log.info("serving copy: %d Linear layers prepacked for oneDNN", replaced)
    return view


def packed_bytes(model) -> int:
    """Extra memory the packed weights of a serving copy take."""
    return sum(m.packed.numel() * m.packed.element_size() for m in model.modules() if hasattr(m, "packed"))
