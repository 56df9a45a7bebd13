"""pack --edge: a bundle whose graphs are ORT-format (.ort) files, for onnxruntime minimal builds on devices.

Conversion is onnxruntime's own tool (`onnxruntime.tools.convert_onnx_models_to_ort`): graphs are
optimized once, here, at the "all" level with the CPU-specific NCHWc layout left out so the file
runs on any CPU, and saved in ORT format, which a minimal (reduced-operator) onnxruntime build
loads. The tool also writes `required_operators.config`, the operator list such a build is
compiled with (`build.sh --minimal_build --include_ops_by_config required_operators.config`).

The packed bundle is an ordinary bundle (manifest, golden vectors, loop replay), so `verify`,
`sample` and `deploykit.load` work on it unchanged with numpy + onnxruntime alone. It is
verified at pack time; one whose golden replay fails is refused and nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .bundle import Bundle, carry_over, load_bundle, write_bundle
from .errors import ExportError, InputError, optional_import
from .verify import verify

OPERATORS_FILE = "required_operators.config"


def _converter() -> Any:
    return optional_import("onnxruntime.tools.convert_onnx_models_to_ort",
                           "pack --edge needs onnxruntime's conversion tools (`pip install onnxruntime`, the full "
                           "package, on the machine that packs; the device only needs the runtime).")


def _operators(config: Path) -> list[str]:
    """'domain;opset;Op1,Op2' lines of an operator config -> ['domain:Op1', ...] (ai.onnx shown bare)."""
    ops = []
    for line in config.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            domain, _, names = line.split(";")
            ops += [name if domain == "ai.onnx" else f"{domain}:{name}" for name in names.split(",")]
    return sorted(set(ops))


def pack_edge(bundle: str | os.PathLike[str] | Bundle, out: str | os.PathLike[str], force: bool = False) -> Bundle:
    """A new bundle at `out` with every graph in ORT format, the operator config and a size record."""
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if "edge" in b.manifest:
        raise InputError(f"bundle {b.path} is already packed for edge; pack the bundle it came from.")
    if Path(out).resolve() == b.path.resolve():
        raise InputError("--out is the source bundle; pack writes a new directory and never overwrites its source.")
    tool = _converter()
    import onnxruntime

    def fill(tmp: Path) -> dict[str, Any]:
        source = tmp / "onnx"  # scratch copy: the tool converts every .onnx under a directory
        source.mkdir()
        manifest = json.loads(json.dumps(b.manifest))
        for entry in manifest["graphs"].values():
            for item in [entry, *entry.get("external_data", [])]:
                shutil.copy2(b.path / item["file"], source / Path(item["file"]).name)
        onnxruntime.set_default_logger_severity(3)  # the tool's sessions warn about unused initializers
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()) as log:
            try:
                tool.convert_onnx_models_to_ort(source, output_dir=tmp / "graphs",
                                                optimization_styles=[tool.OptimizationStyle.Fixed])
            except Exception as exc:  # the tool raises whatever onnxruntime raised for the failing graph
                raise ExportError(f"onnxruntime could not convert {b.path} to ORT format: {exc}\n{log.getvalue()[-800:]}") from exc
        shutil.rmtree(source)
        os.replace(tmp / "graphs" / OPERATORS_FILE, tmp / OPERATORS_FILE)
        sizes = {}
        for role, entry in manifest["graphs"].items():
            ort_file = f"graphs/{Path(entry['file']).stem}.ort"
            sizes[role] = {"onnx_bytes": int(entry["bytes"]), "ort_bytes": (tmp / ort_file).stat().st_size}
            entry["file"] = ort_file
            entry.pop("external_data", None)  # ORT format holds its initializers inline
        carry_over(b, tmp)
        manifest["edge"] = {
            "format": "ort",
            "onnxruntime": onnxruntime.__version__,
            "optimization": "all, fixed at pack time, NCHWc layout excluded (portable across CPUs)",
            "required_operators": OPERATORS_FILE,
            "operators": _operators(tmp / OPERATORS_FILE),
            "sizes": sizes,
            "source_bundle": str(b.path.resolve()),
        }
        return manifest

    def replay(staged: Bundle) -> dict[str, Any]:
        result = verify(staged, fresh=False)
        if not result.passed:
            raise ExportError(
                f"the ORT-format graphs of {b.path} fail their golden replay after conversion; nothing was written.\n"
                + result.report.table()
            )
        return {}

    return write_bundle(out, fill, force=force, check=replay)


def size_report(packed: Bundle) -> str:
    """Plain-text size table of a packed bundle: each graph as ONNX and as ORT, golden vectors, total."""
    edge = packed.manifest["edge"]
    lines = [f"{'graph':<16} {'onnx KiB':>10} {'ort KiB':>10} {'ort/onnx':>9}"]
    for role, s in edge["sizes"].items():
        lines.append(f"{role:<16} {s['onnx_bytes'] / 1024:>10.1f} {s['ort_bytes'] / 1024:>10.1f} "
                     f"{s['ort_bytes'] / s['onnx_bytes']:>8.2f}x")
    golden = sum(f.stat().st_size for f in (packed.path / "golden").iterdir())
    total = sum(f.stat().st_size for f in packed.path.rglob("*") if f.is_file())
    lines += [
        f"golden vectors {golden / 1024:.1f} KiB; bundle total {total / 1024:.1f} KiB",
        f"{len(edge['operators'])} operators for a minimal onnxruntime build ({edge['required_operators']}): "
        + ", ".join(edge["operators"]),
        f"packed with onnxruntime {edge['onnxruntime']}; the device's onnxruntime must be this version or newer.",
    ]
    return "\n".join(lines)
