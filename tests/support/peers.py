"""The real data sets from other fine-tuning tools, in shared/ beside the repository (see its README)."""

from pathlib import Path

PEERS = Path(__file__).resolve().parents[3] / "shared" / "data" / "peers"
