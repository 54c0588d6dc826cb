"""Batched multi-LoRA (S-LoRA / Punica style): rows of one forward pass use different adapters.

Every loaded adapter gets a slot. For each targeted Linear the adapters' A and B matrices are
stacked ([slots, in, r] and [slots, r, out], ranks zero-padded to the largest, scale folded into B);
a forward hook gathers each row's A/B by its slot index and adds the delta with two batched
matmuls, so a mixed batch costs one gather + two bmm per layer instead of a Python loop over
adapters. Slot 0 is all zeros: base rows add nothing. Hybrid adapters' `modules_to_save` are
whole replacement modules, applied to their rows only.

Hooks (not module replacement) keep the model's structure and state_dict untouched, so other
parts (training copies, audits) can still use `base.model` as a plain transformers model; the
hooks act only on the generator's worker thread and are dropped from deep copies.
"""

from __future__ import annotations

import copy
import threading

from runtime.models.peft_files import LoadedAdapter, linear_shape


class _RowState:
    """Which slot each row of the current forward uses; read by every hook."""

    def __init__(self):
        self.owner: int | None = None  # only this thread's forwards are adapted
        self.single: int = 0  # all rows on this slot (0 = base) when index is None
        self.index = None  # LongTensor [batch] of slots for a mixed batch
        self.slots_in_use: frozenset = frozenset()
        self.masks: dict = {}  # slot -> bool mask of its rows (for replaced modules)


class _Hook:
    """A forward hook; deep copies of the model get a no-op instead (they are someone else's)."""

    def __init__(self, function):
        self.function = function

    def __call__(self, module, args, output):
        return self.function(module, args, output)

    def __deepcopy__(self, memo):
        return _NOOP


_NOOP = _Hook(lambda module, args, output: None)


class _LoraSite:
    """The stacked adapters of one targeted Linear."""

    def __init__(self, state, in_features, out_features, capacity, rank, dtype, device):
        import torch

        self.state = state
        self.in_features, self.out_features = in_features, out_features
        self.A = torch.zeros(capacity, in_features, rank, dtype=dtype, device=device)
        self.B = torch.zeros(capacity, rank, out_features, dtype=dtype, device=device)
        self.present: set[int] = set()  # slots with a non-zero delta here

    def ensure_slots(self, count: int) -> None:
        """Grow the stacks to hold `count` slots (memory grows with the adapters actually loaded)."""
        import torch

        have = self.A.shape[0]
        if count <= have:
            return
        extra = count - have
        self.A = torch.cat([self.A, self.A.new_zeros(extra, *self.A.shape[1:])])
        self.B = torch.cat([self.B, self.B.new_zeros(extra, *self.B.shape[1:])])

    def __call__(self, module, args, output):
        import torch

        state = self.state
        if state.owner != threading.get_ident():
            return None
        x = args[0]
        if state.index is None:
            slot = state.single
            if slot not in self.present:
                return None
            delta = (x.to(self.A.dtype) @ self.A[slot]) @ self.B[slot]
            return output + delta.to(output.dtype)
        if not (state.slots_in_use & self.present):
            return None
        shape = x.shape
        flat = x.reshape(shape[0], -1, shape[-1]).to(self.A.dtype)
        a = self.A.index_select(0, state.index)
        b = self.B.index_select(0, state.index)
        delta = torch.bmm(torch.bmm(flat, a), b)
        return output + delta.reshape(*shape[:-1], self.out_features).to(output.dtype)


class _ReplaceSite:
    """Whole replacement modules (hybrid `modules_to_save`) for the rows of their adapters."""

    def __init__(self, state):
        self.state = state
        self.variants: dict[int, object] = {}

    def __call__(self, module, args, output):
        state = self.state
        if state.owner != threading.get_ident():
            return None
        if state.index is None:
            variant = self.variants.get(state.single)
            return None if variant is None else variant(*args)
        hit = state.slots_in_use & self.variants.keys()
        if not hit:
            return None
        output = output.clone()
        for slot in hit:
            mask = state.masks[slot]
            output[mask] = self.variants[slot](args[0][mask])
        return output


class LoraBatch:
    """Adapters of one model held in slots; `rows(...)` sets which slot each row uses."""

    def __init__(self, model, capacity: int = 8):
        self.model = model
        self.capacity = capacity
        self.state = _RowState()
        self.slots: dict[str, int] = {}  # adapter name -> slot (1..capacity)
        self.rank = 0
        self._size = 1  # slots allocated per site (slot 0 = the base)
        self.sites: dict[str, _LoraSite] = {}
        self.replace_sites: dict[str, _ReplaceSite] = {}
        self._handles = []

    # --- loading ------------------------------------------------------------------------
    def add(self, adapter: LoadedAdapter) -> int:
        """Put an adapter into a free slot (or its old slot when replacing); returns the slot."""
        if adapter.name in self.slots:
            slot = self.slots[adapter.name]
            self._clear(slot)
        else:
            used = set(self.slots.values())
            free = [s for s in range(1, self.capacity + 1) if s not in used]
            if not free:
                raise RuntimeError("no free adapter slot; remove one first")
            slot = free[0]
        if adapter.rank > self.rank:
            self._grow_rank(adapter.rank)
        # Every site holds every slot (rows index all sites with the same slot numbers).
        self._size = max(self._size, slot + 1)
        for site in self.sites.values():
            site.ensure_slots(self._size)
        modules = dict(self.model.named_modules())
        for name, (a, b) in adapter.pairs.items():
            site = self.sites.get(name)
            if site is None:
                site = self._add_site(name, modules[name])
            r = a.shape[1]
            site.A[slot, :, :r] = a
            site.B[slot, :r, :] = b
            site.present.add(slot)
        for name, params in adapter.replaced.items():
            site = self.replace_sites.get(name)
            if site is None:
                site = self.replace_sites[name] = _ReplaceSite(self.state)
                self._handles.append(modules[name].register_forward_hook(_Hook(site)))
            variant = _plain_copy(modules[name])
            for param, tensor in params.items():
                getattr(variant, param).data = tensor.to(getattr(variant, param).dtype)
            site.variants[slot] = variant
        self.slots[adapter.name] = slot
        return slot

    def slot_bytes(self) -> int:
        """Memory one more adapter slot costs: every site's A and B at the padded rank."""
        return sum((site.A[0].numel() * site.A.element_size()) + (site.B[0].numel() * site.B.element_size())
                   for site in self.sites.values())

    def remove(self, name: str) -> None:
        """Free an adapter's slot."""
        slot = self.slots.pop(name, None)
        if slot is not None:
            self._clear(slot)

    def close(self) -> None:
        """Remove every hook: the model is plain again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.sites.clear()
        self.replace_sites.clear()
        self.slots.clear()

    def _clear(self, slot: int) -> None:
        for site in self.sites.values():
            if slot in site.present and slot < site.A.shape[0]:
                site.A[slot].zero_()
                site.B[slot].zero_()
                site.present.discard(slot)
        for site in self.replace_sites.values():
            site.variants.pop(slot, None)

    def _add_site(self, name, module) -> _LoraSite:
        import torch

        in_features, out_features = linear_shape(module)
        weight = getattr(module, "weight", None)
        dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.is_floating_point() else torch.float32
        device = next(self.model.parameters()).device
        site = _LoraSite(self.state, in_features, out_features, self._size, max(self.rank, 1), dtype, device)
        self.sites[name] = site
        self._handles.append(module.register_forward_hook(_Hook(site)))
        return site

    def _grow_rank(self, rank: int) -> None:
        import torch

        for site in self.sites.values():
            a = torch.zeros(site.A.shape[0], site.in_features, rank, dtype=site.A.dtype, device=site.A.device)
            b = torch.zeros(site.B.shape[0], rank, site.out_features, dtype=site.B.dtype, device=site.B.device)
            a[:, :, : site.A.shape[2]] = site.A
            b[:, : site.B.shape[1], :] = site.B
            site.A, site.B = a, b
        self.rank = rank

    # --- per forward ----------------------------------------------------------------------
    def rows(self, names: list[str]) -> None:
        """Set the adapter of each row for the next forward passes on this thread."""
        import torch

        state = self.state
        state.owner = threading.get_ident()
        slots = [self.slots.get(n, 0) for n in names]
        if len(set(slots)) <= 1:
            state.index, state.single = None, (slots[0] if slots else 0)
            state.slots_in_use = frozenset([state.single])
            state.masks = {}
            return
        index = torch.tensor(slots, dtype=torch.long)
        state.index, state.single = index, 0
        state.slots_in_use = frozenset(slots)
        state.masks = {s: index == s for s in state.slots_in_use} if self.replace_sites else {}


def _plain_copy(module):
    """A hook-free deep copy of one module (a replacement variant); packed Linears come back plain."""
    if hasattr(module, "to_linear"):
        module = module.to_linear()
    variant = copy.deepcopy(module)
    variant._forward_hooks.clear()
    return variant
