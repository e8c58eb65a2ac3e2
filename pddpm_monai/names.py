"""Method names as the paper writes them (Table 1), for tables, figures and logs.

Registry keys stay lowercase (``pddpm train --method ddpm``, results folders ``<out>/ddpm/fold0``);
everything a reader sees names the method as the paper does: ``pDDPM``, ``DDPM``, ``AE``, ...

Example:
    >>> method_label("pddpm"), method_label("fanogan"), method_label("Thresh"), method_label("Perfect")
    ('pDDPM', 'f-AnoGAN', 'Thresh', 'Perfect')
    >>> method_label("pddpm_blend")
    'pDDPM blend'
"""

from __future__ import annotations

__all__ = ["METHOD_LABELS", "PATCH_GRIDS", "method_label", "method_order"]

#: display name of each method key, in the order of the paper's Table 1
METHOD_LABELS: dict[str, str] = {
    "thresh": "Thresh",
    "ae": "AE",
    "vae": "VAE",
    "svae": "SVAE",
    "dae": "DAE",
    "fanogan": "f-AnoGAN",
    "ddpm": "DDPM",
    "pddpm": "pDDPM",
}


#: patch grids a results folder may name after the method (``pddpm_blend``: pDDPM scored on the blend grid)
PATCH_GRIDS: tuple[str, ...] = ("overlap", "tile", "blend")


def method_label(name: str) -> str:
    """The paper's name of method ``name`` (a registry key or already a label); other names unchanged."""
    key = str(name).lower()
    by_label = {label.lower(): label for label in METHOD_LABELS.values()}
    head, sep, grid = key.partition("_")
    if sep and head == "pddpm" and grid in PATCH_GRIDS:  # pddpm_blend: pDDPM scored on another grid
        return f"{METHOD_LABELS[head]} {grid}"
    return METHOD_LABELS.get(key) or by_label.get(key, str(name))


def method_order(name: str) -> tuple[int, str]:
    """Sort key: the paper's Table 1 order, then other names alphabetically."""
    labels = list(METHOD_LABELS.values())
    label = method_label(name)
    return (labels.index(label) if label in labels else len(labels), label)
