"""TrainingConfig: every knob of curation, training and the gate, with help text (PEFT-style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from runtime.errors import PersonaeError

WEIGHT_METHODS = ("lora", "hybrid", "full")  # what a version's weights are
PREFERENCE_METHODS = ("kto", "dpo")  # KTO from 👍/👎, DPO from swipes: a LoRA trained on preferences alone
METHODS = WEIGHT_METHODS + PREFERENCE_METHODS
ATTENTION_AND_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainingError(PersonaeError, RuntimeError):
    """Training cannot run or failed; the message says why and what to do."""


@dataclass
class TrainingConfig:
    """How a character is curated, trained and gated; `[training]` in personae.toml sets the defaults."""

    method: str = field(default="lora", metadata={
        "help": "lora, hybrid (LoRA + fully trained layers), full; or kto / dpo (a LoRA trained on preferences only)."})
    preference: str = field(default="", metadata={
        "help": "A preference stage after supervised training: kto (from 👍/👎) or dpo (from swipes); empty = none."})
    beta: float = field(default=0.1, metadata={"help": "KTO / DPO beta: how far the policy may move from the reference."})
    preference_epochs: float = field(default=2.0, metadata={"help": "Passes over the preference data."})
    preference_max_steps: int = field(default=0, metadata={
        "help": "Stop the preference run after this many optimiser steps; 0 = max_steps (-1 there: by epochs)."})
    preference_lr: float = field(default=0.0, metadata={
        "help": "Preference learning rate; 0 = 1e-4 for LoRA/hybrid (5e-4 for kto/dpo alone), 5e-6 for full."})
    min_preference: int = field(default=8, metadata={"help": "Fewer rated replies (KTO) or DPO pairs (swipes, bootstrap) is an error."})
    rank: int = field(default=16, metadata={"help": "LoRA rank r (the study suggests 8-16 to start)."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling = alpha / rank)."})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    target_modules: list = field(
        default_factory=lambda: list(ATTENTION_AND_MLP),
        metadata={"help": "Modules LoRA adapts: attention and MLP projections by default."},
    )
    full_layers: int = field(
        default=2,
        metadata={"help": "hybrid: how many of the last decoder layers are trained in full (modules_to_save)."},
    )
    modules_to_save: list = field(
        default_factory=list,
        metadata={"help": "hybrid: explicit module names trained in full (overrides full_layers), e.g. lm_head."},
    )
    epochs: float = field(default=3.0, metadata={"help": "Passes over the training set."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (-1 = by epochs)."})
    lr: float = field(default=0.0, metadata={"help": "Peak learning rate; 0 = 2e-4 for LoRA/hybrid, 2e-5 for full."})
    warmup: float = field(default=0.1, metadata={"help": "Warm-up: a fraction of the steps (<1) or a step count."})
    scheduler: str = field(default="cosine", metadata={"help": "Learning-rate schedule (transformers name)."})
    batch_size: int = field(default=4, metadata={"help": "Examples per device per step."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    max_length: int = field(default=512, metadata={"help": "Longest training sequence in tokens (context cut left)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    patience: int = field(default=2, metadata={"help": "Early stopping: epochs without a better validation loss."})
    seed: int = field(default=42, metadata={"help": "Seed for data order, initialisation and the split."})
    threads: int = field(default=0, metadata={"help": "torch threads while training; 0 = torch's default."})
    # curation
    context_messages: int = field(default=6, metadata={"help": "Earlier messages kept as context of each reply."})
    validation_share: float = field(default=0.1, metadata={"help": "Share of examples held out for validation."})
    max_user_share: float = field(
        default=0.25, metadata={"help": "Cap on one user's share of the logged turns (no one dominates)."}
    )
    user_cap_floor: int = field(
        default=20, metadata={"help": "Each user may always contribute this many turns, whatever the share."}
    )
    dedupe_threshold: float = field(
        default=0.8, metadata={"help": "Jaccard similarity of word shingles above which turns are near-duplicates."}
    )
    example_share: float = field(
        default=0.2, metadata={"help": "Card example dialogues make up at least this share of the training set."}
    )
    audit_filter: bool = field(
        default=True,
        metadata={"help": "Screen every logged reply with the persona audit (degenerate, unsafe, leaking, misaligned)."},
    )
    bootstrap: bool = field(
        default=True, metadata={"help": "Mix in the character's bootstrapped dialogues (`personae bootstrap`)."}
    )
    min_examples: int = field(default=4, metadata={"help": "Fewer curated examples than this is an error."})
    # gate
    gate: str = field(
        default="auto",
        metadata={"help": "Promotion gate: auto or audit (a persona audit of candidate against active), or loss (validation loss)."},
    )
    gate_tolerance: float = field(
        default=0.02,
        metadata={"help": "Loss gate: the candidate may be this much (relative) worse than the active version."},
    )
    subprocess_threads: int = field(
        default=1, metadata={"help": "Scheduled training: torch/OMP threads of the low-priority training process."}
    )
    nice: int = field(default=10, metadata={"help": "Scheduled training: how much lower the training process runs."})
    processes: int = field(
        default=1,
        metadata={"help": "Train on this many processes with `accelerate launch` (GPUs, or CPU ranks over gloo)."},
    )
    accelerate_config: str = field(
        default="",
        metadata={"help": "An accelerate config file (FSDP, DeepSpeed, GPU ids) for the launched processes."},
    )

    def __post_init__(self):
        if self.method not in METHODS:
            raise TrainingError(f"unknown training method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.preference not in ("",) + PREFERENCE_METHODS:
            raise TrainingError(f"unknown preference stage {self.preference!r}; use kto, dpo or leave it empty")
        if self.method in PREFERENCE_METHODS and self.preference:
            raise TrainingError(f"method {self.method} already trains on preferences; drop preference={self.preference!r}"
                                " or use method lora, hybrid or full with it")
        if self.rank < 1 or self.alpha < 1:
            raise TrainingError("LoRA rank and alpha must be positive integers (try --rank 16 --alpha 32)")
        if self.gate not in ("auto", "audit", "loss"):
            raise TrainingError(f"unknown gate {self.gate!r}; use auto, audit or loss")
        if not 0 <= self.validation_share < 1:
            raise TrainingError("validation_share must be between 0 and 1")
        if not isinstance(self.processes, int) or self.processes < 1:
            raise TrainingError(f"processes must be a whole number of at least 1, not {self.processes!r}")

    @property
    def learning_rate(self) -> float:
        """The peak learning rate, defaulting by method (full fine-tuning needs a much smaller one)."""
        if self.lr:
            return self.lr
        return 2e-5 if self.method == "full" else 2e-4

    @property
    def weights_kind(self) -> str:
        """The registry kind of what this run produces (kto / dpo alone train a LoRA)."""
        return "lora" if self.method in PREFERENCE_METHODS else self.method

    @property
    def preference_kind(self) -> str:
        """'kto', 'dpo' or '' : which preference training this run does (a method or a stage)."""
        return self.method if self.method in PREFERENCE_METHODS else self.preference

    @property
    def preference_learning_rate(self) -> float:
        if self.preference_lr:
            return self.preference_lr
        if self.method == "full":
            return 5e-6
        # Alone, preference training starts from a zero LoRA and has further to go than a stage after SFT.
        return 5e-4 if self.method in PREFERENCE_METHODS else 1e-4

    @property
    def preference_steps(self) -> int:
        """The preference run's step limit (-1 = by preference_epochs)."""
        return self.preference_max_steps or self.max_steps

    def to_dict(self) -> dict:
        """Plain values for manifests and the worker's request file."""
        return asdict(self)

    @classmethod
    def from_sources(cls, table: dict | None = None, **overrides) -> "TrainingConfig":
        """Defaults < the `[training]` table of personae.toml < explicit overrides (None = not given)."""
        known = {f.name for f in fields(cls)}
        values = {}
        for source in (table or {}, overrides):
            for name, value in source.items():
                if value is None or name not in known:
                    continue
                values[name] = value
        return cls(**values)


def disk_full(where) -> TrainingError:
    """The error for a full disk while writing `where`."""
    return TrainingError(f"no space left on the device while writing {where}: free some space (a full model needs "
                         "about twice its size while training) and retry; nothing active was changed")
