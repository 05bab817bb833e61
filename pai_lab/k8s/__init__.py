"""Kubernetes mode: values file, manifests as plain functions, and the ``k8s`` CLI group."""

from .render import render, render_objects
from .values import load_values
from .z2jh import render_z2jh, z2jh_values

__all__ = ["load_values", "render", "render_objects", "render_z2jh", "z2jh_values"]
