"""Benchmarks' machine description: the same one `edgereid bench` records (edgereid.machine)."""
from __future__ import annotations

from edgereid.machine import describe_machine, jetson_info

__all__ = ["describe_machine", "jetson_info"]

if __name__ == "__main__":
    import json

    print(json.dumps(describe_machine(), indent=2))
