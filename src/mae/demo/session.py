"""The demo's server side, without Gradio: where the page's image comes from, the checkpoints it shows, and what
one update of the page holds. Every failure a user can cause becomes a :class:`PageError` whose text the page
shows; the server keeps serving."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mae.data.errors import one_line
from mae.demo.images import ImageInputError, fit_image, read_image, to_model_input
from mae.demo.reconstruction import DemoModel, DemoViews, demo_views, load_demo_model

EXAMPLE, UPLOAD = "example", "upload"
Source = tuple[str, int | str]
"""Where the shown image comes from: (``"example"``, index into the examples) or (``"upload"``, file path)."""


class PageError(ValueError):
    """Something the user gave that cannot be shown; its ``str()`` is the message the page displays."""


@dataclass
class Example:
    name: str
    image: torch.Tensor
    """``(C, H, W)`` normalised, as the data group serves its evaluation split."""


@dataclass
class DemoLimits:
    display_size: int
    max_bytes: int
    max_pixels: int
    max_compared: int = 4
    """Second checkpoints kept loaded for the comparison tab (the oldest is dropped first)."""


@dataclass
class PageUpdate:
    """Everything an update shows: the first checkpoint's views, the second's (when one is compared), and text."""

    views: DemoViews
    compared: DemoViews | None
    description: str
    comparison: str = ""


@dataclass
class DemoSession:
    """The loaded checkpoint, the dataset's example images and the limits on uploads; shared by every page."""

    primary: DemoModel
    examples: Sequence[Example]
    limits: DemoLimits
    fallback: object = None
    """The model node for second checkpoints that state no architecture (the demo's model group)."""
    compare_root: Path | None = None
    """The folder whose files and directories the page's path box may name (``compare_root`` in
    ``conf/demo.yaml``, by default the run directories); None (library use only): any path."""
    trusted: set[str] = field(default_factory=set)
    """Paths the operator named on the command line (``compare_ckpt_path``): the page may use them wherever they
    are."""
    _compared: OrderedDict[str, DemoModel] = field(default_factory=OrderedDict)

    def image(self, source: Source) -> tuple[torch.Tensor, str]:
        """The ``(1, C, H, W)`` input for ``source`` and a sentence saying what it is and what was done to it; a
        file that cannot be used is a :class:`PageError` (raised before anything of the page changes)."""
        kind, value = source
        if kind == EXAMPLE:
            example = self.examples[int(value)]
            return example.image.unsqueeze(0), f"{example.name}, as the data group serves it"
        path = Path(str(value))
        try:
            image = read_image(path, self.limits.max_bytes, self.limits.max_pixels)
        except ImageInputError as error:
            raise PageError(str(error)) from None
        fitted, notes = fit_image(image, self.primary.model.img_size, self.primary.model.in_chans)
        done = "; ".join(notes) if notes else "used as it is"
        return to_model_input(fitted, self.primary.mean, self.primary.std), f"uploaded {path.name}: {done}"

    def servable_path(self, text: str) -> str:
        """``text`` from the page's path box as a path under :attr:`compare_root` (a relative one is taken from
        there) that exists; anything else is one :class:`PageError` whose words do not depend on the path, so the
        page says nothing about what exists elsewhere on the server."""
        if self.compare_root is None:
            return text
        try:
            root = self.compare_root.resolve()
            candidate = Path(text)
            resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()  # symlinks followed
            if resolved.is_relative_to(root) and resolved.exists():
                return str(resolved)
        except (OSError, ValueError):  # an unreadable folder on the way, a NUL byte: the same answer
            pass
        raise PageError(
            f"the second checkpoint must be a file or model directory under {self.compare_root} "
            "(the demo's compare_root)"
        )

    def compared_model(self, path: str, checked: bool = False) -> DemoModel:
        """The second checkpoint at ``path`` (loaded once), if it has a decoder and the first one's geometry; unless
        ``checked`` (the command's own ``compare_ckpt_path``, trusted from then on), only under
        :attr:`compare_root`."""
        if checked:
            self.trusted.add(path)
        elif path not in self.trusted:
            path = self.servable_path(path)
        if path in self._compared:
            self._compared.move_to_end(path)
            return self._compared[path]
        try:
            model = load_demo_model(path, self.primary.mean, self.primary.std, self.fallback)
        except (OSError, ValueError, TypeError) as error:  # CheckpointError is a ValueError
            raise PageError(one_line(error)) from None
        if model.geometry != self.primary.geometry:
            raise PageError(
                f"{path} takes {describe_geometry(model.geometry)}, the first checkpoint "
                f"{describe_geometry(self.primary.geometry)}: the same image and mask need both alike"
            )
        self._compared[path] = model
        while len(self._compared) > self.limits.max_compared:
            self._compared.popitem(last=False)
        return model

    def update(self, source: Source, mask_ratio: float, seed: int, compare_path: str = "") -> PageUpdate:
        """The page for ``source`` under the mask of (``mask_ratio``, ``seed``), and the second checkpoint's views
        of the same image and mask when ``compare_path`` is set (a second checkpoint that cannot be compared is
        said in ``comparison``)."""
        image, description = self.image(source)
        try:
            views = demo_views(self.primary, image, mask_ratio, seed, self.limits.display_size)
        except ValueError as error:
            raise PageError(str(error)) from None
        if not compare_path:
            return PageUpdate(views, None, description)
        try:
            other = self.compared_model(compare_path)
        except PageError as error:  # the first checkpoint's views still update
            return PageUpdate(views, None, description, f"Cannot compare: {error}")
        compared = demo_views(other, image, mask_ratio, seed, self.limits.display_size)
        verdict = "lower" if compared.loss < views.loss else "higher" if compared.loss > views.loss else "the same"
        comparison = (
            f"first: loss {views.loss:.4f} ({self.primary.describe()})  \n"
            f"second: loss {compared.loss:.4f}, {verdict} ({other.describe()})"
        )
        return PageUpdate(views, compared, description, comparison)


def describe_geometry(geometry: tuple[int, int, int]) -> str:
    img_size, patch_size, in_chans = geometry
    return f"{img_size} px images with {in_chans} channel(s) in {patch_size} px patches"
