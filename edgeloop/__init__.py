"""edgeloop: edge and hybrid ML inference. This package holds the `edgeloop` command line only;
the components live in `contracts`, `trainer`, `converter`, `edge_agent` and `cloud_sync`."""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
