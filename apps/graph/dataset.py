"""What every graph loader returns: :class:`Loaded` (graphs, per-graph failures, repair notes, schema)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Loaded:
    """What a loader found: graphs, per-graph failures (one line each), repair notes, schema, split."""
    graphs: list
    failures: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    schema: Dict = field(default_factory=dict)
    split: Optional[Dict[str, List[int]]] = None  # official split: indices into ``graphs``
