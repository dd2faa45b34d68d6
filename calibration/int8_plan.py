"""Mixed-precision INT8 plans: the range method and the layers left in float (with why), as a JSON file.

A plan is what `edgereid quantize --int8` decides from a calibration set (`calibration.sensitivity`), what it
records in the INT8 file's metadata (`int8_plan`) and what `--plan FILE` replays: the same plan and the same
calibration set give the same file.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgereid.errors import InvalidInputError

PLAN_VERSION = 1


@dataclass
class Int8Plan:
    """Range method (+ percentile), target form, Conv node names kept in float with a reason each."""

    method: str = "minmax"
    percentile: float = 99.999
    target: str = "tensorrt"
    keep_float: list = field(default_factory=list)
    reasons: dict = field(default_factory=dict)  # node name -> why it stays in float
    # what the plan reached on the calibration crops (embedding cosine vs fp32, ...), for the record
    calibration_score: dict = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict:
        """Plain dict (JSON-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "Int8Plan":
        """Build from a dict; unknown keys or a newer version are errors naming `source`."""
        if not isinstance(data, dict):
            raise InvalidInputError(f"{source}: an INT8 plan is a JSON object, got {type(data).__name__}.")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInputError(f"{source}: unknown INT8 plan fields {unknown}.")
        plan = cls(**data)
        if plan.version > PLAN_VERSION:
            raise InvalidInputError(f"{source}: INT8 plan version {plan.version} is newer than this edgereid "
                                    f"reads ({PLAN_VERSION}); upgrade edgereid.")
        if not isinstance(plan.keep_float, list) or not all(isinstance(n, str) for n in plan.keep_float):
            raise InvalidInputError(f"{source}: keep_float must be a list of node names.")
        return plan

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON (atomically)."""
        from edgereid.atomic import write_json_atomic

        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Int8Plan":
        """Read a plan written by `save` (or taken from an INT8 file's metadata)."""
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"INT8 plan {path} does not exist; write one with `edgereid quantize --int8` "
                                    f"(it saves <output>.plan.json).")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"INT8 plan {path} is not JSON ({exc}).") from None
        return cls.from_dict(data, source=str(path))

    def check_nodes(self, node_names, source: str) -> None:
        """Every kept node must exist in the model the plan is applied to."""
        missing = sorted(set(self.keep_float) - set(node_names))
        if missing:
            raise InvalidInputError(f"the INT8 plan keeps {missing} in float, but {source} has no such nodes: the "
                                    f"plan was made for another model. Make a new one with `edgereid quantize "
                                    f"--int8` (no --plan).")
