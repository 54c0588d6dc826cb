"""Retraining from logged conversations: curate, train (LoRA / hybrid / full), gate, promote."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from adapters.registry import Registry
from runtime.training import runs
from runtime.training.child import train_in_subprocess
from runtime.training.config import METHODS, TrainingConfig, TrainingError, disk_full
from runtime.training.curate import CuratedDataset, curate
from runtime.training.gate import run_gate
from runtime.training.launch import uses_accelerate, world_size
from runtime.training.preference import PreferenceData, TooLittlePreference, preference_data
from runtime.training.runs import TrainingBusy, training_dir
from runtime.training.trainer import run_training, write_run_files

__all__ = ["train", "train_isolated", "curate", "retrain", "TrainResult", "RetrainOutcome", "CuratedDataset", "TrainingConfig",
           "TrainingError", "TrainingBusy", "METHODS", "PreferenceData", "TooLittlePreference", "preference_data"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A finished training run: the registered candidate (None when not registered), metrics, loss plot."""

    version: object
    metrics: dict
    loss_plot: Path
    folder: Path | None = None  # the weights when not registered
    run_id: str | None = None


@dataclass
class RetrainOutcome:
    """What a retrain did: skipped, failed, rejected or promoted, and why."""

    character: str
    status: str  # skipped | failed | candidate | rejected | promoted
    reason: str = ""
    version: object = None
    metrics: dict = field(default_factory=dict)
    gate: object = None
    dropped: dict = field(default_factory=dict)
    run_id: str | None = None
    loss_plot: Path | None = None

    def summary(self) -> str:
        """One line for logs and the command line."""
        ref = f" {self.version.ref}" if self.version is not None else ""
        return f"{self.character}: {self.status}{ref} — {self.reason}"


def registry_for(engine):
    """The registry the serving side listens to (so a promotion hot-swaps in this process)."""
    if engine.registry is not None:
        return engine.registry
    _, fingerprint = engine.base_identity()
    return Registry.for_settings(engine.settings, engine.store, fingerprint, pm=engine.pm)


def _config(engine, method=None, config=None, **overrides) -> TrainingConfig:
    if config is not None:
        if method and method != config.method:
            config = TrainingConfig.from_sources(config.to_dict(), method=method)
        return config
    return TrainingConfig.from_sources(engine.settings.training, method=method, **overrides)


def _as_dataset(engine, character, examples: CuratedDataset | None, config) -> CuratedDataset:
    """The given CuratedDataset, or one curated now."""
    if examples is None:
        return curate(engine.store, character, engine.settings, config=config, pm=engine.pm)
    return examples


def _preference(engine, character, config, preference):
    """The log's preference data when this run trains on preferences (a method or a stage), else None."""
    if not config.preference_kind:
        return None
    if preference is None:
        preference = preference_data(engine.store, character, config)
    preference.require(config.preference_kind, config.min_preference)  # too little: fail before anything starts
    return preference


def _reference(active) -> dict | None:
    if active is None:
        return None
    return {"folder": str(active.folder), "kind": active.kind, "ref": active.label}



def _register(engine, character_id, folder: Path, config, dataset, metrics, active, run_id, preference=None):
    registry = registry_for(engine)
    training = {**config.to_dict(), "run_id": run_id, "last_message_id": dataset.last_message_id,
                "dropped": dataset.dropped}
    if preference is not None:
        training["preference_data"] = {"hash": preference.data_hash, "kto_rows": len(preference.kto),
                                       "dpo_pairs": len(preference.dpo), "skipped": preference.skipped}
    return registry.add(folder, character_id, kind=config.weights_kind, parent=active.number if active else None,
                        training=training, data_hash=dataset.data_hash, metrics=metrics)


def train(engine, character_id: str, method: str = "lora", *, config: TrainingConfig | None = None, examples=None,
          register: bool = True, progress: bool = True, run_id: str | None = None,
          output_dir: str | Path | None = None, preference=None) -> TrainResult:
    """Train a character in this process and register the result as a candidate version.

    One process: config.processes is for retrain(), which launches the ranks and registers once.
    """
    character = engine.catalog.get(character_id)
    config = _config(engine, method, config)
    dataset = _as_dataset(engine, character, examples, config)
    preference = _preference(engine, character, config, preference)
    base_folder, _ = engine.base_identity()
    active = registry_for(engine).active(character.id) if register else None
    run_id = run_id or os.urandom(4).hex()
    staging = Path(output_dir) if output_dir else training_dir(engine.settings, character.id) / f"staging-{run_id}"
    try:
        outcome = run_training(base_folder, dataset, config, staging, reference=_reference(active), progress=progress,
                               preference=preference)
        if not outcome["metrics"]["is_main_process"]:  # other ranks under `accelerate launch` stop here
            return TrainResult(None, outcome["metrics"], staging / "loss.png", None, run_id)
        plot = write_run_files(staging, outcome, config, dataset, f"{character.id} · {config.method}")
        metrics = outcome["metrics"]
        if not register:
            return TrainResult(None, metrics, plot, staging, run_id)
        version = _register(engine, character.id, staging, config, dataset, metrics, active, run_id, preference)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise disk_full(staging) from None
        raise
    finally:
        if register and not output_dir:
            shutil.rmtree(staging, ignore_errors=True)
    return TrainResult(version, metrics, version.folder / "loss.png", None, run_id)


def train_isolated(engine, character_id: str, config: TrainingConfig, examples, *, preference=None, trigger="compare",
                   on_poll=None) -> TrainResult:
    """Train in a child process of its own (so its peak memory is the run's alone) and register a candidate."""
    character = engine.catalog.get(character_id)
    preference = _preference(engine, character, config, preference)
    base_folder, _ = engine.base_identity()
    store = engine.store
    label = config.method + (f"+{config.preference}" if config.preference else "")
    with runs.character_lock(engine.settings, character.id):
        run_id = runs.start_run(store, character.id, label, trigger, new_turns=examples.new_turns,
                                last_message_id=examples.last_message_id, data_hash=examples.data_hash)
        try:
            staging, metrics = train_in_subprocess(engine, character.id, examples, config, None, run_id, base_folder,
                                                   preference=preference, on_poll=on_poll)
            try:
                version = _register(engine, character.id, staging, config, examples, metrics, None, run_id, preference)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except Exception as error:
            runs.update_run(store, run_id, state="failed", reason=str(error), phase="done")
            raise
        runs.update_run(store, run_id, state="candidate", version=version.number, metrics=metrics, phase="done")
    return TrainResult(version, metrics, version.folder / "loss.png", None, run_id)


def retrain(engine, character_id: str, method: str | None = None, *, config: TrainingConfig | None = None,
            min_new_turns: int = 0, trigger: str = "cli", in_subprocess: bool | None = None, progress: bool = True,
            gate: bool = True) -> RetrainOutcome:
    """Curate, train, register a candidate, gate it against the active version, promote or reject.

    in_subprocess=None: train in a low-priority child process when this engine is serving chats (its
    generator is running), else here (the command line, with its progress bar). config.processes > 1 (or
    an accelerate config file): always in child processes, under `accelerate launch`.
    """
    if world_size() > 1:
        raise TrainingError("retrain runs once and launches its own training processes: instead of starting it "
                            "under `accelerate launch`, run `personae train NAME --processes N` (or set "
                            "processes / accelerate_config in [training])")
    character = engine.catalog.get(character_id)
    config = _config(engine, method, config)
    store, settings = engine.store, engine.settings
    if in_subprocess is None:
        in_subprocess = engine.generator_started is not None
    in_subprocess = in_subprocess or uses_accelerate(config)
    with runs.character_lock(settings, character.id):
        runs.clean_stale(settings, character.id, store)
        since = runs.last_trained_message_id(store, character.id)
        dataset = curate(store, character, settings, config=config, pm=engine.pm, since_message_id=since)
        run_id = runs.start_run(store, character.id, config.method, trigger, new_turns=dataset.new_turns,
                                last_message_id=dataset.last_message_id, data_hash=dataset.data_hash)
        if min_new_turns and dataset.new_turns < min_new_turns:
            reason = (f"skipped: {dataset.new_turns} new curated turns since the last training "
                      f"(message {since}), {min_new_turns} needed")
            runs.update_run(store, run_id, state="skipped", reason=reason, phase="done")
            log.info("%s: %s", character.id, reason)
            return RetrainOutcome(character.id, "skipped", reason, dropped=dataset.dropped, run_id=run_id)
        registry = registry_for(engine)
        active = registry.active(character.id)
        try:
            preference = _preference(engine, character, config, None)
            if in_subprocess:
                base_folder, _ = engine.base_identity()
                staging, metrics = train_in_subprocess(engine, character.id, dataset, config, _reference(active),
                                                       run_id, base_folder, preference=preference)
                runs.update_run(store, run_id, phase="registering")
                try:
                    version = _register(engine, character.id, staging, config, dataset, metrics, active, run_id,
                                        preference)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                result = TrainResult(version, metrics, version.folder / "loss.png", None, run_id)
            else:
                runs.update_run(store, run_id, phase="training", pid=os.getpid())
                result = train(engine, character.id, config.method, config=config, examples=dataset,
                               progress=progress, run_id=run_id, preference=preference)
        except Exception as error:
            reason = str(error) if isinstance(error, (TrainingError, OSError)) else f"{type(error).__name__}: {error}"
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                reason = str(disk_full(runs.training_dir(settings, character.id)))
            runs.update_run(store, run_id, state="failed", reason=reason, phase="done")
            log.error("%s: training failed: %s", character.id, reason)
            return RetrainOutcome(character.id, "failed", reason, dropped=dataset.dropped, run_id=run_id)
        version, metrics = result.version, result.metrics
        runs.update_run(store, run_id, state="candidate", version=version.number, metrics=metrics, phase="gating")
        if not gate:
            runs.update_run(store, run_id, phase="done")
            return RetrainOutcome(character.id, "candidate", "registered as a candidate (gate skipped)", version,
                                  metrics, None, dataset.dropped, run_id, result.loss_plot)
        decision = run_gate(engine, character.id, version, active, metrics, config)
        reason = f"{decision.method} gate: " + "; ".join(decision.reasons)
        if decision.promote:
            version = registry.promote(character.id, version.number)
            status = "promoted"
        else:
            version = registry.reject(character.id, version.number, reason)
            status = "rejected"
        runs.update_run(store, run_id, state=status, reason=reason, phase="done",
                        gate={"method": decision.method, "promote": decision.promote, "reasons": decision.reasons,
                              "details": decision.details})
        log.info("%s: %s %s (%s)", character.id, status, version.ref, reason)
        return RetrainOutcome(character.id, status, reason, version, metrics, decision, dataset.dropped, run_id,
                              version.folder / "loss.png")
