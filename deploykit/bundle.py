"""The on-disk bundle: manifest.json + ONNX graphs + golden vectors, written atomically, validated on load.

Layout::

    BUNDLE/manifest.json
    BUNDLE/graphs/<role>.onnx          (+ external data files, if any, also under graphs/)
    BUNDLE/golden/<role>.<case>.npz    torch outputs on fixed inputs, recorded at export
    BUNDLE/golden/loop.0.npz           a seeded run of the sampling loop over the torch modules
    BUNDLE/tokenizer.json              a language model's tokenizer (`tokenizers` format), when exported with one

Bundles hold no pickles: golden vectors are .npz read with allow_pickle=False.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import BundleError, InputError
from .onnx_refs import ProtobufError, external_locations
from .parity import Tolerance
from .specs import GraphSpec

if TYPE_CHECKING:
    from .runtimes.kinds import LoopConfig

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Graph:
    """One role's graph inside a loaded bundle."""

    role: str
    path: Path
    spec: GraphSpec
    opset: int
    size_bytes: int
    built_from: str | None = None  # a loop graph built from this role's graph (loop_graphs.py): no torch module of its own


@dataclass(frozen=True)
class GoldenCase:
    """Recorded torch inputs and outputs for one role at one shape."""

    role: str
    name: str
    dims: dict[str, int]
    path: Path
    allowed: dict[str, float] = field(default_factory=dict)  # output -> max abs the export's fp64/magnitude rule set

    def load(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(inputs, outputs) as arrays; BundleError for a file that is not a plain-array .npz (pickles refused)."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                inputs = {k[3:]: data[k] for k in data.files if k.startswith("in.")}
                outputs = {k[4:]: data[k] for k in data.files if k.startswith("out.")}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise BundleError(f"golden case '{self.role}.{self.name}' ({self.path.name}) is not a readable array file "
                              f"({type(exc).__name__}: {str(exc)[:120]}); re-export the bundle.") from exc
        return inputs, outputs


def save_golden(path: Path, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """Write one golden case as .npz (no pickles)."""
    arrays = {f"in.{k}": v for k, v in inputs.items()} | {f"out.{k}": v for k, v in outputs.items()}
    np.savez(path, **arrays)


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: read-only view of the manifest with resolved paths."""

    path: Path
    manifest: dict[str, Any]

    @property
    def family(self) -> str:
        """Family name the exporter used."""
        return str(self.manifest["family"])

    @cached_property
    def graphs(self) -> dict[str, Graph]:
        """Role -> graph (parsed once: loops read specs on every call)."""
        return {
            role: Graph(role, self.path / g["file"], GraphSpec.from_json(g["spec"]), int(g["opset"]), int(g["bytes"]),
                        g.get("built_from"))
            for role, g in self.manifest["graphs"].items()
        }

    @property
    def golden(self) -> list[GoldenCase]:
        """Golden cases recorded at export."""
        return [
            GoldenCase(c["role"], c["case"], dict(c["dims"]), self.path / c["file"],
                       {k: float(v) for k, v in c.get("allowed", {}).items()})
            for c in self.manifest["golden"]
        ]

    @cached_property
    def loop(self) -> LoopConfig:
        """The loop config, typed by its kind (what `sample` needs: latent size, value range...)."""
        from .runtimes.kinds import parse_loop  # the registry sits above the bundle layer

        return parse_loop(self.manifest["loop"], f"bundle {self.path}: loop")

    @property
    def tokenizer(self) -> Path | None:
        """The bundle's tokenizer.json (Hugging Face `tokenizers` format), if it carries one."""
        return self.path / self.manifest["tokenizer"]["file"] if "tokenizer" in self.manifest else None

    @cached_property
    def text_tokenizer(self) -> Any:
        """The bundle's tokenizer.json parsed by `tokenizers` (once per bundle), None without one; BundleError when it
        is not a tokenizer or its vocabulary is not the one the manifest records (another tokenizer would encode
        text to other ids), BackendUnavailableError without the tokenizers package."""
        if self.tokenizer is None:
            return None
        from .runtimes.tokens import read_tokenizer, vocabulary_sha256  # tokenizers: only for bundles with one

        try:
            parsed = read_tokenizer(self.tokenizer, f"bundle {self.path}: its tokenizer")
        except InputError as exc:
            raise BundleError(f"{exc} The bundle is damaged; re-export it.") from exc
        recorded = self.manifest["tokenizer"].get("vocab_sha256")
        if recorded is not None and vocabulary_sha256(parsed) != recorded:
            raise BundleError(f"{self.tokenizer} is not the tokenizer this bundle was exported with: its vocabulary "
                              "(id -> token) differs from the one the manifest records, so text would encode to "
                              "other ids; put the exported tokenizer.json back or re-export the bundle.")
        return parsed

    @property
    def tolerance(self) -> Tolerance:
        """Parity tolerance of this family (per output where the family sets one)."""
        return Tolerance.from_json(self.manifest["tolerance"])

    @property
    def check_shapes(self) -> list[dict[str, int]]:
        """Dim bindings that verify checks (batch sizes, spatial sizes)."""
        return [dict(d) for d in self.manifest["check_shapes"]]

    @property
    def source(self) -> dict[str, Any]:
        """Where the torch original came from, so verify can rebuild it."""
        return dict(self.manifest["source"])


def _inside(root: Path, relative: str, what: str) -> Path:
    """Resolve `relative` under root, refusing paths that escape it or that no file system can hold (a NUL)."""
    if "\x00" in relative:
        raise BundleError(f"bundle {root}: {what} path {relative!r} contains a NUL byte; refusing to load it "
                          "(re-export the bundle).")
    target = (root / relative).resolve()
    if os.path.isabs(relative) or not target.is_relative_to(root.resolve()):
        raise BundleError(
            f"bundle {root}: {what} path '{relative}' points outside the bundle; "
            "refusing to load it (re-export the bundle)."
        )
    return target


def _check_file(root: Path, entry: Mapping[str, Any], what: str) -> None:
    path = _inside(root, entry["file"], what)
    if not path.is_file():
        raise BundleError(f"bundle {root}: {what} file '{entry['file']}' is missing; re-export or copy the whole bundle.")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"bundle {root}: {what} file '{entry['file']}' has sha256 {actual[:12]}..., manifest says "
            f"{entry['sha256'][:12]}...; the file was changed or truncated, re-export or re-copy the bundle."
        )


def _check_external_data(root: Path, graph_path: Path, role: str, declared: set[Path]) -> None:
    """Refuse ONNX external-data locations that leave the bundle or that the manifest does not list with a
    checksum (read from the protobuf, no `onnx` import)."""
    if graph_path.suffix == ".ort":  # ORT format (pack --edge) keeps every initializer inline
        return
    try:
        locations = external_locations(graph_path)
    except ProtobufError as exc:
        raise BundleError(f"bundle {root}: graph '{role}' could not be parsed ({exc}); it is corrupt or truncated.") from exc
    for location in locations:
        target = _inside(graph_path.parent, location, f"external data of graph '{role}'")
        if target not in declared:
            raise BundleError(f"bundle {root}: graph '{role}' reads external data '{location}', which the manifest does "
                              "not list with a checksum; re-export the bundle.")


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Read and validate a bundle: schema version, files present, checksums, paths inside the bundle."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle '{root}' does not exist or is not a directory; export one with `deploykit export`.")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"'{root}' has no {MANIFEST}, so it is not a deploykit bundle.")
    _refuse_links(root)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}); "
                          "re-export the bundle.") from exc
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"bundle {root}: schema_version is {version!r}, expected an integer >= 1.")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle {root}: schema version {version} is newer than this deploykit reads ({SCHEMA_VERSION}); "
            "upgrade deploykit."
        )
    _check_manifest(root, manifest)
    for role, entry in manifest["graphs"].items():
        _check_file(root, entry, f"graph '{role}'")
        declared = set()
        for extra in entry.get("external_data", []):
            _check_file(root, extra, f"external data of graph '{role}'")
            declared.add(_inside(root, extra["file"], f"external data of graph '{role}'"))
        _check_external_data(root, root / entry["file"], role, declared)
    for case in manifest["golden"]:
        _check_file(root, case, f"golden case '{case['role']}.{case['case']}'")
    if "tokenizer" in manifest:
        _check_file(root, manifest["tokenizer"], "tokenizer")
    bundle = Bundle(root, manifest)
    _ = bundle.loop  # the loop config is validated here (and cached for the bundle's users)
    if importlib.util.find_spec("tokenizers") is not None:  # without it, text is refused at first use, saying why
        _ = bundle.text_tokenizer  # validated here too, parsed once
    return bundle


class _Opt:
    """An optional key's schema in a manifest dict schema."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


class _Map:
    """A JSON object with any string keys, each value of `schema`."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


class _List:
    """A JSON array, each item of `schema`."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema


LOOP_ROLE = "loop"  # role name of the golden loop run in a manifest
_NUMBER = (int, float)
_FILE = {"file": str, "sha256": str, "bytes": _Opt(int)}
_TENSOR = {"name": str, "dtype": str, "shape": _List((int, str)), "high": _Opt((int, float, str)),
           "low": _Opt(_NUMBER), "padding": _Opt(str), "pad_right": _Opt(bool)}
_SPEC = {"inputs": _List(_TENSOR), "outputs": _List(_TENSOR),
         "dims": _Opt(_Map({"min": int, "multiple_of": int, "sum_of": _Opt(_List(str)), "max": _Opt(int)}))}
MANIFEST_SCHEMA = {  # what load_bundle reads; other keys (tools, created_at) are informational
    "schema_version": int, "family": str,
    "graphs": _Map(_FILE | {"opset": int, "spec": _SPEC, "external_data": _Opt(_List(_FILE)),
                               "built_from": _Opt(str)}),
    "golden": _List({"role": str, "case": str, "dims": _Map(int), "file": str, "sha256": str,
                     "allowed": _Opt(_Map(_NUMBER))}),
    "loop": _Map(object),  # typed by its LoopKind's config (LoopConfig.from_json)
    "tolerance": {"atol": _NUMBER, "rtol": _NUMBER, "outputs": _Opt(_Map(_List(_NUMBER))), "multiple": _Opt(_NUMBER),
                  "magnitude": _Opt(_NUMBER)},
    "check_shapes": _List(_Map(int)), "source": _Map(object), "tokenizer": _Opt(_FILE | {"vocab_sha256": _Opt(str)}),
    "precision": _Opt(_Map(object)), "edge": _Opt(_Map(object)), "parity": _Opt(_Map(object)),
    "fused": _Opt(_Map(_Map(int))),
}
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")


def _schema_problem(value: Any, schema: Any, where: str) -> str | None:
    """Where `value` breaks `schema` and what was expected, or None."""
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where} is {type(value).__name__}, expected an object"
        for key, sub in schema.items():
            if key not in value:
                if not isinstance(sub, _Opt):
                    return f"{where} lacks '{key}'"
                continue
            problem = _schema_problem(value[key], sub.schema if isinstance(sub, _Opt) else sub, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(schema, (_Map, _List)):
        kind, items = (dict, "object") if isinstance(schema, _Map) else (list, "array")
        if not isinstance(value, kind):
            return f"{where} is {type(value).__name__}, expected an {items}"
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        return next((p for k, v in pairs if (p := _schema_problem(v, schema.schema, f"{where}[{k!r}]"))), None)
    if schema is object:  # any JSON value (checked where it is used)
        return None
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        return f"{where} is {value!r:.60}, expected {' or '.join(t.__name__ for t in types)}"
    return None


def _check_manifest(root: Path, manifest: Any) -> None:
    """BundleError naming the first key that breaks MANIFEST_SCHEMA, an unknown dtype, or a golden case for a role
    the bundle has no graph for."""
    problem = _schema_problem(manifest, MANIFEST_SCHEMA, MANIFEST)
    if problem is None:
        tensors = [t for g in manifest["graphs"].values() for t in (*g["spec"]["inputs"], *g["spec"]["outputs"])]
        bad = next((t for t in tensors if t["dtype"] not in DTYPES), None)
        orphan = next((c for c in manifest["golden"] if c["role"] not in manifest["graphs"] and c["role"] != LOOP_ROLE), None)
        if bad is not None:
            problem = f"tensor '{bad['name']}' has dtype {bad['dtype']!r}, expected one of {', '.join(DTYPES)}"
        elif orphan is not None:
            problem = f"a golden case is for role '{orphan['role']}', which has no graph"
    if problem:
        raise BundleError(f"bundle {root}: {problem}; the manifest is malformed, re-export the bundle.")


def _refuse_links(root: Path) -> None:
    """BundleError for a symbolic link anywhere inside a bundle: a bundle is plain files, and a link (e.g.
    golden/notes.txt -> ~/.ssh/id_rsa) would make deploykit read, or copy into a new bundle, a file outside it."""
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder) / name
            if path.is_symlink():
                raise BundleError(f"bundle {root}: '{path.relative_to(root)}' is a symbolic link; a bundle holds "
                                  "only plain files. Replace the link with the file, or re-export the bundle.")


def check_destination(out: Path, force: bool, marker: str = MANIFEST) -> None:
    """Refuse to overwrite: an existing path needs force, and only what we wrote (its `marker` file) is replaced."""
    if not out.exists():
        return
    if not force:
        raise InputError(f"output '{out}' already exists; choose another --out or pass --force to replace it.")
    if not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file()):
        raise InputError(
            f"output '{out}' exists and is not something deploykit wrote (no {marker}); "
            "refusing to replace it even with --force."
        )


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the OS cannot."""
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _claim(folder: Path) -> int | None:
    """An exclusive lock on a staging folder, held by this process until it exits or closes the fd; None when
    another live process holds it (or the OS has no flock)."""
    try:
        import fcntl
    except ImportError:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _clean_strays(out: Path) -> None:
    """Remove staging folders a killed run left beside `out` (those no live process holds), first putting back
    an old bundle that a replacement interrupted between its two renames had set aside."""
    for stray in sorted(out.parent.glob(f".{out.name}.old-*")) + sorted(out.parent.glob(f".{out.name}.tmp-*")):
        fd = _claim(stray)
        if fd is None:
            continue
        try:
            if stray.name.startswith(f".{out.name}.old-") and not out.exists() and (stray / "bundle").is_dir():
                os.rename(stray / "bundle", out)
            shutil.rmtree(stray, ignore_errors=True)
        finally:
            _release(fd)


@contextmanager
def staging(out: Path, force: bool, marker: str = MANIFEST) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success it becomes `out` in one atomic step (the old bundle, if any, is
    exchanged with it and then removed), on failure it is removed. A run killed at any point leaves `out`
    either old or new, never missing: the next run puts back what a fallback two-rename replace had set aside
    and removes stray staging folders."""
    check_destination(out, force, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_strays(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    held = [_claim(tmp)]
    try:
        yield tmp
        check_destination(out, force, marker)
        if not out.exists():
            os.rename(tmp, out)
        elif not _exchange(tmp, out):  # no atomic exchange here: old aside, new in (recovered by the next run)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            held.append(_claim(old))
            os.rename(out, old / "bundle")
            os.rename(tmp, out)
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        for fd in held:
            _release(fd)


def finish_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Fill in checksums and sizes of every file the manifest names, then write manifest.json."""
    for entry in manifest["graphs"].values():
        for item in [entry, *entry.get("external_data", [])]:
            item["sha256"] = sha256_file(root / item["file"])
            item["bytes"] = (root / item["file"]).stat().st_size
    for item in [*manifest["golden"], *([manifest["tokenizer"]] if "tokenizer" in manifest else [])]:
        item["sha256"] = sha256_file(root / item["file"])
    manifest["schema_version"] = SCHEMA_VERSION
    _write_manifest(root, manifest)


def _write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def carry_over(b: Bundle, tmp: Path, replays: bool = True) -> None:
    """Copy into a derived bundle (quantized, packed) what it keeps of `b` as it is: the golden vectors (without the
    exact loop replays when `replays` is False) and the tokenizer."""
    skip = shutil.ignore_patterns(f"{LOOP_ROLE}.*") if not replays else None
    shutil.copytree(b.path / "golden", tmp / "golden", ignore=skip)
    if b.tokenizer is not None:
        shutil.copyfile(b.tokenizer, tmp / b.manifest["tokenizer"]["file"])


def write_bundle(
    out: str | os.PathLike[str],
    fill: Callable[[Path], dict[str, Any]],
    force: bool = False,
    check: Callable[[Bundle], Mapping[str, Any]] | None = None,
) -> Bundle:
    """Write a bundle atomically: `fill(tmpdir)` writes graphs/golden and returns the manifest.

    `check(staged)` runs on the finished bundle before it is moved into place: it may raise (nothing
    is written) or return manifest entries measured on it, which are added.
    """
    target = Path(out)
    with staging(target, force) as tmp:
        manifest = fill(tmp)
        finish_manifest(tmp, manifest)
        if check is not None:
            manifest |= check(Bundle(tmp, manifest))
            _write_manifest(tmp, manifest)
    return load_bundle(target)
