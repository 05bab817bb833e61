"""The one definition of CPU/GPU profiles.

The local spawner, KubeSpawner's ``profile_list``, the job backends and the control
plane's ``GET /api/v1/profiles`` all read these, so a profile means the same thing for a
notebook server and for a training job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from traitlets import Dict, List, Unicode
from traitlets.config import Configurable

DEFAULT_PROFILES: list[dict[str, Any]] = [
    {
        "slug": "cpu-small",
        "display_name": "CPU small (1 core, 2 GiB)",
        "description": "Exploration and small models.",
        "cpu_guarantee": 0.5,
        "cpu_limit": 1.0,
        "mem_guarantee": "1Gi",
        "mem_limit": "2Gi",
        "gpu": 0,
        "image": "pai-lab/singleuser-cpu:0.1.0",
        "idle_timeout": 3600,
        "default": True,
    },
    {
        "slug": "cpu-large",
        "display_name": "CPU large (4 cores, 16 GiB)",
        "description": "Feature engineering and bigger scikit-learn jobs.",
        "cpu_guarantee": 2.0,
        "cpu_limit": 4.0,
        "mem_guarantee": "8Gi",
        "mem_limit": "16Gi",
        "gpu": 0,
        "image": "pai-lab/singleuser-cpu:0.1.0",
        "idle_timeout": 3600,
    },
    {
        "slug": "gpu",
        "display_name": "GPU (1 NVIDIA GPU, 4 cores, 24 GiB)",
        "description": "Deep learning. Stopped sooner when idle: GPUs are scarce.",
        "cpu_guarantee": 2.0,
        "cpu_limit": 4.0,
        "mem_guarantee": "16Gi",
        "mem_limit": "24Gi",
        "gpu": 1,
        "image": "pai-lab/singleuser-gpu:0.1.0",
        "idle_timeout": 1200,
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ],
    },
]


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str = ""
    cpu_guarantee: float | None = None
    cpu_limit: float | None = None
    mem_guarantee: str | None = None
    mem_limit: str | None = None
    gpu: int = 0
    image: str = ""
    idle_timeout: int = 3600
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    default: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


_FIELDS = set(Profile.__dataclass_fields__)


def parse_profile(d: dict) -> Profile:
    unknown = set(d) - _FIELDS
    if unknown:
        raise ValueError(f"profile {d.get('slug')!r}: unknown field(s) {sorted(unknown)}")
    if not d.get("slug") or not d.get("display_name"):
        raise ValueError("every profile needs 'slug' and 'display_name'")
    return Profile(**d)


class Profiles(Configurable):
    """Profiles on offer; configure with ``c.Profiles.profiles = [...]``."""

    profiles = List(
        Dict(),
        default_value=DEFAULT_PROFILES,
        help="""Profiles users pick for notebook servers and jobs: dicts with slug,
        display_name, description, cpu_guarantee/cpu_limit (cores), mem_guarantee/mem_limit
        (e.g. '2Gi'), gpu (count), image (Kubernetes mode), idle_timeout (seconds), and
        optional node_selector, tolerations, env, default.""",
    ).tag(config=True)

    default_profile = Unicode(
        "",
        help="Slug of the profile used when none is chosen (default: the one marked default, else the first).",
    ).tag(config=True)

    def all(self) -> list[Profile]:
        return [parse_profile(dict(p)) for p in self.profiles]

    def get(self, slug: str | None) -> Profile:
        """The profile named ``slug`` (or the default); ``KeyError`` names the choices."""
        profiles = self.all()
        if not slug:
            slug = self.default_profile or next(
                (p.slug for p in profiles if p.default), profiles[0].slug
            )
        for p in profiles:
            if p.slug == slug:
                return p
        raise KeyError(
            f"unknown profile {slug!r}; choose one of: {', '.join(p.slug for p in profiles)}"
        )
