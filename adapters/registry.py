"""The adapter registry: numbered, hashed, atomically written weight versions per character."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils
from sqlite_utils import Migrations

from adapters.character import weights_from_character
from adapters.convert import compose_files
from adapters.errors import IncompatibleAdapter, IntegrityError, PickledWeights, RegistryError  # noqa: F401
from adapters.full_delta import DELTA_FILE, ENCODINGS, encode_delta
from adapters.materialise import discard, materialise, materialised_folder, prune
from adapters.manifest import (
    FORMAT,
    KINDS,
    MANIFEST,
    detect_kind,
    file_entries,
    fsync_dir,
    now,
    read_manifest,
    sha256_file,
    verify_files,
    write_json_durably,
)
from adapters.safety import check_compatible, check_fingerprint, refuse_pickles
from runtime.models.formats import PICKLE_SUFFIXES
from runtime.refs import WeightsRef

log = logging.getLogger(__name__)

STATES = ("candidate", "active", "retired", "rejected", "failed", "removed")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# Test hook: seconds to sleep after copying each file of an `add` (to kill a process mid-copy).
MANIFEST_CACHE = 256  # manifests kept in memory, keyed by folder and the row's last update
PAUSE_VARIABLE = "PERSONAE_REGISTRY_TEST_PAUSE"

migrations = Migrations("personae.adapters")


@migrations(name="m001_versions")
def m001_versions(db: sqlite_utils.Database) -> None:
    """Versions with their states, and the history of state changes (rollback reads it)."""
    db["adapter_versions"].create(
        {
            "character": str, "number": int, "kind": str, "state": str, "folder": str, "created": str,
            "updated": str, "parent": int, "reason": str, "audit": str, "metrics": str,
        },
        pk=("character", "number"),
    )
    db["adapter_events"].create(
        {"id": int, "character": str, "number": int, "action": str, "previous": int, "at": str, "reason": str},
        pk="id",
    )
    db["adapter_events"].create_index(["character", "id"])


@dataclass
class Version:
    """One stored version of a character's weights."""

    character: str
    number: int
    kind: str
    state: str
    folder: Path
    manifest: dict = field(repr=False, default_factory=dict)
    created: str = ""
    reason: str = ""
    audit: dict = field(default_factory=dict)
    reused: bool = False  # add() found these very weights already stored and returned that version

    @property
    def ref(self) -> str:
        """character@number"""
        return str(WeightsRef(self.character, self.number))

    @property
    def label(self) -> str:
        """How logs name it: kind:character@number."""
        return f"{self.kind}:{self.ref}"

    @property
    def bytes(self) -> int:
        """Bytes on disk of the version's files."""
        return sum(entry["bytes"] for entry in self.manifest.get("files", {}).values())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """Character weight versions under root/<character>/<number>/, states in SQLite."""

    def __init__(self, root, store, base_fingerprint: str | None = None, pm=None, base=None):
        self.root, self.store, self.pm, self.base = Path(root).expanduser(), store, pm, base
        self.base_fingerprint = base_fingerprint or getattr(base, "fingerprint", None)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._subscribers: list = []
        self._manifests: dict = {}
        store.apply_migrations(migrations)
        with self._file_lock():
            self._sweep()
            self._reconcile()

    @classmethod
    def for_settings(cls, settings, store, base_fingerprint=None, pm=None, base=None) -> "Registry":
        """The registry of a data directory (data_dir/adapters)."""
        return cls(settings.data_path / "adapters", store, base_fingerprint, pm=pm, base=base)

    # --- crash safety --------------------------------------------------------------------

    def _file_lock(self):
        """An exclusive lock between processes that add or remove versions."""
        registry = self

        class Lock:
            def __enter__(self):
                registry._lock.acquire()
                self.handle = open(registry.root / ".lock", "a+")
                fcntl.flock(self.handle, fcntl.LOCK_EX)

            def __exit__(self, *exc):
                fcntl.flock(self.handle, fcntl.LOCK_UN)
                self.handle.close()
                registry._lock.release()

        return Lock()

    def scratch(self):
        """A temporary folder on the registry's filesystem (swept at start-up if its process died)."""
        import tempfile

        return tempfile.TemporaryDirectory(dir=self.root, prefix=f".scratch-{os.getpid()}-")

    def _sweep(self) -> None:
        """Delete temporary, scratch and trash folders left by processes that died mid-write."""
        for folder in [*self.root.glob("*/.*-*"), *self.root.glob(".scratch-*")]:
            match = re.match(r"^\.(tmp|trash|scratch)-(\d+)-", folder.name)
            if match and folder.is_dir() and not _pid_alive(int(match.group(2))):
                shutil.rmtree(folder, ignore_errors=True)
                log.info("removed %s, left by an interrupted write", folder)

    def _reconcile(self) -> None:
        """Adopt finished folders the database missed; mark rows whose folder vanished as failed."""
        known = {(r["character"], r["number"]): r for r in self.store.query("select * from adapter_versions")}
        for folder in sorted(self.root.glob("*/*")):
            if not folder.name.isdigit() or not folder.is_dir():
                continue
            key = (folder.parent.name, int(folder.name))
            if key in known:
                continue
            if not (folder / MANIFEST).is_file():
                log.warning("%s: no %s; ignored (not a finished version)", folder, MANIFEST)
                continue
            # Renamed into place but the process died before recording it: the files are complete.
            manifest = read_manifest(folder)
            self._insert(key[0], key[1], manifest, "candidate", reason="recovered after an interrupted add")
        for (character, number), row in known.items():
            if row["state"] not in ("removed", "failed") and not (self.root / row["folder"]).is_dir():
                self._set_state(character, number, "failed", "folder is missing")
        # Plain model folders of versions removed (or failed) since, e.g. by a process that died mid-remove.
        prune(self.root, {f"{c}@{n}" for (c, n), r in known.items() if r["state"] not in ("removed", "failed")})

    # --- reading -------------------------------------------------------------------------

    def _manifest(self, folder: Path, row: dict) -> dict:
        """A version's manifest, read from disk once per change of its row (not on every turn)."""
        if row["state"] == "removed":
            return {}
        key = (str(folder), row.get("updated") or row.get("created"))
        cached = self._manifests.get(key)
        if cached is None:
            try:
                cached = read_manifest(folder)
            except RegistryError:
                return {}  # a damaged manifest is reported by verify(), and read again next time
            if len(self._manifests) >= MANIFEST_CACHE:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[key] = cached
        return dict(cached)

    def _version(self, row: dict) -> Version:
        folder = self.root / row["folder"]
        manifest = self._manifest(folder, row)
        return Version(
            character=row["character"], number=row["number"], kind=row["kind"], state=row["state"],
            folder=folder, manifest=manifest, created=row["created"], reason=row["reason"] or "",
            audit=json.loads(row["audit"] or "{}"),
        )

    def versions(self, character: str | None = None, include_removed: bool = False) -> list[Version]:
        """Versions (of one character or all), oldest first."""
        rows = self.store.query(
            "select * from adapter_versions where (? is null or character = ?) order by character, number",
            [character, character],
        )
        return [self._version(r) for r in rows if include_removed or r["state"] != "removed"]

    def get(self, character: str, number: int | None = None) -> Version:
        """A version by number, or the active one (RegistryError if there is none)."""
        if number is None:
            active = self.active(character)
            if active is None:
                raise RegistryError(f"{character} has no active version (see `personae adapters list {character}`)")
            return active
        rows = self.store.query(
            "select * from adapter_versions where character = ? and number = ? and state != 'removed'",
            [character, int(number)],
        )
        if not rows:
            have = ", ".join(str(v.number) for v in self.versions(character)) or "none"
            raise RegistryError(f"{character}@{number}: no such version ({character} has: {have})")
        return self._version(rows[0])

    def resolve(self, ref: WeightsRef | str) -> Version:
        """The stored version a reference names ('pixel@3'; 'pixel' = the active one)."""
        ref = WeightsRef.parse(ref) if isinstance(ref, str) else ref
        if ref.is_base:
            raise RegistryError(f"{ref}: the bare base model is not a stored version")
        return self.get(ref.character, ref.version)

    def active(self, character: str) -> Version | None:
        """The version a character answers with now, or None (the bare base)."""
        rows = self.store.query(
            "select * from adapter_versions where character = ? and state = 'active'", [character]
        )
        return self._version(rows[0]) if rows else None

    def verify(self, version: Version, base=None) -> Version:
        """Check every file's sha256 (and the base fingerprint); IntegrityError / IncompatibleAdapter."""
        if not version.manifest:
            raise IntegrityError(f"{version.folder}: {MANIFEST} is missing or unreadable; the version is damaged")
        verify_files(version.folder, version.manifest)
        check_fingerprint(version.ref, version.manifest.get("base_fingerprint"),
                          getattr(base, "fingerprint", None) or self.base_fingerprint)
        return version

    def checked(self, character: str, number: int | None = None) -> Version:
        """get() then verify(): what to call right before loading weights."""
        return self.verify(self.get(character, number))

    # --- writing -------------------------------------------------------------------------

    def _insert(self, character, number, manifest, state, reason="", parent=None):
        stamp = now()
        row = {
            "character": character, "number": number, "kind": manifest.get("kind"), "state": state,
            "folder": f"{character}/{number}", "created": manifest.get("created", stamp), "updated": stamp,
            "parent": parent if parent is not None else manifest.get("parent"), "reason": reason,
            "audit": json.dumps(manifest.get("audit") or {}), "metrics": json.dumps(manifest.get("metrics") or {}),
        }

        def insert():  # the row and its event in one transaction: a crash keeps both or neither
            # Plain SQL: sqlite_utils' insert() commits by itself, which would split the transaction.
            self.store.db.execute(f"insert or replace into adapter_versions ({', '.join(row)}) "
                                  f"values ({', '.join('?' for _ in row)})", list(row.values()))
            self._event_sql(character, number, "add", reason=reason)

        self.store.write(insert)

    def _event_sql(self, character, number, action, previous=None, reason=""):
        self.store.db.execute(
            "insert into adapter_events (character, number, action, previous, at, reason) values (?, ?, ?, ?, ?, ?)",
            [character, number, action, previous, now(), reason],
        )

    def _state_sql(self, character, number, state, reason="", previous=None):
        """A state change and its event, inside the caller's transaction."""
        self.store.db.execute(
            "update adapter_versions set state = ?, reason = ?, updated = ? where character = ? and number = ?",
            [state, reason, now(), character, number],
        )
        self._event_sql(character, number, state, previous=previous, reason=reason)

    def _set_state(self, character, number, state, reason="", previous=None):
        self.store.write(self._state_sql, character, number, state, reason, previous)

    def _next_number(self, character: str) -> int:
        rows = self.store.query("select max(number) as n from adapter_versions where character = ?", [character])
        on_disk = [int(p.name) for p in (self.root / character).glob("*") if p.name.isdigit()]
        return max([rows[0]["n"] or 0, *on_disk]) + 1

    @staticmethod
    def _copy_files(source: Path, target: Path) -> list[str]:
        """Copy a folder's plain files (never pickles or old manifests), fsyncing each."""
        pause = float(os.environ.get(PAUSE_VARIABLE, "0") or 0)
        skipped = []
        for path in sorted(source.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix in PICKLE_SUFFIXES or path.name == MANIFEST:
                skipped.append(path.name)
                continue
            with open(path, "rb") as src, open(target / path.name, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            if pause:
                time.sleep(pause)
        return skipped

    def add(self, source_folder, character: str, *, kind=None, parent=None, training=None, data_hash=None,
            metrics=None, activate=False, delta="auto", extra=None, dedup=True) -> Version:
        """Store a folder as the character's next version (atomic: temp folder, fsync, rename, manifest last).

        dedup: when the character already has a version of these very files (not a failed one), that version
        is returned (reused=True) instead of a second copy.
        """
        source = Path(source_folder).expanduser()
        if not NAME.match(character or ""):
            raise RegistryError(f"{character!r} is not a valid character id (lowercase letters, digits, - _ .)")
        if not source.exists():
            raise RegistryError(f"{source}: no such folder")
        if delta not in ENCODINGS:
            raise RegistryError(f"delta encoding {delta!r} is not one of {', '.join(ENCODINGS)}")
        skipped = refuse_pickles(source)
        kind = kind or detect_kind(source)
        if kind not in KINDS:
            raise RegistryError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        if self.base is not None and kind != "composite":
            check_compatible(source, self.base)
        elif (source / MANIFEST).is_file():
            check_fingerprint(source, read_manifest(source).get("base_fingerprint"), self.base_fingerprint)
        if parent is not None:
            self.get(character, parent)
        same = self._same_weights(character, source) if dedup else None
        if same is not None:
            log.info("%s holds the same files as %s; not stored again", source, same.ref)
            version = self.promote(character, same.number) if activate and same.state != "active" else same
            version.reused = True
            return version
        with self._file_lock():
            number = self._next_number(character)
            home = self.root / character
            home.mkdir(parents=True, exist_ok=True)
            temporary = home / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
            temporary.mkdir()
            try:
                delta_stats = None

                already_delta = (source / DELTA_FILE).is_file()  # e.g. a version copied from another registry
                encoded = kind == "full" and delta != "none" and self.base is not None and not already_delta
                if encoded:
                    delta_stats = encode_delta(source, self.base.folder, temporary, delta)
                    for path in temporary.iterdir():
                        with open(path, "rb") as handle:
                            os.fsync(handle.fileno())
                else:
                    skipped += self._copy_files(source, temporary)
                    if already_delta and (source / MANIFEST).is_file():
                        delta_stats = read_manifest(source).get("delta")
                files = file_entries(temporary)
                if not any(name.endswith(".safetensors") for name in files):
                    raise RegistryError(f"{source}: no .safetensors weights to store")
                content_sha256 = _content_hash(files)  # a plain copy: the very files source_hash() would read
                manifest = {
                    "format": FORMAT, "character": character, "number": number, "kind": kind,
                    "base_fingerprint": self.base_fingerprint, "parent": parent, "created": now(),
                    "training": training, "data_hash": data_hash, "metrics": metrics or {}, "audit": {},
                    "source": str(source), "skipped": sorted(set(skipped)), "files": files,
                    "content_sha256": content_sha256,
                    "source_sha256": source_hash(source) if encoded else content_sha256,
                    "delta": delta_stats, **(extra or {}),
                }
                write_json_durably(temporary / MANIFEST, manifest)  # last: a version without it never existed
                final = home / str(number)
                os.rename(temporary, final)
                fsync_dir(home)
            except BaseException:
                shutil.rmtree(temporary, ignore_errors=True)
                raise
            self._insert(character, number, manifest, "candidate", parent=parent)
        version = self.get(character, number)
        if activate:
            version = self.promote(character, number)
        return version

    def _same_weights(self, character: str, source: Path) -> Version | None:
        """A stored version (not failed or removed) of exactly the files `add` would take from source."""
        versions = [v for v in self.versions(character) if v.state != "failed"]
        if not versions:
            return None
        wanted = source_hash(source)
        for version in versions:
            if version.manifest.get("source_sha256") != wanted:
                continue
            try:
                return self.verify(version)
            except (IntegrityError, IncompatibleAdapter):
                continue  # damaged since: store a sound copy instead of pointing at it
        return None

    def add_from_character(self, character, activate: bool = False) -> Version:
        """Register the weights a character plugin ships (once: the same files are not stored twice)."""
        folder = weights_from_character(character)
        if folder is None:
            raise RegistryError(f"{character.id} ships no weights (extensions.personae.weights is not set)")
        versions = self.versions(character.id)
        wanted = source_hash(folder) if versions else None
        for version in versions:
            if version.manifest.get("source_sha256") == wanted:
                return self.promote(character.id, version.number) if activate and version.state != "active" \
                    else version
        return self.add(folder, character.id, activate=activate, training={"source": "character package"})

    def add_composite(self, character: str, parts, combination: str = "cat", activate: bool = False) -> Version:
        """A weighted composition of LoRA versions ([(ref, weight)]) stored as one PEFT LoRA + its recipe."""
        resolved = []
        for ref, weight in parts:
            version = self.verify(self.resolve(ref))
            if version.kind not in ("lora", "composite"):
                raise RegistryError(f"{version.ref} is a {version.kind} version; only LoRA versions can be composed")
            resolved.append((version, float(weight)))
        with self.scratch() as scratch:
            compose_files([(v.folder, w) for v, w in resolved], Path(scratch), combination)
            recipe = [{"ref": v.ref, "weight": w, "sha256": v.manifest.get("content_sha256")} for v, w in resolved]
            return self.add(scratch, character, kind="composite", activate=activate,
                            extra={"parts": recipe, "combination": combination})

    def promote(self, character: str, number: int) -> Version:
        """Make a version the active one (its files verified first); the old one retires."""
        with self._lock:
            version = self.get(character, number)
            if version.state == "failed":
                raise RegistryError(f"{version.ref} failed ({version.reason}); add it again instead")
            self.verify(version)
            previous = self.active(character)
            if previous is not None and previous.number == version.number:
                return version

            def swap():  # one transaction: a crash leaves the old version active or the new one, never none
                for row in self.store.db.execute("select number from adapter_versions where character = ? and "
                                                 "state = 'active' and number != ?", [character, number]).fetchall():
                    self._state_sql(character, row[0], "retired", f"replaced by {number}")
                self._state_sql(character, number, "active", previous=previous.number if previous else None)

            self.store.write(swap)
            version = self.get(character, number)
        self._announce(character, version, previous)
        return version

    def rollback(self, character: str) -> Version | None:
        """Reject the active version and reactivate the one active before it (None: back to the base)."""
        with self._lock:
            current = self.active(character)
            if current is None:
                raise RegistryError(f"{character} has no active version to roll back")
            target = None
            events = self.store.query(
                "select number from adapter_events where character = ? and action = 'active' order by id desc",
                [character],
            )
            for event in events:
                if event["number"] == current.number:
                    continue
                candidate = self.store.query(
                    "select state from adapter_versions where character = ? and number = ?", [character, event["number"]]
                )
                if candidate and candidate[0]["state"] == "retired":
                    target = event["number"]
                    break

            def swap():  # one transaction, as in promote
                self._state_sql(character, current.number, "rejected", "rolled back")
                if target is not None:
                    self._state_sql(character, target, "active", f"rollback from {current.number}", current.number)

            self.store.write(swap)
            version = self.get(character, target) if target is not None else None
        self._announce(character, version, current)
        return version

    def _announce(self, character, version, previous) -> None:
        """Tell subscribers (the generator's hot swap) and plugins; a failing listener is logged, not fatal."""
        for callback in list(self._subscribers):
            try:
                callback(character, version)
            except Exception:  # noqa: BLE001 - one listener must not undo a promotion
                log.exception("registry subscriber %r failed", callback)
        if self.pm is not None:
            self.pm.hook.version_promoted(character_id=character, version=version, previous=previous)

    def subscribe(self, callback) -> None:
        """callback(character, version_or_None) runs after every promote and rollback."""
        self._subscribers.append(callback)

    def reject(self, character: str, number: int, reason: str = "") -> Version:
        """Mark a candidate as rejected (an active version is rolled back instead)."""
        version = self.get(character, number)
        if version.state == "active":
            raise RegistryError(f"{version.ref} is active; roll it back (`personae adapters rollback {character}`)")
        self._set_state(character, number, "rejected", reason)
        return self.get(character, number)

    def mark_failed(self, character: str, number: int, reason: str = "") -> Version:
        """Mark a version unusable (e.g. it failed to load); an active one is rolled back first."""
        version = self.get(character, number)
        if version.state == "active":
            self.rollback(character)
        self._set_state(character, number, "failed", reason)
        return self.get(character, number)

    def remove(self, character: str, number: int) -> None:
        """Delete a version's files (not the active one); its number is never reused."""
        version = self.get(character, number)
        if version.state == "active":
            raise RegistryError(f"{version.ref} is active; promote another version or roll back first")
        with self._file_lock():
            trash = version.folder.with_name(f".trash-{os.getpid()}-{secrets.token_hex(4)}")
            if version.folder.exists():
                os.rename(version.folder, trash)
                fsync_dir(trash.parent)
            self._set_state(character, number, "removed")
            shutil.rmtree(trash, ignore_errors=True)
            discard(materialised_folder(self.root, character, number))

    def materialise(self, version: Version) -> Path:
        """A full version as a plain model folder (e.g. for a vLLM server of its own); cached, removed with it."""
        if self.base is None:
            raise RegistryError("materialising a full version needs the base model it is a delta of")
        return materialise(version, self.base, self.root)

    def set_audit(self, character: str, number: int, scores: dict) -> Version:
        """Record audit scores in the database and the manifest (rewritten atomically)."""
        version = self.get(character, number)
        audit = {**version.audit, **scores, "at": now()}
        if version.manifest:  # the file first: a reader that sees the row's new `updated` reads the new manifest
            write_json_durably(version.folder / MANIFEST, {**version.manifest, "audit": audit})
        self.store.write(lambda: self.store.db.execute(
            "update adapter_versions set audit = ?, updated = ? where character = ? and number = ?",
            [json.dumps(audit), now(), character, number],
        ))
        return self.get(character, number)

    def parts(self, version: Version) -> list[tuple[Version, float]]:
        """The (version, weight) parts of a composite version."""
        result = []
        for part in version.manifest.get("parts", []):
            result.append((self.resolve(part["ref"]), float(part["weight"])))
        return result


def _content_hash(files: dict) -> str:
    """One hash over the files' names and hashes (finds the same weights added twice)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}:{files[name]['sha256']}\n".encode())
    return digest.hexdigest()


def source_hash(folder: Path) -> str:
    """The content hash of the files `add` would take from a folder."""
    return _content_hash({
        p.name: {"sha256": sha256_file(p)} for p in Path(folder).iterdir()
        if p.is_file() and p.suffix not in PICKLE_SUFFIXES and p.name != MANIFEST and not p.name.startswith(".")
    })
