"""A model repository: one folder per model, each with a ``config.yaml``.

The fields follow Triton's ``config.pbtxt`` where Triton has one (``name``, ``backend``,
``max_batch_size``, ``input``/``output`` with ``name``, ``datatype``, ``dims``,
``dynamic_batching`` with ``max_queue_delay_microseconds`` and ``preferred_batch_size``,
``instance_group``'s ``count``), so a Triton user reads them without a manual; headway's own
fields say where the model comes from (``source``, ``tucker``, ``checkpoint``) and how paper B's
runtime cuts it (``job_policy``). As in Triton, ``dims`` leave out the batch dimension when
``max_batch_size`` > 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from headway.errors import InputError

CONFIG_FILE = "config.yaml"
BACKENDS = ("auto", "openvino", "onnxruntime", "torch")
PRECISIONS = ("fp32", "bf16")
# the Open Inference Protocol's tensor datatypes and their numpy types
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def datatype_of(array: np.ndarray) -> str:
    """The protocol's name of ``array``'s dtype (one line naming it when there is none)."""
    for name, kind in DATATYPES.items():
        if array.dtype == np.dtype(kind):
            return name
    raise InputError(f"dtype {array.dtype} has no Open Inference Protocol datatype")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, protocol datatype and dims (-1: any size)."""

    name: str
    datatype: str = "FP32"
    dims: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "dims": list(self.dims)}


@dataclass(frozen=True)
class DynamicBatching:
    """Requests arriving within ``max_queue_delay_us`` of the oldest waiting one run as one
    batch of up to the model's ``max_batch_size`` rows; a batch of a ``preferred`` size (or
    the maximum) leaves at once."""

    max_queue_delay_us: int = 1000
    preferred: tuple[int, ...] = ()


@dataclass(frozen=True)
class SequenceBatching:
    """A stateful model's sessions (Triton's ``sequence_batching``): a session idle longer than
    ``max_idle_us`` expires; at most ``max_sequences`` are open at once."""

    max_idle_us: int = 60_000_000
    max_sequences: int = 16


TRACKER_SOURCE = "cswintt"  # source "cswintt" or "cswintt:tiny": a tracker with sessions
TRACKER_EXECUTORS_NOTE = "auto, or an executor of the Python host (headway track --help)"
COLORS = ("bgr", "rgb")


@dataclass(frozen=True)
class ModelConfig:
    """How one model is loaded and served. ``source``: a zoo name, ``torchvision:NAME``,
    ``timm:NAME``, or a ``headway export`` folder (a path, relative to the model's folder);
    ``module`` (Python only) serves an ``nn.Module`` given directly."""

    name: str
    source: str = ""
    backend: str = "openvino"
    precision: str = "fp32"
    max_batch_size: int = 8
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    dynamic_batching: DynamicBatching | None = field(default_factory=DynamicBatching)
    instances: int = 1
    job_policy: str = "jobs:1"
    max_queue_size: int = 64
    num_classes: int = 10
    input_size: int = 32
    tucker: str | None = None
    checkpoint: str | None = None
    seed: int = 0
    executor: str = "auto"
    color: str = "bgr"
    sequence_batching: SequenceBatching = field(default_factory=SequenceBatching)
    module: Any = field(default=None, compare=False, hash=False, repr=False)
    folder: Path | None = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def tracker(self) -> bool:
        """Whether this is a tracker served in sessions (source ``cswintt[:CONFIG]``)."""
        return self.source.split(":")[0] == TRACKER_SOURCE and self.module is None

    @property
    def tracker_config(self) -> str:
        """The tracker network's size: ``cswintt:tiny`` → tiny, ``cswintt`` → default."""
        return self.source.partition(":")[2] or "default"

    @property
    def batched(self) -> bool:
        """Whether requests carry a batch dimension (Triton's ``max_batch_size`` > 0; never
        for a tracker, whose requests are one frame of one session)."""
        return self.max_batch_size > 0 and not self.tracker

    def graph_key(self) -> tuple[Any, ...]:
        """What the loaded graph depends on: models equal here share one loaded graph, and
        their requests batch together (paper B's copies of one model)."""
        source = self.source
        if self.folder is not None and _is_path(source):
            source = str((self.folder / source).resolve())
        return (
            source,
            id(self.module) if self.module is not None else None,
            self.backend,
            self.precision,
            self.max_batch_size,
            self.inputs,
            self.dynamic_batching,
            self.instances,
            self.job_policy,
            self.num_classes,
            self.input_size,
            self.tucker,
            self.checkpoint,
            self.seed,
            self.executor,
            self.color,
            self.sequence_batching,
        )

    def with_tensors(
        self, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
    ) -> ModelConfig:
        return replace(self, inputs=inputs, outputs=outputs)

    def as_triton(self) -> dict[str, Any]:
        """The configuration in the JSON form of Triton's model configuration endpoint."""
        config: dict[str, Any] = {
            "name": self.name,
            "backend": "headway_tracker" if self.tracker else self.backend,
            "max_batch_size": self.max_batch_size if self.batched else 0,
            "input": [_triton_tensor(t) for t in self.inputs],
            "output": [_triton_tensor(t) for t in self.outputs],
            "instance_group": [{"count": self.instances, "kind": "KIND_CPU"}],
            "parameters": {
                "source": {"string_value": self.source or "(module)"},
                "precision": {"string_value": self.precision},
                "job_policy": {"string_value": self.job_policy},
            },
        }
        if self.tracker:
            config["parameters"]["executor"] = {"string_value": self.executor}
            config["sequence_batching"] = {
                "max_sequence_idle_microseconds": self.sequence_batching.max_idle_us,
                "oldest": {"max_candidate_sequences": self.sequence_batching.max_sequences},
            }
        elif self.dynamic_batching is not None:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": self.dynamic_batching.max_queue_delay_us,
                "preferred_batch_size": list(self.dynamic_batching.preferred),
            }
        return config


def _triton_tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": list(spec.dims)}


def _is_path(source: str) -> bool:
    return "/" in source or source.startswith(".")


def check_config(config: ModelConfig) -> None:
    """One line naming the first field that cannot be served."""
    where = f"model {config.name!r}"
    if not _NAME.match(config.name):
        raise InputError(
            f"{where}: a model name is 1–128 letters, digits, '_', '.' or '-' (starting with a "
            "letter or digit)"
        )
    if not config.source and config.module is None:
        raise InputError(f"{where}: 'source' is missing (a zoo name, torchvision:/timm: or a path)")
    if config.backend not in BACKENDS:
        raise InputError(f"{where}: backend {config.backend!r}: choose from {', '.join(BACKENDS)}")
    if config.precision not in PRECISIONS:
        raise InputError(
            f"{where}: precision {config.precision!r}: choose from {', '.join(PRECISIONS)}"
        )
    if not 0 <= config.max_batch_size <= 1024:
        raise InputError(f"{where}: max_batch_size must be 0–1024, got {config.max_batch_size}")
    if not 1 <= config.instances <= 64:
        raise InputError(f"{where}: instance_group count must be 1–64, got {config.instances}")
    if not 1 <= config.max_queue_size <= 1_000_000:
        raise InputError(f"{where}: max_queue_size must be 1–1000000, got {config.max_queue_size}")
    batching = config.dynamic_batching
    if batching is not None:
        if not 0 <= batching.max_queue_delay_us <= 10_000_000:
            raise InputError(
                f"{where}: max_queue_delay_microseconds must be 0–10000000, got "
                f"{batching.max_queue_delay_us}"
            )
        wrong = [p for p in batching.preferred if not 1 <= p <= max(config.max_batch_size, 1)]
        if wrong:
            raise InputError(
                f"{where}: preferred_batch_size {wrong[0]} is outside 1–{config.max_batch_size}"
            )
    if config.tracker:
        check_tracker_config(config, where)
    for spec in (*config.inputs, *config.outputs):
        if spec.datatype not in DATATYPES:
            raise InputError(
                f"{where}: tensor {spec.name!r} has datatype {spec.datatype!r}: choose from "
                f"{', '.join(DATATYPES)}"
            )
        if any(d == 0 or d < -1 for d in spec.dims):
            raise InputError(f"{where}: tensor {spec.name!r} has dims {list(spec.dims)}")


def check_tracker_config(config: ModelConfig, where: str) -> None:
    """A tracker model's own fields: its network size, colour order and session limits."""
    from headway.models import CONFIGS

    if config.tracker_config not in CONFIGS:
        raise InputError(
            f"{where}: source {config.source!r}: the tracker's size is one of "
            f"{', '.join(CONFIGS)} (cswintt:tiny)"
        )
    if config.color not in COLORS:
        raise InputError(f"{where}: color {config.color!r}: choose from {', '.join(COLORS)}")
    sessions = config.sequence_batching
    if not 1_000 <= sessions.max_idle_us <= 86_400_000_000:
        raise InputError(
            f"{where}: max_sequence_idle_microseconds must be 1000–86400000000, got "
            f"{sessions.max_idle_us}"
        )
    if not 1 <= sessions.max_sequences <= 4096:
        raise InputError(
            f"{where}: max_candidate_sequences must be 1–4096, got {sessions.max_sequences}"
        )


# ---------------------------------------------------------------------------------------------
# reading a repository

_FIELDS = {
    "name",
    "source",
    "backend",
    "precision",
    "max_batch_size",
    "input",
    "output",
    "dynamic_batching",
    "instance_group",
    "job_policy",
    "max_queue_size",
    "num_classes",
    "input_size",
    "tucker",
    "checkpoint",
    "seed",
    "executor",
    "color",
    "sequence_batching",
}


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{what} must be an integer, got {value!r}")
    return value


def _tensors(value: Any, what: str) -> tuple[TensorSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InputError(f"{what} must be a list of {{name, datatype, dims}}")
    specs = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InputError(f"{what}: every entry needs a name")
        dims = item.get("dims", [])
        if not isinstance(dims, list):
            raise InputError(f"{what} {item['name']!r}: dims must be a list")
        datatype = str(item.get("datatype", "FP32")).upper().removeprefix("TYPE_")
        specs.append(
            TensorSpec(
                item["name"],
                datatype,
                tuple(_integer(d, f"{what} {item['name']!r} dims") for d in dims),
            )
        )
    return tuple(specs)


def parse_config(data: Any, folder: Path) -> ModelConfig:
    """A :class:`ModelConfig` from the mapping of ``folder/config.yaml``."""
    where = f"{folder / CONFIG_FILE}"
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of fields")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InputError(
            f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(_FIELDS))}"
        )
    batching: DynamicBatching | None = None
    if "dynamic_batching" in data and data["dynamic_batching"] is not None:
        section = data["dynamic_batching"]
        if not isinstance(section, dict):
            raise InputError(f"{where}: dynamic_batching must be a mapping")
        batching = DynamicBatching(
            _integer(section.get("max_queue_delay_microseconds", 1000), f"{where}: delay"),
            tuple(
                _integer(p, f"{where}: preferred_batch_size")
                for p in section.get("preferred_batch_size", [])
            ),
        )
    instances = data.get("instance_group", {"count": 1})
    if isinstance(instances, list):  # Triton's form: a list of groups
        instances = {"count": sum(_integer(g.get("count", 1), where) for g in instances)}
    text_fields = (
        "source", "backend", "precision", "job_policy", "tucker", "checkpoint", "executor",
        "color",
    )  # fmt: skip
    fields: dict[str, Any] = {key: data[key] for key in text_fields if data.get(key) is not None}
    if data.get("sequence_batching") is not None:
        section = data["sequence_batching"]
        if not isinstance(section, dict):
            raise InputError(f"{where}: sequence_batching must be a mapping")
        oldest = section.get("oldest") or {}
        limit = section.get("max_candidate_sequences", oldest.get("max_candidate_sequences", 16))
        fields["sequence_batching"] = SequenceBatching(
            _integer(section.get("max_sequence_idle_microseconds", 60_000_000), f"{where}: idle"),
            _integer(limit, f"{where}: max_candidate_sequences"),
        )
    for key in ("max_batch_size", "max_queue_size", "num_classes", "input_size", "seed"):
        if key in data:
            fields[key] = _integer(data[key], f"{where}: {key}")
    for key, value in fields.items():
        numeric = key in ("max_batch_size", "max_queue_size", "num_classes", "input_size", "seed")
        if not numeric and key != "sequence_batching" and not isinstance(value, str):
            raise InputError(f"{where}: {key} must be a string, got {value!r}")
    try:
        return ModelConfig(
            name=str(data.get("name", folder.name)),
            inputs=_tensors(data.get("input"), f"{where}: input"),
            outputs=_tensors(data.get("output"), f"{where}: output"),
            dynamic_batching=batching,
            instances=_integer(instances.get("count", 1), f"{where}: instance_group count"),
            folder=folder,
            **fields,
        )
    except InputError as error:
        raise InputError(f"{where}: {error}") from None


def load_repository(path: str | Path) -> list[ModelConfig]:
    """Every model of the repository at ``path`` (one sub-folder with a ``config.yaml`` each,
    in name order); one line naming the folder or file that is wrong."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"model repository {root} is not a folder")
    configs: list[ModelConfig] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        file = folder / CONFIG_FILE
        if not file.is_file():
            raise InputError(f"{folder} has no {CONFIG_FILE} (every model folder needs one)")
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            reason = str(error).splitlines()[0]
            raise InputError(f"{file} cannot be read as YAML: {reason}") from None
        configs.append(parse_config(data, folder))
    if not configs:
        raise InputError(f"model repository {root} has no model folders")
    names = [c.name for c in configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"model repository {root}: the name {twice[0]!r} is used twice")
    return configs


EXAMPLE_MODELS = {
    # name → config fields: small built-in models that load in seconds on 2 cores
    "vgg16": {
        "source": "vgg16",
        "backend": "openvino",
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 2000, "preferred_batch_size": [8]},
        "instance_group": {"count": 2},
    },
    "vgg16_tucker": {
        "source": "vgg16",
        "tucker": "macs:0.19",
        "backend": "openvino",
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 2000, "preferred_batch_size": [8]},
        "instance_group": {"count": 2},
    },
    "squeezenet": {"source": "squeezenet1_1", "backend": "onnxruntime", "max_batch_size": 4},
    "alexnet": {"source": "alexnet", "backend": "torch", "max_batch_size": 0},
}


def write_example_repository(
    path: str | Path, models: dict[str, dict[str, Any]] | None = None
) -> Path:
    """A working repository of built-in models (``EXAMPLE_MODELS``) at the new folder ``path``:
    complete or absent (written beside it, then renamed into place)."""
    import os
    import shutil

    from headway.io import check_name_lengths, os_refusals_named, staging_folder

    root = Path(path)
    check_name_lengths(root, "example repository")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(f"{root} exists and is not an empty folder: name a new folder")
    with os_refusals_named(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(root)
        try:
            for name, fields in (models or EXAMPLE_MODELS).items():
                folder = staging / name
                folder.mkdir(parents=True, exist_ok=True)
                text = "# headway serve: see docs/serving.md for every field\n"
                text += yaml.safe_dump(fields, sort_keys=False)
                (folder / CONFIG_FILE).write_text(text, encoding="utf-8")
            if root.exists():
                root.rmdir()  # empty, checked above
            os.replace(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return root
